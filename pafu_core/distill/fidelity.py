"""How close a budgeted video stays to keep-all with the same noise: the quality signal on a model where no
truth exists (``benchmarks/bench_truthless_signal.py`` measures, on the tiny world, how well it ranks
policies the way the truth does)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..adapter import WanChunkRunner
from ..salience import SalienceHead
from ..sampler import sample_video
from ..settings import CacheSettings
from .recipe import DistillConfig

#: the policies a new head is compared with: the best training-free ones we have, and the cheapest
COMPARED = ("pafu", "standout", "deep_forcing", "fifo")


def frame_psnr(got: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR per latent frame, peak = the reference's range.

    Args:
        got, ref: [B, C, F, H, W] latents.
    Returns:
        [F] dB (inf where a frame is identical).
    """
    peak = (ref.amax() - ref.amin()).clamp_min(1e-6)
    mse = (got.float() - ref.float()).pow(2).mean(dim=(0, 1, 3, 4))
    return 10 * torch.log10(peak ** 2 / mse)


def fidelity_to_keep_all(student: WanChunkRunner, head: SalienceHead, contexts: Sequence[torch.Tensor],
                         cfg: DistillConfig, policies: Sequence[str] = COMPARED,
                         between: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Per-frame PSNR of each policy's video to keep-all's, mean over ``contexts`` (held-out prompts).

    Every video runs ``cfg.eval_frames`` (default twice the clip) at ``cfg.eval_budget`` of the clip, noise
    seed 50_000 + i for prompt i under every policy. ``between`` runs between videos (the node's interrupt
    check). Returns {policy: [F] mean PSNR per frame}.
    """
    frames = cfg.eval_frames or 2 * cfg.rollout_frames
    sums: dict[str, torch.Tensor] = {}
    for i, context in enumerate(contexts):
        run = dict(num_frames=frames, height=cfg.latent_size[0], width=cfg.latent_size[1],
                   config=cfg.sampler(seed=50_000 + i), device=cfg.device)
        ctx = context.to(cfg.device)
        ref = sample_video(student, ctx, policy=CacheSettings("keep_all").build_policy(), budget=None, **run).latents
        for name in policies:
            if between is not None:
                between()
            settings = CacheSettings(name, budget=cfg.eval_budget, reference_frames=cfg.rollout_frames)
            got = sample_video(student, ctx, policy=settings.build_policy(head if name == "pafu" else None),
                               budget=settings.cache_budget(), positions=settings.cache_positions, **run).latents
            psnr = frame_psnr(got, ref).cpu()
            sums[name] = sums.get(name, 0) + psnr
    return {name: (total / len(contexts)).tolist() for name, total in sums.items()}


def mean_db(per_frame: Sequence[float]) -> float:
    """The mean of finite per-frame PSNRs (a frame equal to keep-all's, such as a sink, has inf)."""
    finite = [v for v in per_frame if v != float("inf")]
    return sum(finite) / len(finite) if finite else float("inf")
