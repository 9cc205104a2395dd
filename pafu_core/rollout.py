"""One generation as a request checked once, and the chunk loop that carries it out.

``plan_rollout`` turns what a caller asks for (prompts, the latent's shape, the policy and budget, a start,
a watched video...) into a ``RolloutRequest``, refusing anything wrong in one sentence before any model is
loaded or any memory allocated; the node builds it before loading the model and hands it on. ``ChunkLoop``
runs it: each stage of a chunk (the start frames, the denoising passes, the commit, a prompt change) is a
method, the cache is opened once and freed whatever happens.

Per chunk: start from noise; a few flow-matching denoising passes (timesteps warped by ``shift``), each
predicting the clean chunk and re-noising it with fresh noise to the next timestep; then one cache-writing
pass over the clean chunk (or at ``context_timestep``) whose K/V enter the cache, after which the policy
scores them and the cache evicts down to its budget. All noise comes from one CPU generator seeded once,
drawn in the same order for every policy, so rollouts under different policies are directly comparable.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .adapter import WanChunkRunner
from .budget import CacheBudget, device_memory_limit
from .cache import CacheShape, KVCache, open_cache
from .policy import Policy, check_inputs
from .positions import TemporalBand, check_positions
from .recache import recache as recache_kept
from .report import CacheReport, ChunkStats
from .schedule import TIMESTEP_SCALE, SamplerConfig
from .timeline import FramePrompts, PromptTimeline, as_prompts
from .timing import synchronize

StepCallback = Callable[[int, int, torch.Tensor], None]     # (chunk, step, x0 prediction)
ChunkCallback = Callable[[ChunkStats, torch.Tensor], None]  # (stats, the clean chunk as written to the cache)

NONFINITE_HELP = ("the model produced NaN or infinite values at chunk {chunk}; likely causes: a checkpoint "
                  "with NaN/inf weights, a non-finite or extreme cfg, or a corrupt salience head. "
                  "Stopped instead of returning a black video.")


@dataclass
class SampleResult:
    latents: torch.Tensor      # [B, C, F, H, W] float32, the model's latent space
    report: CacheReport


def check_conditioning(runner: WanChunkRunner, context: torch.Tensor, shape: tuple[int, ...]) -> None:
    """One conditioning [B, L, text_dim] (or per frame [B, F, L, text_dim]) against a latent of ``shape``."""
    if context.ndim not in (3, 4) or context.shape[-1] != runner.text_dim:
        raise ValueError(f"conditioning must be [batch, tokens, {runner.text_dim}] (umT5 width), or one per latent "
                         f"frame [batch, frames, tokens, {runner.text_dim}]; got {tuple(context.shape)}")
    if context.shape[0] not in (1, shape[0]):
        raise ValueError(f"conditioning batch {context.shape[0]} does not match latent batch {shape[0]}")


def check_latent(runner: WanChunkRunner, shape: tuple[int, ...]) -> None:
    """The video latent's shape [B, C, F, H, W] against the model."""
    if len(shape) != 5:
        raise ValueError(f"the sampler needs a video latent [batch, channels, frames, height, width], "
                         f"got shape {tuple(shape)}")
    if shape[1] != runner.in_dim:
        raise ValueError(f"latent has {shape[1]} channels but the model expects {runner.in_dim} "
                         f"(Wan 2.1 latents have 16)")
    _, ph, pw = runner.patch_size
    if shape[3] % ph or shape[4] % pw:
        raise ValueError(f"latent height/width {tuple(shape[3:])} must be multiples of the patch "
                         f"size {(ph, pw)}")
    if shape[2] < 1:
        raise ValueError("num_frames must be at least 1")


def check_start(start: torch.Tensor | None, shape: tuple[int, ...]) -> int:
    """How many latent frames the start gives (0 without one); refuses a start of another shape."""
    if start is None:
        return 0
    b, c, f, h, w = shape
    if start.dim() != 5 or start.shape[1] != c or tuple(start.shape[3:]) != (h, w) or start.shape[0] not in (1, b):
        raise ValueError(f"the start latent has shape {tuple(start.shape)} but the video is {tuple(shape)}: give "
                         f"[{b} or 1, {c}, frames, {h}, {w}]")
    if not 1 <= start.shape[2] < f:
        raise ValueError(f"the start gives {start.shape[2]} latent frames; the video has {f}, so give 1 to {f - 1}")
    return start.shape[2]


@dataclass
class RolloutRequest:
    """Everything one generation needs, already checked (build it with ``plan_rollout``)."""

    prompts: PromptTimeline | FramePrompts
    shape: tuple[int, int, int, int, int]          # [B, C, F, H, W] of the video latent
    policy: Policy
    budget: CacheBudget | None                     # sink frames already cover the start frames
    config: SamplerConfig
    chunk_frames: int                              # the chunk size the video allows (<= config.chunk_frames)
    given: int = 0                                 # start frames given
    noise: torch.Tensor | None = None
    negative: torch.Tensor | None = None
    cfg: float = 1.0
    kv_storage: str = "model"
    positions: str = "true"
    band: TemporalBand | None = None
    max_cache_bytes: int | None = None
    observed: torch.Tensor | None = None
    start: torch.Tensor | None = None
    recache: bool = False

    @property
    def guided(self) -> bool:
        return self.cfg != 1.0


def plan_rollout(runner: WanChunkRunner, context, *, shape: tuple[int, ...], policy: Policy,
                 budget: CacheBudget | None, config: SamplerConfig = SamplerConfig(), noise: torch.Tensor | None = None,
                 negative: torch.Tensor | None = None, cfg: float = 1.0, kv_storage: str = "model",
                 positions: str = "true", max_cache_bytes: int | None = None, observed: torch.Tensor | None = None,
                 start: torch.Tensor | None = None, recache: bool = False) -> RolloutRequest:
    """Check a generation before any work: ``context`` is one conditioning [B, L, C], one per latent frame
    [B, F, L, C] (or ``FramePrompts``), or a ``PromptTimeline``; ``shape`` the latent [B, C, F, H, W]."""
    shape = tuple(int(s) for s in (noise.shape if noise is not None else shape))
    check_latent(runner, shape)
    if not math.isfinite(cfg):
        raise ValueError(f"cfg must be a finite number, got {cfg}")
    prompts = as_prompts(context)
    if recache and not isinstance(prompts, PromptTimeline):
        raise ValueError("re-caching follows the changes of a prompt timeline; per-frame prompts change every frame")
    for prompt in prompts.contexts:
        check_conditioning(runner, prompt, shape)
    if observed is not None and tuple(observed.shape) != shape:
        raise ValueError(f"observed latents must have the noise's shape {shape}, got {tuple(observed.shape)}: give the "
                         "watched video the latent's batch, frames and size")
    if cfg != 1.0:
        if negative is None:
            raise ValueError(f"cfg={cfg} needs negative conditioning (or set cfg to 1.0)")
        check_conditioning(runner, negative, shape)
    given = check_start(start, shape)
    frames = shape[2]
    chunk_frames = min(config.chunk_frames, frames - given)
    prompts.check(frames, first=given, chunk_frames=chunk_frames)
    check_inputs(policy, runner.provides, runner.where, "choose another policy or head")
    if (check_model := getattr(policy, "check_model", None)) is not None:    # a duck-typed policy may lack it
        check_model(runner)
    if policy.query_frames > chunk_frames:
        raise ValueError(f"the query window of {policy.query_frames} latent frames is larger than a chunk "
                         f"({chunk_frames} latent frames); set query_frames to at most {chunk_frames}")
    band = None
    if check_positions(positions) == "realigned":
        if recache:
            raise ValueError("re-caching runs the kept chunks again at their true positions, so it cannot follow "
                             "positions = realigned; switch one of them off")
        band = runner.temporal_band()
    if budget is not None:
        budget = budget.with_sinks(given)      # the start frames are sinks: never evicted
    return RolloutRequest(prompts, shape, policy, budget, config, chunk_frames, given, noise, negative, cfg,
                          kv_storage, positions, band, max_cache_bytes, observed, start, recache)


@dataclass
class ChunkLoop:
    """Carries out one ``RolloutRequest`` on ``device``: ``run()`` returns the video and its cache report."""

    runner: WanChunkRunner
    request: RolloutRequest
    device: torch.device
    step_callback: StepCallback | None = None
    chunk_callback: ChunkCallback | None = None
    cache: KVCache | None = field(default=None, init=False)

    def run(self) -> SampleResult:
        req, device = self.request, self.device
        b, c, frames, h, w = req.shape
        self.gen = torch.Generator("cpu").manual_seed(req.config.seed)
        self.noise = req.noise if req.noise is not None else torch.randn(req.shape, generator=self.gen)
        max_bytes = req.max_cache_bytes if req.max_cache_bytes is not None else device_memory_limit(device)
        _, ph, pw = self.runner.patch_size
        self.cache, self.report = open_cache(
            CacheShape.of(self.runner), req.policy, req.budget, batch=2 * b if req.guided else b,
            tokens_per_frame=self.runner.tokens_per_frame(h, w), chunk_frames=max(req.chunk_frames, req.given),
            total_frames=frames, device=device, storage=req.kv_storage, max_bytes=max_bytes,
            grid_hw=(h // ph, w // pw), positions=req.positions, band=req.band)
        self.latents = torch.empty(req.shape, dtype=torch.float32, device=device)
        self.kept, self.chunk_starts = [], []
        self.prompt_key = self.segment = None
        try:
            with torch.inference_mode():
                synchronize(device)               # chunk timing starts on an idle device ...
                if req.given:
                    self.start_frames()
                first = 1 if req.given else 0
                for chunk, f0 in enumerate(range(req.given, frames, req.chunk_frames), start=first):
                    self.chunk(chunk, f0, min(frames, f0 + req.chunk_frames))
            self.report.kept_frames = torch.stack(self.kept).cpu() if self.kept else None
            self.report.final_kept = self.cache.kept_token_mask().cpu()
            return SampleResult(latents=self.latents, report=self.report)
        finally:
            self.cache.release()

    # ---- the stages of a chunk -----------------------------------------------------------------
    def start_frames(self) -> None:
        """The start frames enter the cache as a chunk of their own, returned as given."""
        req, b = self.request, self.request.shape[0]
        t0 = time.perf_counter()
        self.use_prompts(0, req.given)
        written = req.start.to(device=self.device, dtype=torch.float32).expand(b, -1, -1, -1, -1)
        self.predict(written, torch.full((b, req.given), req.config.context_timestep, device=self.device), 0,
                     write=True)
        self.latents[:, :, :req.given] = written
        self.close(0, 0, req.given, written, t0)

    def chunk(self, chunk: int, f0: int, f1: int) -> None:
        """Denoise frames [f0, f1) from noise in the configured steps, then commit the clean chunk."""
        config, b = self.request.config, self.request.shape[0]
        t0 = time.perf_counter()
        self.use_prompts(f0, f1)
        x = x0 = self.noise[:, :, f0:f1].to(device=self.device, dtype=torch.float32)
        sigmas = config.sigmas
        for step, sigma in enumerate(sigmas):
            t = torch.full((b, f1 - f0), sigma * TIMESTEP_SCALE, device=self.device)
            x0 = x - sigma * self.predict(x, t, f0).float()
            if self.step_callback is not None:
                self.step_callback(chunk, step, x0)
            if step + 1 < len(sigmas):
                x = (1 - sigmas[step + 1]) * x0 + sigmas[step + 1] * self.fresh_noise(x0, chunk, step)
        self.commit(chunk, f0, f1, x0, t0)

    def fresh_noise(self, x0: torch.Tensor, chunk: int, step: int) -> torch.Tensor:
        if self.request.config.noise == "comfy_ar":       # core's ar_video convention
            torch.manual_seed(self.request.config.seed + chunk * 1000 + step)
            return torch.randn_like(x0)
        return torch.randn(x0.shape, generator=self.gen).to(self.device)

    def commit(self, chunk: int, f0: int, f1: int, x0: torch.Tensor, t0: float) -> None:
        """The cache-writing pass over the clean chunk (or the watched one), at the context timestep."""
        req, b = self.request, self.request.shape[0]
        s_ctx = req.config.context_timestep / TIMESTEP_SCALE
        observed = req.observed
        written = x0 if observed is None else observed[:, :, f0:f1].to(device=self.device, dtype=torch.float32)
        x_ctx = written if s_ctx == 0 else (1 - s_ctx) * written + s_ctx * torch.randn(
            x0.shape, generator=self.gen).to(self.device)
        self.predict(x_ctx, torch.full((b, f1 - f0), req.config.context_timestep, device=self.device), f0, write=True)
        self.latents[:, :, f0:f1] = x0
        self.close(chunk, f0, f1, written, t0, finite=torch.isfinite(x0).all())

    def close(self, chunk: int, f0: int, f1: int, written: torch.Tensor, t0: float, finite=None) -> None:
        """After a chunk's writing pass: which frames each layer keeps, one host sync, the report's row and
        the callback; ``finite`` (a device flag) stops a run whose output went non-finite."""
        cache = self.cache
        self.kept.append(cache.kept_frame_counts(self.request.shape[2]))
        synchronize(self.device)           # ... and ends on one: one sync per chunk
        if finite is not None and not finite:
            raise FloatingPointError(NONFINITE_HELP.format(chunk=chunk))
        cache.take_nonfinite()
        stats = cache.chunk_stats(chunk, f0, f1 - f0, (time.perf_counter() - t0) * 1e3)
        self.report.chunks.append(stats)
        if self.chunk_callback is not None:
            self.chunk_callback(stats, written)

    def use_prompts(self, f0: int, f1: int) -> None:
        """The chunk's cross-attention K/V, recomputed only where the prompt changes (and, with ``recache``, the
        kept K/V before the first chunk wholly in a new segment)."""
        prompts = self.request.prompts
        key = prompts.key(f0, f1)
        if key != self.prompt_key:
            self.prompt_key = key
            self.cache.cross_kv = self.cross_kv(prompts.text(f0, f1))
            if self.request.recache and len(key) == 1:
                if self.segment is not None and key[0] != self.segment and self.cache.length:
                    recache_kept(self.runner, self.cache, self.written_latents, self.chunk_starts, f0,
                                 self.request.config.context_timestep)
                self.segment = key[0]
        self.chunk_starts.append(f0)

    # ---- helpers -------------------------------------------------------------------------------
    def cross_kv(self, prompt: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The cross-attention K/V of one prompt [B, L, C] or one per frame [B, f, L, C] (and of the negative, as
        the second half of the batch)."""
        req, b = self.request, self.request.shape[0]
        prompt = prompt.to(self.device).expand(b, *prompt.shape[1:])
        if req.guided:
            neg = req.negative.to(self.device).expand(b, -1, -1)
            if prompt.dim() == 4:
                neg = neg.unsqueeze(1).expand(-1, prompt.shape[1], -1, -1)
            if neg.shape[-2] != prompt.shape[-2]:     # pad the shorter text with zeros
                n = max(neg.shape[-2], prompt.shape[-2])
                prompt, neg = (torch.nn.functional.pad(c, (0, 0, 0, n - c.shape[-2])) for c in (prompt, neg))
            prompt = torch.cat([prompt, neg])
        return self.runner.cross_kv(self.runner.embed_text(prompt))

    def written_latents(self, f0: int, f1: int) -> torch.Tensor:
        """The latents the cache was written with for frames [f0, f1), every cache row [rows, C, f, H, W]."""
        req = self.request
        source = req.observed if req.observed is not None and f0 >= req.given else self.latents
        x = source[:, :, f0:f1].to(device=self.device, dtype=torch.float32)
        return torch.cat([x, x]) if req.guided else x

    def predict(self, x: torch.Tensor, t: torch.Tensor, frame_start: int, write: bool = False):
        """The flow [B, C, f, H, W] of one pass (guided: both halves, mixed by cfg); None for a writing pass."""
        if not self.request.guided:
            return self.runner.forward_chunk(x, t, frame_start, self.cache, write=write)
        out = self.runner.forward_chunk(torch.cat([x, x]), torch.cat([t, t]), frame_start, self.cache, write=write)
        if out is None:
            return None
        cond, uncond = out.float().chunk(2)
        return uncond + self.request.cfg * (cond - uncond)


def run_rollout(runner: WanChunkRunner, request: RolloutRequest, device: torch.device | str | None = None,
                step_callback: StepCallback | None = None, chunk_callback: ChunkCallback | None = None) -> SampleResult:
    """Carry out a checked request (callbacks may raise to interrupt; the cache is freed either way)."""
    device = torch.device(device) if device is not None else request.prompts.contexts[0].device
    return ChunkLoop(runner, request, device, step_callback, chunk_callback).run()
