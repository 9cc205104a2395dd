"""Self-Forcing / Causal-Forcing style chunked autoregressive sampling with a budgeted KV cache.

Per chunk: start from noise; a few flow-matching denoising passes (timesteps warped by ``shift``),
each predicting the clean chunk and re-noising it with fresh noise to the next timestep; then one
cache-writing pass over the clean chunk (or at ``context_timestep``) whose K/V enter the cache,
after which the policy scores them and the cache evicts down to its budget.

All noise comes from one CPU generator seeded once, drawn in the same order for every policy, so
rollouts under different policies are directly comparable.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .adapter import WanChunkRunner
from .cache import CacheBudget, CacheShape, open_cache
from .policies import Policy
from .report import CacheReport, ChunkStats
from .recache import recache as recache_kept
from .timeline import FramePrompts, PromptTimeline, as_prompts
from .timing import synchronize

#: timestep of pure noise (sigma 1): Wan's timesteps run in (0, TIMESTEP_SCALE]
TIMESTEP_SCALE = 1000.0
DEFAULT_TIMESTEPS = (1000.0, 750.0, 500.0, 250.0)


def warp_timesteps(timesteps, shift: float) -> list[float]:
    """Flow-matching shift: sigma = shift*s / (1 + (shift-1)*s) with s = t/1000."""
    out = []
    for t in timesteps:
        s = t / TIMESTEP_SCALE
        out.append(shift * s / (1 + (shift - 1) * s))
    return out


def parse_timesteps(text: str) -> tuple[float, ...]:
    """'1000, 750, 500, 250' -> (1000.0, 750.0, 500.0, 250.0), with a readable error."""
    try:
        values = tuple(float(v) for v in text.replace(";", ",").split(",") if v.strip())
    except ValueError:
        raise ValueError(f"timesteps must be comma-separated numbers, got {text!r}") from None
    validate_timesteps(values)
    return values


def validate_timesteps(timesteps) -> None:
    ts = list(timesteps)
    if not ts:
        raise ValueError("timesteps is empty: give at least one denoising timestep, e.g. 1000,750,500,250")
    if any(not (0 < t <= TIMESTEP_SCALE) for t in ts):      # NaN fails this too
        raise ValueError(f"timesteps must lie in (0, {TIMESTEP_SCALE:g}], got {ts}")
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly decreasing, got {ts}")


NOISE_STREAMS = ("pafu", "comfy_ar")


@dataclass(frozen=True)
class SamplerConfig:
    chunk_frames: int = 3
    timesteps: tuple[float, ...] = DEFAULT_TIMESTEPS
    shift: float = 5.0
    context_timestep: float = 0.0
    seed: int = 0
    #: "pafu": every draw from one CPU generator seeded once (the same noise for every policy);
    #: "comfy_ar": ComfyUI core's ar_video convention (re-noise of chunk c, step i seeded seed + 1000 c + i
    #: on the global RNG), so the same seed gives core's latents
    noise: str = "pafu"

    def __post_init__(self):
        if not isinstance(self.chunk_frames, int) or self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be a positive integer, got {self.chunk_frames!r}")
        object.__setattr__(self, "timesteps", tuple(float(t) for t in self.timesteps))
        validate_timesteps(self.timesteps)
        if not (self.shift > 0 and math.isfinite(self.shift)):
            raise ValueError(f"shift must be a positive finite number, got {self.shift}")
        if self.noise not in NOISE_STREAMS:
            raise ValueError(f"noise must be one of {', '.join(NOISE_STREAMS)}, got {self.noise!r}")
        if not 0 <= self.context_timestep < TIMESTEP_SCALE:
            raise ValueError(f"context_timestep must lie in [0, {TIMESTEP_SCALE:g}), got {self.context_timestep}")

    @property
    def sigmas(self) -> list[float]:
        return warp_timesteps(self.timesteps, self.shift)


@dataclass
class SampleResult:
    latents: torch.Tensor      # [B, C, F, H, W] float32, the model's latent space
    report: CacheReport


StepCallback = Callable[[int, int, torch.Tensor], None]     # (chunk, step, x0 prediction)
ChunkCallback = Callable[[ChunkStats, torch.Tensor], None]  # (stats, the clean chunk as written to the cache)


#: environment variable that caps the memory a cache may reserve, in GiB (tests, shared machines)
CACHE_LIMIT_ENV = "PAFU_CACHE_LIMIT_GIB"


def device_memory_limit(device: torch.device) -> int | None:
    """Bytes a new cache may take on ``device``: ``PAFU_CACHE_LIMIT_GIB`` when set, else free GPU memory
    or available host RAM."""
    cap = os.environ.get(CACHE_LIMIT_ENV)
    if cap:
        try:
            gib = float(cap)
        except ValueError:
            gib = float("nan")
        if not (math.isfinite(gib) and gib > 0):
            raise ValueError(f"{CACHE_LIMIT_ENV} must be a positive number of GiB, got {cap!r}")
        return int(gib * 2**30)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


NONFINITE_HELP = ("the model produced NaN or infinite values at chunk {chunk}; likely causes: a checkpoint "
                  "with NaN/inf weights, a non-finite or extreme cfg, or a corrupt salience head. "
                  "Stopped instead of returning a black video.")


def check_inputs(runner: WanChunkRunner, context: torch.Tensor, noise: torch.Tensor) -> None:
    if context.ndim not in (3, 4) or context.shape[-1] != runner.text_dim:
        raise ValueError(f"conditioning must be [batch, tokens, {runner.text_dim}] (umT5 width), or one per latent "
                         f"frame [batch, frames, tokens, {runner.text_dim}]; got {tuple(context.shape)}")
    if noise.ndim != 5:
        raise ValueError(f"the sampler needs a video latent [batch, channels, frames, height, width], "
                         f"got shape {tuple(noise.shape)}")
    if noise.shape[1] != runner.in_dim:
        raise ValueError(f"latent has {noise.shape[1]} channels but the model expects {runner.in_dim} "
                         f"(Wan 2.1 latents have 16)")
    _, ph, pw = runner.patch_size
    if noise.shape[3] % ph or noise.shape[4] % pw:
        raise ValueError(f"latent height/width {tuple(noise.shape[3:])} must be multiples of the patch "
                         f"size {(ph, pw)}")
    if context.shape[0] not in (1, noise.shape[0]):
        raise ValueError(f"conditioning batch {context.shape[0]} does not match latent batch {noise.shape[0]}")


def check_start(start: torch.Tensor | None, noise: torch.Tensor) -> int:
    """How many latent frames the start gives (0 without one); refuses a start of another shape."""
    if start is None:
        return 0
    b, c, f, h, w = noise.shape
    if start.dim() != 5 or start.shape[1] != c or tuple(start.shape[3:]) != (h, w) or start.shape[0] not in (1, b):
        raise ValueError(f"the start latent has shape {tuple(start.shape)} but the video is {tuple(noise.shape)}: give "
                         f"[{b} or 1, {c}, frames, {h}, {w}]")
    if not 1 <= start.shape[2] < f:
        raise ValueError(f"the start gives {start.shape[2]} latent frames; the video has {f}, so give 1 to {f - 1}")
    return start.shape[2]


def sample_video(runner: WanChunkRunner, context: torch.Tensor | PromptTimeline | FramePrompts, *, num_frames: int, height: int,
                 width: int, policy: Policy, budget: CacheBudget | None,
                 config: SamplerConfig = SamplerConfig(), batch: int = 1,
                 device: torch.device | str | None = None, noise: torch.Tensor | None = None,
                 step_callback: StepCallback | None = None,
                 chunk_callback: ChunkCallback | None = None,
                 negative: torch.Tensor | None = None, cfg: float = 1.0, kv_storage: str = "model",
                 max_cache_bytes: int | None = None, observed: torch.Tensor | None = None,
                 start: torch.Tensor | None = None, recache: bool = False) -> SampleResult:
    """Generate ``num_frames`` latent frames chunk by chunk.

    ``context`` is one conditioning [B, L, C] for the whole video, one per latent frame [B, F, L, C] (or
    ``FramePrompts``), or a ``PromptTimeline``; the cross-attention keys and values are recomputed where
    the prompt changes, and a chunk whose frames differ attends frame by frame.
    ``noise`` (optional) fixes the initial noise [B, C, F, H, W]; otherwise it is drawn from the
    seeded generator. With ``cfg`` != 1 the ``negative`` conditioning runs as a second half of the
    batch with its own cache rows (classifier-free guidance, for models not distilled without it).
    Callbacks may raise to interrupt; the cache is freed either way. The cache is sized before it
    is allocated and refused when it exceeds ``max_cache_bytes`` (default: what the device has
    free), with the budget that would fit.

    ``observed`` (optional, [B, C, F, H, W]) turns generation into prediction of a watched stream:
    each chunk is still generated from the cache, but the cache is then written with the observed
    chunk instead (a world model that sees the real frames after predicting them). Memory is then
    what the policy kept of the real past, not of the model's own drifting rollout.

    ``start`` (optional, [B or 1, C, S, H, W]) gives the video's first S latent frames (an image-to-video
    start frame): they are written to the cache before anything is generated, the way core's
    ``ARVideoI2V`` seeds its cache, kept as sink frames whatever the policy says, and returned as they
    are; chunks are generated from frame S on.

    ``recache`` (a ``PromptTimeline``) computes the kept keys and values again under the new prompt before
    the first chunk wholly after each change (``recache.py``).
    """
    if not math.isfinite(cfg):
        raise ValueError(f"cfg must be a finite number, got {cfg}")
    timeline = as_prompts(context)
    if recache and not isinstance(timeline, PromptTimeline):
        raise ValueError("re-caching follows the changes of a prompt timeline; per-frame prompts change every frame")
    device = torch.device(device) if device is not None else timeline.contexts[0].device
    gen = torch.Generator("cpu").manual_seed(config.seed)
    if noise is None:
        noise = torch.randn(batch, runner.in_dim, num_frames, height, width, generator=gen)
    for prompt in timeline.contexts:
        check_inputs(runner, prompt, noise)
    if observed is not None and observed.shape != noise.shape:
        raise ValueError(f"observed latents must have the noise's shape {tuple(noise.shape)}, got {tuple(observed.shape)}")
    guided = cfg != 1.0
    if guided:
        if negative is None:
            raise ValueError(f"cfg={cfg} needs negative conditioning (or set cfg to 1.0)")
        check_inputs(runner, negative, noise)
    batch, channels, num_frames, height, width = noise.shape
    rows = 2 * batch if guided else batch
    if num_frames < 1:
        raise ValueError("num_frames must be at least 1")
    tokens_per_frame = runner.tokens_per_frame(height, width)
    given = check_start(start, noise)
    chunk_frames = min(config.chunk_frames, num_frames - given)
    timeline.check(num_frames, first=given, chunk_frames=chunk_frames)
    if given and budget is not None:          # the start frames are sinks: never evicted
        budget = dataclasses.replace(budget, sink_frames=max(budget.sink_frames, given))
    if max_cache_bytes is None:
        max_cache_bytes = device_memory_limit(device)
    cache, report = open_cache(CacheShape.of(runner), policy, budget, batch=rows, tokens_per_frame=tokens_per_frame,
                               chunk_frames=max(chunk_frames, given), total_frames=num_frames, device=device,
                               storage=kv_storage, max_bytes=max_cache_bytes,
                               grid_hw=(height // runner.patch_size[1], width // runner.patch_size[2]))
    sigmas = config.sigmas
    latents = torch.empty(noise.shape, dtype=torch.float32, device=device)
    kept = []
    try:
        with torch.inference_mode():
            def cross_kv(prompt: torch.Tensor):
                """The cross-attention K/V of one prompt [B, L, C] or one per frame [B, f, L, C] (and of the
                negative, as the second half)."""
                prompt = prompt.to(device).expand(batch, *prompt.shape[1:])
                if guided:
                    neg = negative.to(device).expand(batch, -1, -1)
                    if prompt.dim() == 4:
                        neg = neg.unsqueeze(1).expand(-1, prompt.shape[1], -1, -1)
                    if neg.shape[-2] != prompt.shape[-2]:     # pad the shorter text with zeros
                        n = max(neg.shape[-2], prompt.shape[-2])
                        prompt, neg = (torch.nn.functional.pad(c, (0, 0, 0, n - c.shape[-2])) for c in (prompt, neg))
                    prompt = torch.cat([prompt, neg])
                return runner.cross_kv(runner.embed_text(prompt))

            prompt_key = segment = None
            chunk_starts = []

            def written_latents(c0: int, c1: int) -> torch.Tensor:
                """The latents the cache was written with for frames [c0, c1), every cache row."""
                source = observed if observed is not None and c0 >= given else latents
                x = source[:, :, c0:c1].to(device=device, dtype=torch.float32)
                return torch.cat([x, x]) if guided else x

            def use_prompts(f0: int, f1: int) -> None:
                """The chunk's cross-attention K/V, recomputed only where the prompt changes (and, with
                ``recache``, the kept K/V before the first chunk wholly in a new segment)."""
                nonlocal prompt_key, segment
                key = timeline.key(f0, f1)
                if key != prompt_key:
                    prompt_key = key
                    cache.cross_kv = cross_kv(timeline.text(f0, f1))
                    if recache and len(key) == 1:
                        if segment is not None and key[0] != segment and cache.length:
                            recache_kept(runner, cache, written_latents, chunk_starts, f0, config.context_timestep)
                        segment = key[0]
                chunk_starts.append(f0)

            def predict(x, t, frame_start, write=False):
                if not guided:
                    return runner.forward_chunk(x, t, frame_start, cache, write=write)
                out = runner.forward_chunk(torch.cat([x, x]), torch.cat([t, t]), frame_start, cache, write=write)
                if out is None:
                    return None
                cond, uncond = out.float().chunk(2)
                return uncond + cfg * (cond - uncond)

            def close_chunk(chunk: int, f0: int, f1: int, written: torch.Tensor, t0: float, finite=None) -> None:
                """After a chunk's writing pass: which frames each layer keeps, one host sync, the report's
                row and the callback; ``finite`` (a device flag) stops a run whose output went non-finite."""
                kept.append(cache.kept_frame_counts(num_frames))
                synchronize(device)           # ... and ends on one: one sync per chunk
                if finite is not None and not finite:
                    raise FloatingPointError(NONFINITE_HELP.format(chunk=chunk))
                cache.take_nonfinite()
                stats = cache.chunk_stats(chunk, f0, f1 - f0, (time.perf_counter() - t0) * 1e3)
                report.chunks.append(stats)
                if chunk_callback is not None:
                    chunk_callback(stats, written)

            synchronize(device)               # chunk timing starts on an idle device ...
            if given:                             # the start frames enter the cache as a chunk of their own
                t0 = time.perf_counter()
                use_prompts(0, given)
                written = start.to(device=device, dtype=torch.float32).expand(batch, -1, -1, -1, -1)
                predict(written, torch.full((batch, given), config.context_timestep, device=device), 0, write=True)
                latents[:, :, :given] = written
                close_chunk(0, 0, given, written, t0)
            for chunk, f0 in enumerate(range(given, num_frames, chunk_frames), start=1 if given else 0):
                f1 = min(num_frames, f0 + chunk_frames)
                t0 = time.perf_counter()
                use_prompts(f0, f1)
                x = noise[:, :, f0:f1].to(device=device, dtype=torch.float32)
                x0 = x
                for step, sigma in enumerate(sigmas):
                    t = torch.full((batch, f1 - f0), sigma * TIMESTEP_SCALE, device=device)
                    flow = predict(x, t, f0).float()
                    x0 = x - sigma * flow
                    if step_callback is not None:
                        step_callback(chunk, step, x0)
                    if step + 1 < len(sigmas):
                        nxt = sigmas[step + 1]
                        if config.noise == "comfy_ar":
                            torch.manual_seed(config.seed + chunk * 1000 + step)
                            fresh = torch.randn_like(x0)
                        else:
                            fresh = torch.randn(x0.shape, generator=gen).to(device)
                        x = (1 - nxt) * x0 + nxt * fresh
                s_ctx = config.context_timestep / TIMESTEP_SCALE
                written = x0 if observed is None else observed[:, :, f0:f1].to(device=device, dtype=torch.float32)
                x_ctx = written if s_ctx == 0 else (1 - s_ctx) * written + s_ctx * torch.randn(x0.shape, generator=gen).to(device)
                t_ctx = torch.full((batch, f1 - f0), config.context_timestep, device=device)
                predict(x_ctx, t_ctx, f0, write=True)
                latents[:, :, f0:f1] = x0
                close_chunk(chunk, f0, f1, written, t0, finite=torch.isfinite(x0).all())
        report.kept_frames = torch.stack(kept).cpu() if kept else None
        report.final_kept = cache.kept_token_mask().cpu()
        return SampleResult(latents=latents, report=report)
    finally:
        cache.release()
