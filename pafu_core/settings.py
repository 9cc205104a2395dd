"""What a user chooses about the cache (policy, budget, sinks, storage), before any model is known.

The node pack passes one ``CacheSettings`` object between nodes (``PAFU_CACHE``); the sampler
turns it into a ``Policy`` and a ``CacheBudget`` once the model, the resolution and the head are
known, so every check that needs them happens there, with a readable message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .cache import KV_STORAGE, REFERENCE_FRAMES, CacheBudget, cache_bytes_for, kv_bytes_per_token
from .policies import Policy, make_policy, policy_entry

#: the policy a user gets without choosing: it needs no head, so it runs on any model
DEFAULT_POLICY = "standout"


@dataclass(frozen=True)
class CacheSettings:
    policy: str = DEFAULT_POLICY
    budget: float = 0.25
    budget_unit: str = "fraction"          # "fraction" of reference_frames, "latent_frames", "tokens", "GiB"
    sink_frames: int = 0
    reference_frames: int = REFERENCE_FRAMES
    seed: int = 0                          # for the random control policy
    kv_storage: str = "model"              # "model" (the model's dtype) or "int8" (per-token-per-head scales)

    def __post_init__(self):
        policy_entry(self.policy)            # refuses an unknown name, listing the registered ones
        if self.kv_storage not in KV_STORAGE:
            raise ValueError(f"kv_storage must be one of {', '.join(KV_STORAGE)}, got {self.kv_storage!r}")
        if self.reference_frames < 1:
            raise ValueError(f"reference_frames must be >= 1, got {self.reference_frames}")
        self._budget()               # the one check of the budget: unit, finite, positive, sinks

    def _budget(self) -> CacheBudget:
        return CacheBudget(self.budget, unit=self.budget_unit, sink_frames=self.sink_frames,
                           reference_frames=self.reference_frames)

    def cache_budget(self) -> CacheBudget | None:
        """The budget the cache enforces; none for keep_all (still checked, so a bad value never hides)."""
        return None if self.policy == "keep_all" else self._budget()

    def build_policy(self, head=None) -> Policy:
        return make_policy(self.policy, head=head, seed=self.seed)

    def budget_tokens(self, tokens_per_frame: int, *, chunk_tokens: int, bytes_per_token: int) -> int | None:
        budget = self.cache_budget()
        return None if budget is None else budget.tokens(tokens_per_frame, chunk_tokens=chunk_tokens,
                                                         bytes_per_token=bytes_per_token)

    def describe(self, tokens_per_frame: int, num_layers: int, num_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.bfloat16, chunk_frames: int = 3, label: str = "") -> str:
        """One paragraph: the budget in tokens and frames, the memory it implies, and what keep-all
        would have reached in the same memory."""
        chunk = chunk_frames * tokens_per_frame
        per_token = kv_bytes_per_token(num_layers, num_heads, head_dim, dtype, self.kv_storage)
        storage = "" if self.kv_storage == "model" else f", {self.kv_storage} K/V"
        if self.policy == "keep_all":
            per_frame = tokens_per_frame * per_token
            return (f"keep_all{label}{storage}: unbounded; the cache grows by {per_frame / 2**20:.1f} MiB per latent "
                    f"frame ({REFERENCE_FRAMES} frames: {REFERENCE_FRAMES * per_frame / 2**30:.2f} GiB)")
        tokens = self.budget_tokens(tokens_per_frame, chunk_tokens=chunk, bytes_per_token=per_token)
        kv = cache_bytes_for(max(0, tokens), num_layers, num_heads, head_dim, dtype, self.kv_storage)
        slots = cache_bytes_for(max(0, tokens) + chunk, num_layers, num_heads, head_dim, dtype, self.kv_storage)
        keep_all_frames = slots // (tokens_per_frame * kv_bytes_per_token(num_layers, num_heads, head_dim, dtype))
        warn = ""
        if tokens < chunk + self.sink_frames * tokens_per_frame:
            warn = " - TOO SMALL: below one chunk plus sink frames, the sampler will refuse it"
        return (f"{self.policy}{label}{storage}: {max(0, tokens)} tokens per layer ({max(0, tokens) / tokens_per_frame:.2f} "
                f"latent frames kept{f', {self.sink_frames} sink' if self.sink_frames else ''}); K/V held "
                f"{kv / 2**30:.2f} GiB, buffers {slots / 2**30:.2f} GiB at any video length - keep_all fills the "
                f"same memory after {keep_all_frames} latent frames{warn}")


def finite(name: str, value: float) -> float:
    """A node's float input, refused when NaN or infinite (widgets clamp ranges, not NaN)."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value
