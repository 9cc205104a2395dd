"""Cache policies: each is a small class whose only job is to score tokens (higher = keep).

The cache (``cache.py``) owns the mechanics: it protects the newest chunk and sink frames, keeps
the top-``budget`` scores and frees the rest. A policy either scores tokens once, when they enter
the cache (``scores_on_entry``; the score is stored with the token), or rescores every live token
after each chunk (attention mass, which keeps accumulating). Every policy sees the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


class Policy:
    name: str = "policy"
    #: False only for keep-all: the cache is then sized for the whole video and never evicts.
    bounded: bool = True
    scores_on_entry: bool = True
    needs_attention_mass: bool = False
    #: sink+window makes no sense without sink frames; the cache refuses sink_frames=0 for it.
    requires_sink: bool = False
    #: what the entering tokens must expose: subset of {"keys", "values", "hidden"}
    entry_features: frozenset = frozenset()

    def score(self, view) -> torch.Tensor:
        """[layers, B, S] scores of the entering tokens (or [layers, B, N] of all live tokens)."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class KeepAll(Policy):
    """Unbounded reference: memory and time grow with the video."""

    name = "keep_all"
    bounded = False

    def score(self, view) -> torch.Tensor:
        return view.entering_frame_index.to(torch.float32)


class FifoWindow(Policy):
    """Sliding window: the oldest frames leave first."""

    name = "fifo"

    def score(self, view) -> torch.Tensor:
        return view.entering_frame_index.to(torch.float32)


class SinkWindow(FifoWindow):
    """StreamingLLM / LongLive style: the first frames stay as attention sinks, the rest is a window."""

    name = "sink_window"
    requires_sink = True


class AttentionMass(Policy):
    """H2O-style heavy hitters: attention mass each token has received from the clean chunks'
    queries (cache-writing passes), accumulated over the rollout; computed tile by tile."""

    name = "attention_mass"
    scores_on_entry = False
    needs_attention_mass = True

    def score(self, view) -> torch.Tensor:
        return view.attention_mass


class KeyNorm(Policy):
    """Keeps low-L2-norm keys (they tend to draw attention; Devoto et al. 2024). RoPE is a
    rotation, so the roped key's norm equals the raw one's."""

    name = "key_norm"

    def score(self, view) -> torch.Tensor:
        keys = view.keys[:, :, view.start:view.end].to(torch.float32)
        return -torch.linalg.vector_norm(keys, dim=-1).mean(dim=-1)


@dataclass
class RandomScores(Policy):
    """Control: uniform random scores from a seeded generator."""

    seed: int = 0
    name: str = "random"
    _generators: dict = field(default_factory=dict, repr=False)

    def score(self, view) -> torch.Tensor:
        device = view.cache.device
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        shape = (view.cache.num_layers, view.cache.batch, view.num_entering)
        return torch.rand(shape, generator=gen, device=device)


class SalienceScorer(Protocol):
    """What a learned salience head offers the cache (implemented in ``salience.py``)."""

    input_features: tuple[str, ...]

    def score_tokens(self, keys: torch.Tensor | None, values: torch.Tensor | None,
                     hidden: torch.Tensor | None) -> torch.Tensor:
        """keys/values [layers, B, S, H, D] (keys before RoPE), hidden [layers, B, S, dim]
        -> salience [layers, B, S]."""
        ...


class PaFuSalience(Policy):
    """PaFu-KV: a distilled per-layer salience head scores each token once, as it enters.

    ``recency`` (salience units per latent frame, default 0 = the paper's pure salience) adds the
    token's frame index to its score, so that among equally salient tokens the newer ones stay: a
    token older by 1/recency frames must be predicted 1 unit more salient to be kept instead.
    """

    name = "pafu"

    def __init__(self, head: SalienceScorer, recency: float = 0.0):
        if recency < 0:
            raise ValueError(f"recency must be >= 0, got {recency}")
        self.head = head
        self.recency = recency
        self.entry_features = frozenset(head.input_features)

    def score(self, view) -> torch.Tensor:
        feats = self.entry_features
        scores = self.head.score_tokens(
            view.entering_keys if "keys" in feats else None,
            view.entering_values if "values" in feats else None,
            view.entering_hidden if "hidden" in feats else None)
        if self.recency:
            scores = scores + self.recency * view.entering_frame_index.to(scores.dtype)
        return scores

    def describe(self) -> str:
        return f"pafu+recency {self.recency:.3g}" if self.recency else "pafu"


POLICY_NAMES = ("keep_all", "fifo", "sink_window", "attention_mass", "key_norm", "random", "pafu")


def make_policy(name: str, head: SalienceScorer | None = None, seed: int = 0, recency: float = 0.0) -> Policy:
    """Build a policy by name; ``pafu`` needs a salience head (``recency``: see PaFuSalience)."""
    simple = {"keep_all": KeepAll, "fifo": FifoWindow, "sink_window": SinkWindow,
              "attention_mass": AttentionMass, "key_norm": KeyNorm}
    if name in simple:
        return simple[name]()
    if name == "random":
        return RandomScores(seed=seed)
    if name == "pafu":
        if head is None:
            raise ValueError("policy 'pafu' needs a salience head (load one with load_head)")
        return PaFuSalience(head, recency=recency)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
