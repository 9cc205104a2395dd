"""The Wan 2.1 layer math, written once against the module *layout* rather than a class.

``WanChunkRunner`` only calls submodules by their Wan names (``blocks[i].self_attn.q``, ...), casts
raw parameters (``modulation``) through ``ops.cast`` and never reads a layer's weight. So it runs
over our ``WanDiT`` and over ComfyUI's ``WanModel`` / ``CausalWanModel`` (whose layers cast weights
and apply fp8 and LoRA patches themselves); the node pack passes ComfyUI's attention and RoPE
in ``ops``.

Two entry points share the block code: ``forward_full`` (whole clip, optional attention mask: the
bidirectional teacher and the block-causal reference) and ``forward_chunk`` (one chunk attending
to a ``KVCache``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from einops import rearrange

from .attention import attention_with_key_mass
from .ops import TorchOps, sinusoidal_embedding
from .policy import INPUTS, Entering
from .positions import TemporalBand

_REQUIRED = ("patch_embedding", "text_embedding", "time_embedding", "time_projection", "blocks", "head")


def _by_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, S, C] tokens as [B, F, S/F, C] (a view), so per-frame terms broadcast without a repeat copy."""
    return rearrange(x, "b (f t) c -> b f t c", f=frames)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, frames: int) -> torch.Tensor:
    """x [B, S, C] * (1 + scale) + shift, with shift/scale per frame [B, F, C]."""
    out = torch.addcmul(shift.unsqueeze(2), _by_frame(x, frames), 1 + scale.unsqueeze(2))
    return rearrange(out, "b f t c -> b (f t) c")


def _gate(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, frames: int) -> torch.Tensor:
    out = torch.addcmul(_by_frame(x, frames), _by_frame(y, frames), gate.unsqueeze(2))
    return rearrange(out, "b f t c -> b (f t) c")


class WanChunkRunner:
    """Runs a Wan 2.1 module tree chunk by chunk against a KV cache."""

    #: what this path shows a policy in the cache-writing pass: everything (``policy.INPUTS``)
    provides = frozenset(INPUTS)
    where = "the PaFu AR Chunk Sampler"

    def __init__(self, model: nn.Module, ops=None, dtype: torch.dtype | None = None):
        missing = [name for name in _REQUIRED if not hasattr(model, name)]
        if missing:
            raise ValueError(f"not a Wan 2.1 diffusion model ({type(model).__name__} has no "
                             f"{', '.join(missing)}); the PaFu sampler needs a Wan 2.1 backbone")
        if getattr(model, "model_type", "t2v") not in ("t2v",):
            raise ValueError(f"only Wan 2.1 text-to-video models are supported, got model_type="
                             f"{model.model_type!r}")
        self.model = model
        self.ops = ops or TorchOps()
        self.num_layers = len(model.blocks)
        self.dim = model.dim
        self.num_heads = model.num_heads
        self.head_dim = self.dim // self.num_heads
        self.patch_size = tuple(model.patch_size)
        self.in_dim = getattr(model, "in_dim", None) or model.config.in_dim
        self.text_dim = getattr(model, "text_dim", None) or model.config.text_dim
        self.out_dim = model.out_dim
        self.freq_dim = model.freq_dim
        if dtype is None:
            dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        self.dtype = dtype
        self._freqs_key = None       # RoPE of the last chunk: reused by all its passes
        self._freqs = None

    # ---- embeddings ------------------------------------------------------------------------
    def temporal_band(self) -> TemporalBand:
        """The temporal band of the model's RoPE (what ``positions = realigned`` rotates)."""
        return self.ops.temporal_band(self.model)

    def tokens_per_frame(self, height: int, width: int) -> int:
        return (height // self.patch_size[1]) * (width // self.patch_size[2])

    def patchify(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        tokens = self.ops.embed_patches(self.model.patch_embedding, x).to(self.dtype)
        grid = tuple(tokens.shape[2:])
        return rearrange(tokens, "b c f h w -> b (f h w) c"), grid

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        pt, ph, pw = self.patch_size
        f, h, w = grid
        return rearrange(x[:, :math.prod(grid)], "b (f h w) (p q r c) -> b c (f p) (h q) (w r)",
                         f=f, h=h, w=w, p=pt, q=ph, r=pw)

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        return self.model.text_embedding(context.to(self.dtype))

    def cross_kv(self, text: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer cross-attention K/V of the embedded text [B, L, C]: computed once per prompt. Text per
        latent frame [B, F, L, C] gives K/V per frame [B, F, L, H, D]: each frame's tokens then attend to
        their own frame's text (a prompt timeline whose unit is the latent frame)."""
        lead, l = text.shape[:-2], text.shape[-2]
        out = []
        for blk in self.model.blocks:
            ca = blk.cross_attn
            k = ca.norm_k(ca.k(text)).view(*lead, l, self.num_heads, self.head_dim)
            v = ca.v(text).view(*lead, l, self.num_heads, self.head_dim)
            out.append((k, v))
        return out

    @staticmethod
    def cross_frames(cross_kv, f0: int, f1: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Frames [f0, f1) of per-frame cross-attention K/V; one text's K/V serve every chunk as they are."""
        return [(k, v) if k.dim() == 4 else (k[:, f0:f1], v[:, f0:f1]) for k, v in cross_kv]

    def cross_attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int) -> torch.Tensor:
        """Cross-attention of q [B, S, H, D] to one text's K/V [B, L, H, D], or, with K/V per frame
        [B, F, L, H, D], of each frame's tokens to their own frame's text (S = F x tokens per frame)."""
        if k.dim() == 4:
            return self.ops.attention(q, k, v)
        b, s, n, d = q.shape
        if k.shape[1] != frames or s % frames:
            raise ValueError(f"per-frame conditioning covers {k.shape[1]} latent frames, the pass has {frames}")
        out = self.ops.attention(q.reshape(b * frames, s // frames, n, d), k.flatten(0, 1), v.flatten(0, 1))
        return out.reshape(b, s, -1)

    def embed_time(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep [B, F] (0..1000) -> e [B, F, C] for the head, e0 [B, F, 6, C] for the blocks."""
        b, f = timestep.shape
        e = self.model.time_embedding(
            sinusoidal_embedding(self.freq_dim, timestep.flatten()).to(self.dtype)).view(b, f, self.dim)
        e0 = self.model.time_projection(e).unflatten(-1, (6, self.dim))
        return e, e0

    # ---- the transformer -------------------------------------------------------------------
    def run_blocks(self, x, e0, frames, freqs, cross_kv, attend) -> torch.Tensor:
        """All blocks. ``attend(layer, q, k, v, h, k_raw)`` returns self-attention output [B, S, H*D]
        given roped q/k, v [B, S, H, D], the block's modulated input h [B, S, C] and the keys
        before RoPE (what a salience head reads)."""
        b, s, _ = x.shape
        n, d = self.num_heads, self.head_dim
        for i, blk in enumerate(self.model.blocks):
            e = (self.ops.cast(blk.modulation, x).unsqueeze(0) + e0).unbind(2)
            h = _modulate(blk.norm1(x), e[0], e[1], frames)
            sa = blk.self_attn
            q = self.ops.apply_rope(sa.norm_q(sa.q(h)).view(b, s, n, d), freqs)
            k_raw = sa.norm_k(sa.k(h)).view(b, s, n, d)
            k = self.ops.apply_rope(k_raw, freqs)
            v = sa.v(h).view(b, s, n, d)
            x = _gate(x, sa.o(attend(i, q, k, v, h, k_raw)), e[2], frames)
            ca = blk.cross_attn
            cq = ca.norm_q(ca.q(blk.norm3(x))).view(b, s, n, d)
            ck, cv = cross_kv[i]
            x = x + ca.o(self.cross_attend(cq, ck, cv, frames))
            y = blk.ffn(_modulate(blk.norm2(x), e[3], e[4], frames))
            x = _gate(x, y, e[5], frames)
        return x

    def final_head(self, x: torch.Tensor, e: torch.Tensor, frames: int) -> torch.Tensor:
        head = self.model.head
        shift, scale = (self.ops.cast(head.modulation, x).unsqueeze(0) + e.unsqueeze(2)).unbind(2)
        return head.head(_modulate(head.norm(x), shift, scale, frames))

    @staticmethod
    def _per_frame(timestep: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.ndim == 1:
            t = t[:, None].expand(batch, frames)
        return t

    def forward_full(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                     frame_offset: int = 0, attn_mask: torch.Tensor | None = None,
                     observer=None) -> torch.Tensor:
        """Whole-clip forward (bidirectional unless ``attn_mask`` [N, N] bool says otherwise).

        ``observer(layer, q, k, v)`` sees every layer's roped queries and keys, and values (the SSE teacher).
        """
        b, _, f = x.shape[:3]
        tokens, grid = self.patchify(x)
        t = self._per_frame(timestep, b, grid[0]).to(x.device)
        e, e0 = self.embed_time(t)
        freqs = self.ops.rope_freqs(self.model, frame_offset, grid, x.device, self.dtype)
        cross = self.cross_kv(self.embed_text(context))

        def attend(i, q, k, v, h, k_raw):
            if observer is not None:
                observer(i, q, k, v)
            return self.ops.attention(q, k, v, attn_mask)

        out = self.run_blocks(tokens, e0, grid[0], freqs, cross, attend)
        return self.unpatchify(self.final_head(out, e, grid[0]), grid)

    def forward_chunk(self, x: torch.Tensor, timestep: torch.Tensor, frame_start: int,
                      cache, write: bool = False, observer=None) -> torch.Tensor | None:
        """One chunk x [B, C, F, H, W] attending to the cache.

        Denoising passes (``write=False``) stage the chunk's K/V in the cache's spare slots and
        leave the committed tokens untouched; the cache-writing pass (``write=True``) shows the
        policy each layer's entering tokens, commits the chunk and evicts down to the budget. The
        chunk is roped at the cache's ``rope_frame`` (its first frame, unless positions are realigned).
        Returns the flow prediction, or None for the writing pass (its head output is not needed).
        ``observer(layer, q, keys)`` sees the chunk's roped queries and every key they attend to.
        """
        b = x.shape[0]
        tokens, grid = self.patchify(x)
        frames = grid[0]
        t = self._per_frame(timestep, b, frames).to(x.device)
        e, e0 = self.embed_time(t)
        cache.open_chunk(frame_start, frames, write=write)
        key = (cache.rope_frame, grid, x.device)
        if key != self._freqs_key:
            self._freqs_key, self._freqs = key, self.ops.rope_freqs(self.model, cache.rope_frame, grid, x.device,
                                                                    self.dtype)
        freqs = self._freqs
        collect_mass = write and "attention" in cache.policy.inputs

        def attend(i, q, k, v, h, k_raw):
            keys, values = cache.stage(i, k, v)
            if observer is not None:
                observer(i, q, keys)
            if not write:
                return self.ops.attention(q, keys, values)
            mass = None
            if collect_mass:
                out, mass = attention_with_key_mass(q, keys, values)
            else:
                out = self.ops.attention(q, keys, values)
            cache.enter(i, Entering(keys=k_raw, values=v, hidden=h, queries=q, attended=keys, mass=mass))
            return out

        out = self.run_blocks(tokens, e0, frames, freqs, cache.cross_kv, attend)
        if write:
            cache.commit()
            return None
        return self.unpatchify(self.final_head(out, e, frames), grid)

    def refresh_chunk(self, x: torch.Tensor, timestep: torch.Tensor, frame_start: int, cache) -> None:
        """Re-caching: a written chunk x [B, C, F, H, W] run again under the cache's current cross-attention,
        attending to what each layer keeps of earlier frames and to itself; the slots each layer keeps of it
        take the new K/V (``KVCache.refresh``). Nothing is committed or evicted."""
        tokens, grid = self.patchify(x)
        _, e0 = self.embed_time(self._per_frame(timestep, x.shape[0], grid[0]).to(x.device))
        freqs = self.ops.rope_freqs(self.model, frame_start, grid, x.device, self.dtype)

        def attend(i, q, k, v, h, k_raw):
            keys, values, mask = cache.refresh(i, k, v, frame_start)
            return self.ops.attention(q, keys, values, mask)

        self.run_blocks(tokens, e0, grid[0], freqs, cache.cross_kv, attend)
