"""What a cache policy is: the protocol every policy follows, what it may read, and the registry.

A policy only scores tokens (higher = keep); the cache (``cache.py``) owns the mechanics: it protects the
newest chunk and the sink frames, keeps the top-``budget`` scores and frees the rest. A policy either scores
tokens once, when they enter the cache (``scores_on_entry``; the score is stored with the token), or
re-scores every live token after each chunk. During the cache-writing pass it may read, layer by layer, the
inputs it declares in ``inputs`` (one place; ``INPUTS`` says what each is), and keep a few channels of
per-token state in the cache (``state_channels``), which move with the tokens. The paths that run a model
(the all-in-one sampler, core's AR path) each say which inputs they provide, and a policy that needs one a
path cannot provide is refused there once, before any work (``check_inputs``).

The registry (``register_policy``) is the one list of policies: node options, tooltips, help pages, the core
AR patch's checks and the benchmarks' lists all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

#: what a policy may read of one layer in the cache-writing pass (``Entering``)
INPUTS = {
    "keys": "the entering tokens' keys before RoPE",
    "values": "the entering tokens' values",
    "hidden": "the block's modulated input of the entering tokens",
    "queries": "the entering chunk's roped queries, with every key they attend to",
    "attention": "the attention mass each attended key receives",
}


@dataclass(frozen=True)
class Entering:
    """One layer's cache-writing pass as a policy sees it; a field the policy did not declare may be None.

    keys, values [B, S, H, D] (keys before RoPE); hidden [B, S, dim]; queries [B, S, H, D] roped; attended
    [B, N, H, D] every roped key those queries attend to (the kept tokens, then the entering chunk: N = the
    cache's live tokens); mass [B, N] fp32, the attention mass each of them received (sum over heads and
    queries)."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    attended: torch.Tensor | None = None
    mass: torch.Tensor | None = None


class Policy:
    """The protocol. Subclasses set the capabilities below and implement ``score`` (and ``enter`` when they
    read inputs); one object serves one generation (it may keep running statistics)."""

    name: str = "policy"
    #: False only for keep-all: the cache is then sized for the whole video and never evicts.
    bounded: bool = True
    scores_on_entry: bool = True
    #: sink+window makes no sense without sink frames; the cache refuses sink_frames=0 for it.
    requires_sink: bool = False
    #: what the policy reads in the cache-writing pass: a subset of ``INPUTS``
    inputs: frozenset[str] = frozenset()
    #: per-token channels the policy keeps in the cache (its own memory, moved with the tokens)
    state_channels: tuple[str, ...] = ()
    #: among equal scores the older token goes first (an exact tie-break, not a nudge of the scores)
    ties_by_recency: bool = False
    #: newest latent frames whose queries the policy reads (0: none; at most one chunk)
    query_frames: int = 0
    #: the positions its recipe uses when a user leaves ``positions`` on "auto" (``positions.py``)
    positions: str = "true"

    def sink_frames_for(self, budget_tokens: int, tokens_per_frame: int, chunk_tokens: int) -> int:
        """First frames the policy itself protects at this budget (beyond the budget's ``sink_frames``)."""
        return 0

    def check_model(self, runner) -> None:
        """Refuse, in one sentence, a model this policy cannot score (a learned head trained for another one)."""

    def enter(self, layer: int, entering: Entering, view) -> dict[str, torch.Tensor]:
        """One layer of the cache-writing pass -> new values of the policy's state channels: [B, S] for the
        entering tokens, or [B, N] for every live token (``view.end`` = N)."""
        return {}

    def score(self, view) -> torch.Tensor:
        """[layers, B, S] scores of the entering tokens (``scores_on_entry``) or [layers, B, N] of all live ones."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


def check_inputs(policy: Policy, provided: frozenset[str] | set[str], where: str, instead: str) -> None:
    """Refuse, in one sentence, a policy that reads an input the path ``where`` cannot provide."""
    missing = sorted(set(policy.inputs) - set(provided))
    if missing:
        what = "; ".join(f"{m} ({INPUTS.get(m, 'unknown input')})" for m in missing)
        raise ValueError(f"the {policy.describe()} policy reads {what}, which {where} does not provide; {instead}")


class SalienceScorer(Protocol):
    """What a learned salience head offers the cache (implemented in ``salience.py``)."""

    input_features: tuple[str, ...]
    rescores: bool

    def entry_scores(self, layer: int, keys, values, hidden) -> torch.Tensor:
        """One layer's entering tokens -> [B, S] entry salience."""
        ...

    def rescore(self, entry: torch.Tensor, newer: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        """[layers, ..., N] entry salience, the highest entry salience that reached the token's place
        since it entered, its age in frames -> [layers, ..., N] salience now."""
        ...

    def recency(self) -> float:
        """Fixed salience per latent frame of recency (saved in the head file; 0: none)."""
        ...


@dataclass(frozen=True)
class PolicyOptions:
    """What a user sets besides the policy's name, for the policies that read it (defaults: Deep Forcing's)."""

    seed: int = 0                  # the random control policy
    sink_share: float = 0.5        # deep_forcing: share of the budget kept as sink frames
    query_frames: int = 1          # participative, deep_forcing: newest latent frames whose queries score
    query_stride: int = 1          # ... every query_stride-th of their query tokens

    def __post_init__(self):
        if not (isinstance(self.sink_share, (int, float)) and 0 <= self.sink_share < 1):
            raise ValueError(f"sink_share must lie in [0, 1) (a share of the budget; 0.5 is Deep Forcing's deep "
                             f"sink), got {self.sink_share!r}")
        for what, value in (("query_frames", self.query_frames), ("query_stride", self.query_stride)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{what} must be a whole number >= 1, got {value!r}")
