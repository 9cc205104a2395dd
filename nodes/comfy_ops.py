"""ComfyUI's own primitives for ``pafu_core``'s chunk forward (the only algorithmic glue here).

Raw parameters are cast with ``cast_to`` (weights may live on another device or in fp8), attention
goes through ``optimized_attention`` (whatever backend the user runs), RoPE through the model's
own ``rope_encode`` and ComfyUI's ``apply_rope1``; the temporal band that ``positions = realigned`` rotates
is read off the model's ``rope_embedder``. Layers are always called, never read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import comfy.model_management
import torch
from comfy.ldm.flux.math import apply_rope1
from comfy.ldm.modules.attention import optimized_attention

if TYPE_CHECKING:                      # benchmarks load this file on its own, outside the pack
    from ..pafu_core.positions import TemporalBand


class ComfyOps:
    def __init__(self, model: torch.nn.Module, compute_dtype: torch.dtype):
        self.compute_dtype = compute_dtype
        # WanModel keeps patch_embedding in fp32 and feeds it fp32 input; CausalWanModel (which
        # has forward_block) builds it in the model dtype and feeds it the compute dtype.
        self.patch_dtype = compute_dtype if hasattr(model, "forward_block") else torch.float32

    def cast(self, param: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return comfy.model_management.cast_to(param, dtype=like.dtype, device=like.device)

    def embed_patches(self, conv, x: torch.Tensor) -> torch.Tensor:
        return conv(x.to(self.patch_dtype))

    def attention(self, q, k, v, mask=None):
        b, s, n, d = q.shape
        return optimized_attention(q.reshape(b, s, n * d), k.reshape(b, k.shape[1], n * d),
                                   v.reshape(b, v.shape[1], n * d), heads=n, mask=mask)

    def rope_freqs(self, model, frame_start: int, grid, device, dtype=None):
        pt, ph, pw = model.patch_size
        f, h, w = grid
        return model.rope_encode(f * pt, h * ph, w * pw, t_start=frame_start, device=device,
                                 dtype=dtype or self.compute_dtype)

    def apply_rope(self, x, freqs):
        return apply_rope1(x, freqs)

    def temporal_band(self, model) -> TemporalBand:
        """The temporal axis of the model's own RoPE (``rope_embedder``: its first axis and theta)."""
        return temporal_band_of(model)


def temporal_band_of(model) -> TemporalBand:
    """The temporal band of a ComfyUI Wan's RoPE, or a readable refusal when it has none."""
    embedder = getattr(model, "rope_embedder", None)
    axes = getattr(embedder, "axes_dim", None)
    if not axes:
        raise ValueError(f"positions = realigned moves the temporal phase of cached keys, and this "
                         f"{type(model).__name__} has no 3-axis RoPE (rope_embedder.axes_dim) to read it from; "
                         "use positions = true")
    from ..pafu_core.positions import TemporalBand
    return TemporalBand(int(axes[0]) // 2, float(getattr(embedder, "theta", 10000.0)))
