"""Chunked autoregressive sampling with a budgeted KV cache, in one call (Self-Forcing / Causal-Forcing style).

``sample_video`` checks a request once (``rollout.plan_rollout``) and carries it out (``rollout.ChunkLoop``); the
node pack builds the request itself, before loading the model, and runs it the same way.
"""

from __future__ import annotations

import torch

from .adapter import WanChunkRunner
from .budget import CacheBudget
from .policy import Policy
from .rollout import ChunkCallback, SampleResult, StepCallback, plan_rollout, run_rollout
from .schedule import SamplerConfig
from .timeline import FramePrompts, PromptTimeline


def sample_video(runner: WanChunkRunner, context: torch.Tensor | PromptTimeline | FramePrompts, *, num_frames: int,
                 height: int, width: int, policy: Policy, budget: CacheBudget | None,
                 config: SamplerConfig = SamplerConfig(), batch: int = 1,
                 device: torch.device | str | None = None, noise: torch.Tensor | None = None,
                 step_callback: StepCallback | None = None,
                 chunk_callback: ChunkCallback | None = None,
                 negative: torch.Tensor | None = None, cfg: float = 1.0, kv_storage: str = "model",
                 max_cache_bytes: int | None = None, observed: torch.Tensor | None = None,
                 start: torch.Tensor | None = None, recache: bool = False, positions: str = "true") -> SampleResult:
    """Generate ``num_frames`` latent frames chunk by chunk.

    Args:
        context: one conditioning [B, L, C] for the whole video, one per latent frame [B, F, L, C] (or
            ``FramePrompts``), or a ``PromptTimeline``; the cross-attention keys and values are recomputed where
            the prompt changes, and a chunk whose frames differ attends frame by frame.
        noise: the initial noise [B, C, F, H, W] (else drawn from the seeded generator; its shape then gives
            batch, frames and size).
        negative, cfg: with ``cfg`` != 1 the negative conditioning runs as a second half of the batch with its
            own cache rows (classifier-free guidance).
        step_callback, chunk_callback: may raise to interrupt; the cache is freed either way.
        max_cache_bytes: the cache is sized before it is allocated and refused above this (default: what the
            device has free), with the budget that would fit.
        observed: [B, C, F, H, W] turns generation into prediction of a watched stream: each chunk is generated
            from the cache, then the cache is written with the observed chunk instead.
        start: [B or 1, C, S, H, W] the video's first S latent frames (image-to-video): written to the cache
            first, the way core's ``ARVideoI2V`` seeds its cache, kept as sink frames, returned as they are.
        recache: with a ``PromptTimeline``, the kept keys and values computed again under the new prompt before
            the first chunk wholly after each change (``recache.py``).
        positions: ``"true"``, or ``"realigned"`` (``positions.py``).

    Returns:
        ``SampleResult``: latents [B, C, F, H, W] float32 and the cache report.
    """
    shape = tuple(noise.shape) if noise is not None else (batch, runner.in_dim, num_frames, height, width)
    request = plan_rollout(runner, context, shape=shape, policy=policy, budget=budget, config=config, noise=noise,
                           negative=negative, cfg=cfg, kv_storage=kv_storage, positions=positions,
                           max_cache_bytes=max_cache_bytes, observed=observed, start=start, recache=recache)
    return run_rollout(runner, request, device, step_callback, chunk_callback)
