"""ComfyUI's own primitives for ``pafu_core``'s chunk forward (the only algorithmic glue here).

Raw parameters are cast with ``cast_to`` (weights may live on another device or in fp8), attention
goes through ``optimized_attention`` (whatever backend the user runs), RoPE through the model's
own ``rope_encode`` and ComfyUI's ``apply_rope1``. Layers are always called, never read.
"""

from __future__ import annotations

import torch

import comfy.model_management
from comfy.ldm.flux.math import apply_rope1
from comfy.ldm.modules.attention import optimized_attention


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
