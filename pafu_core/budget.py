"""How many tokens a cache may keep per layer, in the units a user thinks in, and what a token costs.

A budget is stated as tokens, latent frames, a fraction of a reference window or GiB of K/V memory; it
becomes tokens once the model's shape (and so a token's bytes) is known. This module owns the units, the
memory arithmetic and the one refusal of a budget too small for a chunk.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch

#: Self-Forcing's keep-all cache: 21 latent frames. Budget fractions are of this window.
REFERENCE_FRAMES = 21
#: the one vocabulary of budget units, from the node's combo to the eviction
BUDGET_UNITS = ("fraction", "latent_frames", "tokens", "GiB")


def finite(name: str, value: float) -> float:
    """``value``, refused in one sentence when NaN or infinite (widgets clamp ranges, not NaN)."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


@dataclass(frozen=True)
class CacheBudget:
    """How many tokens each layer may keep, stated as tokens, latent frames, a fraction or GiB.

    ``fraction`` is of ``reference_frames`` latent frames (Self-Forcing's 21-frame window for Wan,
    the training clip for the tiny world). ``GiB`` is the memory of the cache's K/V slots (budget
    plus one chunk, every layer, in the cache's storage dtype); it becomes tokens once the model's
    shape is known. ``sink_frames`` first frames are never evicted.
    """

    value: float
    unit: str = "latent_frames"
    sink_frames: int = 0
    reference_frames: int = REFERENCE_FRAMES

    def __post_init__(self):
        if self.unit not in BUDGET_UNITS:
            raise ValueError(f"budget_unit must be one of {', '.join(BUDGET_UNITS)}, got {self.unit!r}")
        finite("budget", self.value)
        if not self.value > 0:
            raise ValueError(f"budget must be positive, got {self.value}")
        if self.unit == "fraction" and self.value > 1:
            raise ValueError(f"budget fraction must be in (0, 1], got {self.value}")
        if self.sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {self.sink_frames}")

    def with_sinks(self, frames: int) -> "CacheBudget":
        """This budget with at least the first ``frames`` latent frames as sinks: the one rule that a given start
        (an image-to-video start latent, on either path) is never evicted."""
        return replace(self, sink_frames=max(self.sink_frames, frames)) if frames else self

    def tokens(self, tokens_per_frame: int, *, chunk_tokens: int = 0, bytes_per_token: int = 0) -> int:
        """Tokens per layer. ``GiB`` needs the bytes one token costs in every layer and the chunk
        size (the cache always holds one chunk beyond its budget)."""
        if self.unit == "tokens":
            return int(self.value)
        if self.unit == "latent_frames":
            return int(round(self.value * tokens_per_frame))
        if self.unit == "fraction":
            return int(round(self.value * self.reference_frames * tokens_per_frame))
        if bytes_per_token <= 0:
            raise ValueError("a budget in GiB needs the model's shape to become tokens")
        return int(self.value * 2**30 // bytes_per_token) - chunk_tokens


def check_fits(budget_tokens: int, chunk_frames: int, tokens_per_frame: int, sink_frames: int = 0,
               held: int = 0) -> None:
    """The one refusal of a budget that cannot hold a chunk (plus the sink frames, and the ``held`` tokens
    already committed), in its own words."""
    tpf = tokens_per_frame
    chunk = chunk_frames * tpf
    needed = max(chunk + sink_frames * tpf, held)
    if budget_tokens < needed:
        raise ValueError(
            f"budget of {max(0, budget_tokens)} tokens per layer is smaller than one chunk "
            f"({chunk} tokens = {chunk_frames} frames x {tpf})"
            + (f" plus {sink_frames} sink frames" if sink_frames else "")
            + f"; raise the budget to at least {needed} tokens ({-(-needed // tpf)} latent frames)")


def kv_bytes_per_token(num_layers: int, num_heads: int, head_dim: int, dtype: torch.dtype,
                       storage: str = "model") -> int:
    """Bytes one cached token costs in all layers, K and V, scales included."""
    if storage == "int8":
        return num_layers * 2 * num_heads * (head_dim + 2)         # int8 values + one fp16 scale per head
    return num_layers * 2 * num_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def cache_bytes_for(budget_tokens: int, num_layers: int, num_heads: int, head_dim: int,
                    dtype: torch.dtype, storage: str = "model") -> int:
    """Bytes of self-attention K/V that ``budget_tokens`` per layer hold (the nominal cache size)."""
    return budget_tokens * kv_bytes_per_token(num_layers, num_heads, head_dim, dtype, storage)


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
