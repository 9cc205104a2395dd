"""The few primitive operations the chunk forward needs, behind one small object.

``TorchOps`` is plain PyTorch (SDPA, our RoPE). Inside ComfyUI the node pack hands the same runner
an object with ComfyUI's own ``cast_to``, ``optimized_attention`` and RoPE functions, so the layer
math in ``adapter.py`` is written once and runs over either model tree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rope_angles(head_dim: int, frame_ids: torch.Tensor, height: int, width: int,
                theta: float = 10000.0) -> torch.Tensor:
    """Wan 2.1 3-axis RoPE angles, [len(frame_ids) * height * width, head_dim // 2], float32.

    The head dimension is split [d - 4(d//6), 2(d//6), 2(d//6)] over (time, height, width), as in
    Wan 2.1 and ComfyUI's ``EmbedND``; axis frequencies are theta^(-2i/d_axis).
    """
    d = head_dim
    axes = rope_axes(d)
    device = frame_ids.device
    positions = (frame_ids.to(torch.float64), torch.arange(height, device=device, dtype=torch.float64),
                 torch.arange(width, device=device, dtype=torch.float64))
    per_axis = []
    for pos, axis_dim in zip(positions, axes):
        omega = 1.0 / theta ** (torch.arange(0, axis_dim, 2, device=device, dtype=torch.float64) / axis_dim)
        per_axis.append(torch.outer(pos, omega).to(torch.float32))
    t, h, w = per_axis
    f, hh, ww = len(frame_ids), height, width
    angles = torch.cat([
        t[:, None, None, :].expand(f, hh, ww, -1),
        h[None, :, None, :].expand(f, hh, ww, -1),
        w[None, None, :, :].expand(f, hh, ww, -1),
    ], dim=-1)
    return angles.reshape(f * hh * ww, d // 2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x [B, S, H, D] by angles given as cos/sin [S, D/2], in x's dtype.

    At inference it writes straight into one output buffer (four multiply-adds on strided views): no
    stack, no cat, no round trip through float32. Training (autograd) takes the functional form."""
    pairs = x.unflatten(-1, (-1, 2))
    x0, x1 = pairs.unbind(-1)
    c, s = cos.to(x.dtype)[:, None, :], sin.to(x.dtype)[:, None, :]
    if torch.is_grad_enabled() and (x.requires_grad or c.requires_grad):
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
    out = torch.empty_like(pairs)
    even, odd = out.unbind(-1)
    torch.mul(x0, c, out=even)
    even.addcmul_(x1, s, value=-1)
    torch.mul(x0, s, out=odd)
    odd.addcmul_(x1, c)
    return out.flatten(-2)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x [..., 2P] by angles given as cos / sin [..., P] (broadcast): RoPE's
    rotation, for moving keys that are already roped to another phase."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Wan 2.1's split of the head dimension over (time, height, width), as in ComfyUI's ``EmbedND``."""
    d = head_dim
    return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)


class TorchOps:
    """Plain-PyTorch primitives: SDPA attention, Wan RoPE, dtype/device casting of raw parameters."""

    def cast(self, param: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return param.to(dtype=like.dtype, device=like.device)

    def embed_patches(self, conv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return conv(x.to(conv.weight.dtype))

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
        """q [B, S, H, D], k/v [B, N, H, D] -> [B, S, H*D]; mask bool [S, N], True = attend."""
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask)
        return out.transpose(1, 2).flatten(2)

    def rope_freqs(self, model, frame_start: int, grid: tuple[int, int, int],
                   device: torch.device, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos / sin [tokens, head_dim / 2], in ``dtype`` (the compute dtype: cast once per chunk)."""
        f, h, w = grid
        head_dim = model.dim // model.num_heads
        frames = torch.arange(frame_start, frame_start + f, device=device)
        angles = rope_angles(head_dim, frames, h, w)
        return torch.cos(angles).to(dtype or angles.dtype), torch.sin(angles).to(dtype or angles.dtype)

    def apply_rope(self, x: torch.Tensor, freqs) -> torch.Tensor:
        cos, sin = freqs
        return apply_rope(x, cos, sin)

    def temporal_band(self, model):
        """Wan's temporal band (the first ``rope_axes(head_dim)[0] / 2`` rotary pairs, theta 10000)."""
        from .positions import TemporalBand
        return TemporalBand(rope_axes(model.dim // model.num_heads)[0] // 2, 10000.0)


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: [cos, sin] of position x 10000^(-i/half), in float32."""
    half = dim // 2
    position = position.to(torch.float32)
    freqs = torch.pow(10000.0, -torch.arange(half, device=position.device, dtype=torch.float32) / half)
    angles = torch.outer(position, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
