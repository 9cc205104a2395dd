"""The clips a head learns from: the causal student's own rollouts under the recipe's schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapter import WanChunkRunner
from ..budget import CacheBudget
from ..policies import make_policy
from ..sampler import sample_video
from .recipe import DistillConfig


@dataclass
class Clip:
    latents: torch.Tensor   # [1, C, F, H, W]
    context: torch.Tensor   # [1, L, text_dim], or one per latent frame [1, F, L, text_dim]


def rollout_seed(cfg: DistillConfig, index: int) -> int:
    """The noise seed of rollout ``index``: one stream per rollout, fixed by the recipe's seed."""
    return cfg.seed * 7919 + index


def rollout_clip(student: WanChunkRunner, context: torch.Tensor, cfg: DistillConfig, index: int) -> Clip:
    """One self-generated clip of ``cfg.rollout_frames`` latent frames (noise seed ``rollout_seed``).

    Args:
        context: [1, L, text_dim] text conditioning of this rollout.
    Returns:
        the clip, latents [1, C, F, H, W] on the CPU. With ``rollout_window`` the student runs under a
        FIFO window, so long rollouts stay in the regime a budgeted cache puts it in.
    """
    budget, policy = None, make_policy("keep_all")
    if cfg.rollout_window > 0:
        policy = make_policy("fifo")
        budget = CacheBudget(cfg.rollout_window, unit="fraction", reference_frames=cfg.rollout_frames)
    res = sample_video(student, context.to(cfg.device), num_frames=cfg.rollout_frames,
                       height=cfg.latent_size[0], width=cfg.latent_size[1], policy=policy,
                       budget=budget, config=cfg.sampler(seed=rollout_seed(cfg, index)), device=cfg.device)
    return Clip(res.latents.cpu(), context.cpu())
