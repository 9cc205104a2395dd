"""The denoising schedule of a chunk: Self-Forcing's few timesteps, warped by the flow shift, and the noise stream."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
