"""The tiny world's 'VAE': a fixed invertible map between RGB frames and 16-channel latents.

One latent frame per video frame; 2x2 pixels (12 values) go through a fixed matrix with orthonormal
columns into 16 channels, so a 16x16 frame becomes a 16 x 8 x 8 latent (Wan's channel count; its
patch 1x2x2 then makes one token per 4x4-pixel cell). Decoding is the exact left inverse on the
map's image (the projection of any other latent onto it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LATENT_CHANNELS = 16


def _basis() -> torch.Tensor:
    gen = torch.Generator().manual_seed(4242)
    q, _ = torch.linalg.qr(torch.randn(LATENT_CHANNELS, 12, generator=gen, dtype=torch.float64))
    return q.to(torch.float32)          # [16, 12], orthonormal columns


_BASIS = _basis()


def encode_frames(frames: torch.Tensor) -> torch.Tensor:
    """[..., F, 3, H, W] in [-1, 1] -> latents [..., 16, F, H/2, W/2] (model space)."""
    lead = frames.shape[:-4]
    f, _, h, w = frames.shape[-4:]
    x = F.pixel_unshuffle(frames.reshape(-1, 3, h, w), 2)                 # [N, 12, h/2, w/2]
    z = torch.einsum("ck,nkhw->nchw", _BASIS.to(x), x)
    z = z.reshape(*lead, f, LATENT_CHANNELS, h // 2, w // 2)
    return z.movedim(-3, -4)


def decode_frames(latents: torch.Tensor) -> torch.Tensor:
    """latents [..., 16, F, h, w] -> frames [..., F, 3, 2h, 2w], clamped to [-1, 1]."""
    if latents.shape[-4] != LATENT_CHANNELS:
        raise ValueError(f"tiny-world latents have {LATENT_CHANNELS} channels, got {latents.shape[-4]}")
    z = latents.movedim(-4, -3)
    lead = z.shape[:-4]
    f, c, h, w = z.shape[-4:]
    x = torch.einsum("ck,nchw->nkhw", _BASIS.to(z), z.reshape(-1, c, h, w))
    frames = F.pixel_shuffle(x, 2).reshape(*lead, f, 3, 2 * h, 2 * w)
    return frames.clamp(-1, 1)
