"""What a user chooses about the cache (policy, budget, sinks, storage, positions), before any model is known.

The node pack passes one ``CacheSettings`` object between nodes (``PAFU_CACHE``); the sampler
turns it into a ``Policy`` and a ``CacheBudget`` once the model, the resolution and the head are
known, so every check that needs them happens there, with a readable message.

The defaults are Deep Forcing's recipe over the window Self-Forcing-class Wan models were trained with (21
latent frames): the head-free choice with published results on these models (arXiv 2512.05081), memory
still bounded at any length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .budget import REFERENCE_FRAMES, CacheBudget, cache_bytes_for, kv_bytes_per_token
from .kv_store import KV_STORAGE
from .policies import make_policy, policy_entry
from .policy import Policy, PolicyOptions
from .positions import POSITION_CHOICES, check_positions

#: the policy a user gets without choosing: it needs no head, so it runs on any model
DEFAULT_POLICY = "deep_forcing"


@dataclass(frozen=True)
class CacheSettings:
    policy: str = DEFAULT_POLICY
    budget: float = 1.0
    budget_unit: str = "fraction"          # "fraction" of reference_frames, "latent_frames", "tokens", "GiB"
    sink_frames: int = 0
    reference_frames: int = REFERENCE_FRAMES
    seed: int = 0                          # for the random control policy
    kv_storage: str = "model"              # "model" (the model's dtype) or "int8" (per-token-per-head scales)
    positions: str = "auto"                # the kept keys' temporal positions: "true", "realigned", or "auto"
                                           # (the policy's recipe: realigned for deep_forcing, else true)
    sink_share: float = 0.5                # deep_forcing: the share of the budget kept as sink frames
    query_frames: int = 1                  # participative, deep_forcing: newest frames whose queries score
    query_stride: int = 1                  # ... every query_stride-th of their tokens

    def __post_init__(self):
        policy_entry(self.policy)            # refuses an unknown name, listing the registered ones
        if self.kv_storage not in KV_STORAGE:
            raise ValueError(f"kv_storage must be one of {', '.join(KV_STORAGE)}, got {self.kv_storage!r}")
        if self.reference_frames < 1:
            raise ValueError(f"reference_frames must be >= 1, got {self.reference_frames}")
        check_positions(self.positions, POSITION_CHOICES)
        self._budget()               # the one check of the budget: unit, finite, positive, sinks
        self.options                 # the policy's options (sink share, query window)

    @property
    def options(self) -> PolicyOptions:
        return PolicyOptions(seed=self.seed, sink_share=self.sink_share, query_frames=self.query_frames,
                             query_stride=self.query_stride)

    @property
    def cache_positions(self) -> str:
        """What the cache does with positions: the choice, or the policy's recipe for "auto"."""
        return policy_entry(self.policy).cls.positions if self.positions == "auto" else self.positions

    def _budget(self) -> CacheBudget:
        return CacheBudget(self.budget, unit=self.budget_unit, sink_frames=self.sink_frames,
                           reference_frames=self.reference_frames)

    def cache_budget(self) -> CacheBudget | None:
        """The budget the cache enforces; none for an unbounded policy (still checked, so a bad value never hides)."""
        return self._budget() if policy_entry(self.policy).bounded else None

    def build_policy(self, head=None) -> Policy:
        return make_policy(self.policy, head=head, options=self.options)

    def budget_tokens(self, tokens_per_frame: int, *, chunk_tokens: int, bytes_per_token: int) -> int | None:
        budget = self.cache_budget()
        return None if budget is None else budget.tokens(tokens_per_frame, chunk_tokens=chunk_tokens,
                                                         bytes_per_token=bytes_per_token)

    def describe(self, tokens_per_frame: int, num_layers: int, num_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.bfloat16, chunk_frames: int = 3, label: str = "") -> str:
        """One paragraph: the budget in tokens and frames (sinks included), the memory it implies, and what
        keep-all would have reached in the same memory."""
        chunk = chunk_frames * tokens_per_frame
        per_token = kv_bytes_per_token(num_layers, num_heads, head_dim, dtype, self.kv_storage)
        storage = "" if self.kv_storage == "model" else f", {self.kv_storage} K/V"
        positions = ", positions realigned" if self.cache_positions == "realigned" else ""
        if not policy_entry(self.policy).bounded:
            per_frame = tokens_per_frame * per_token
            return (f"{self.policy}{label}{storage}: unbounded; the cache grows by {per_frame / 2**20:.1f} MiB per "
                    f"latent frame ({REFERENCE_FRAMES} frames: {REFERENCE_FRAMES * per_frame / 2**30:.2f} GiB)")
        tokens = max(0, self.budget_tokens(tokens_per_frame, chunk_tokens=chunk, bytes_per_token=per_token))
        sinks = self.sink_frames
        if not policy_entry(self.policy).needs_head:
            sinks = max(sinks, self.build_policy().sink_frames_for(tokens, tokens_per_frame, chunk))
        kv = cache_bytes_for(tokens, num_layers, num_heads, head_dim, dtype, self.kv_storage)
        slots = cache_bytes_for(tokens + chunk, num_layers, num_heads, head_dim, dtype, self.kv_storage)
        keep_all_frames = slots // (tokens_per_frame * kv_bytes_per_token(num_layers, num_heads, head_dim, dtype))
        warn = ""
        if tokens < chunk + sinks * tokens_per_frame:
            warn = " - TOO SMALL: below one chunk plus sink frames, the sampler will refuse it"
        return (f"{self.policy}{label}{storage}{positions}: {tokens} tokens per layer ({tokens / tokens_per_frame:.2f} "
                f"latent frames kept{f', {sinks} of them sink frames' if sinks else ''}); K/V held "
                f"{kv / 2**30:.2f} GiB, buffers {slots / 2**30:.2f} GiB at any video length - keep_all fills the "
                f"same memory after {keep_all_frames} latent frames{warn}")

