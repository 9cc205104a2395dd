"""What a user chooses about the cache (policy, budget, sinks), before any model is known.

The node pack passes one ``CacheSettings`` object between nodes (``PAFU_CACHE``); the sampler
turns it into a ``Policy`` and a ``CacheBudget`` once the model, the resolution and the head are
known, so every check that needs them happens there, with a readable message.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cache import REFERENCE_FRAMES, CacheBudget, cache_bytes_for
from .policies import POLICY_NAMES, Policy, make_policy

BUDGET_UNITS = {"fraction": "fraction", "latent_frames": "frames", "tokens": "tokens"}


@dataclass(frozen=True)
class CacheSettings:
    policy: str = "pafu"
    budget: float = 0.25
    budget_unit: str = "fraction"          # "fraction" of reference_frames, "latent_frames", "tokens"
    sink_frames: int = 0
    reference_frames: int = REFERENCE_FRAMES
    seed: int = 0                          # for the random control policy
    recency: float = 0.0                   # pafu only: salience units added per latent frame of recency

    def __post_init__(self):
        if self.policy not in POLICY_NAMES:
            raise ValueError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICY_NAMES)}")
        if self.budget_unit not in BUDGET_UNITS:
            raise ValueError(f"budget_unit must be one of {', '.join(BUDGET_UNITS)}, got {self.budget_unit!r}")
        if self.recency < 0:
            raise ValueError(f"recency must be >= 0, got {self.recency}")
        if self.reference_frames < 1:
            raise ValueError(f"reference_frames must be >= 1, got {self.reference_frames}")
        self.cache_budget()          # validates value and sinks

    def cache_budget(self) -> CacheBudget | None:
        if self.policy == "keep_all":
            return None
        return CacheBudget(self.budget, unit=BUDGET_UNITS[self.budget_unit], sink_frames=self.sink_frames,
                           reference_frames=self.reference_frames)

    def build_policy(self, head=None) -> Policy:
        return make_policy(self.policy, head=head, seed=self.seed, recency=self.recency)

    def budget_tokens(self, tokens_per_frame: int) -> int | None:
        budget = self.cache_budget()
        return None if budget is None else budget.tokens(tokens_per_frame)

    def describe(self, tokens_per_frame: int, num_layers: int, num_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.bfloat16, chunk_frames: int = 3, label: str = "") -> str:
        """One paragraph: the budget in tokens and frames, and the cache memory it implies."""
        chunk = chunk_frames * tokens_per_frame
        if self.policy == "keep_all":
            per_frame = cache_bytes_for(tokens_per_frame, num_layers, num_heads, head_dim, dtype)
            return (f"keep_all{label}: unbounded; the cache grows by {per_frame / 2**20:.1f} MiB per latent frame "
                    f"({REFERENCE_FRAMES} frames: {REFERENCE_FRAMES * per_frame / 2**30:.2f} GiB)")
        tokens = self.budget_tokens(tokens_per_frame)
        kv = cache_bytes_for(tokens, num_layers, num_heads, head_dim, dtype)
        slots = cache_bytes_for(tokens + chunk, num_layers, num_heads, head_dim, dtype)
        warn = ""
        if tokens < chunk + self.sink_frames * tokens_per_frame:
            warn = " - TOO SMALL: below one chunk plus sink frames, the sampler will refuse it"
        return (f"{self.policy}{label}: {tokens} tokens per layer ({tokens / tokens_per_frame:.2f} latent frames"
                f"{f', {self.sink_frames} sink' if self.sink_frames else ''}); K/V held "
                f"{kv / 2**30:.2f} GiB, buffers {slots / 2**30:.2f} GiB at any video length{warn}")
