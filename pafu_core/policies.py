"""The cache policies the pack ships, and the registry (the protocol they follow: ``policy.py``).

Each is a small class whose only job is to score tokens (higher = keep); every policy sees the same
tensors. The registry (``register_policy``) is the one list of policies: node options, tooltips, help pages,
the core-AR patch's checks and the benchmarks' lists all read it. Adding a policy is one class plus its
``register_policy`` line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .attention import attention_received
from .policy import Entering, Policy, PolicyOptions, SalienceScorer


class EntryScored(Policy):
    """A policy that scores each token once from what it reads as the token enters (the "entry" channel)."""

    state_channels = ("entry",)

    def entry_scores(self, layer: int, keys, values, hidden, tokens_per_frame: int) -> torch.Tensor:
        """One layer's entering tokens: keys [B, S, H, D] before RoPE, values [B, S, H, D], hidden
        [B, S, dim] (S = whole frames of ``tokens_per_frame``) -> [B, S]."""
        raise NotImplementedError

    def enter(self, layer: int, entering: Entering, view) -> dict[str, torch.Tensor]:
        return {"entry": self.entry_scores(layer, entering.keys, entering.values, entering.hidden,
                                           view.tokens_per_frame)}


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
    inputs = frozenset({"attention"})
    state_channels = ("mass",)

    def enter(self, layer, entering, view) -> dict[str, torch.Tensor]:
        return {"mass": view.state("mass")[layer] + entering.mass}

    def score(self, view) -> torch.Tensor:
        return view.state("mass")


class KeyNorm(EntryScored):
    """Keeps low-L2-norm keys (they tend to draw attention; Devoto et al. 2024)."""

    name = "key_norm"
    inputs = frozenset({"keys"})

    def entry_scores(self, layer, keys, values, hidden, tokens_per_frame) -> torch.Tensor:
        return -torch.linalg.vector_norm(keys.to(torch.float32), dim=-1).mean(dim=-1)

    def score(self, view) -> torch.Tensor:
        return view.entering_state("entry")


@dataclass
class Standout(EntryScored):
    """Training-free and content-aware: keeps the keys that stand out in their own frame, newest first.

    Each entering token scores by how far its key (pre-RoPE, after the key norm) lies from the mean key
    of its frame, averaged over heads and divided by the largest such spread the layer has produced so
    far in this generation (causal, so scores lie in [0, 1] and a chunk with nothing in it does not get
    a full scale of its own); a recency term adds ``recency`` for every budget window of frame index,
    so it means the same at any budget and clip length. It needs only keys: no head, no attention
    weights, so it runs on core's AR path too. One object serves one generation (it keeps the running
    maxima), which is how the settings build it."""

    #: salience per budget window of recency: chosen on the tiny world's tuning seed by
    #: benchmarks/sweep_standout.py (the value that no neighbour from half to twice it pushes off a cliff)
    recency: float = 0.1
    _largest: dict = field(default_factory=dict, repr=False)
    name = "standout"
    inputs = frozenset({"keys"})

    def __post_init__(self):
        if not (math.isfinite(self.recency) and self.recency >= 0):
            raise ValueError(f"standout recency must be a finite number >= 0, got {self.recency}")

    def entry_scores(self, layer, keys, values, hidden, tokens_per_frame) -> torch.Tensor:
        b, s, h, d = keys.shape
        frames = keys.to(torch.float32).view(b, s // tokens_per_frame, tokens_per_frame, h, d)
        spread = torch.linalg.vector_norm(frames - frames.mean(dim=2, keepdim=True), dim=-1).mean(dim=-1)
        spread = spread.flatten(1)                                                # [B, S]
        largest = spread.amax(dim=1, keepdim=True)
        if layer in self._largest:
            largest = torch.maximum(largest, self._largest[layer])
        self._largest[layer] = largest
        return spread / largest.clamp_min(1e-12)

    def score(self, view) -> torch.Tensor:
        window = max(1.0, view.budget_tokens / view.tokens_per_frame)
        frame = view.entering_frame_index.to(torch.float32)
        return view.entering_state("entry") + (self.recency / window) * frame


@dataclass
class RandomScores(Policy):
    """Control: uniform random scores from a seeded generator."""

    seed: int = 0
    name: str = "random"
    _generators: dict = field(default_factory=dict, repr=False)

    def score(self, view) -> torch.Tensor:
        device = view.device
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        shape = (view.num_layers, view.batch, view.num_entering)
        return torch.rand(shape, generator=gen, device=device)


def newer_at_place(view) -> torch.Tensor:
    """Update and return the "newer" channel: for every live token, the highest entry score of the
    tokens that entered at its place (same patch position) after it; -inf while none has.

    Incremental: the entering chunk raises the channel of older tokens at its places (one gather),
    and within the chunk a reverse running max over its frames."""
    entry, newer = view.state("entry"), view.state("newer")
    tpf, n = view.tokens_per_frame, view.start
    layers, b = entry.shape[:2]
    fresh = view.entering_state("entry").reshape(layers, b, -1, tpf)          # [L, B, frames, places]
    if n:
        best = fresh.amax(dim=2).gather(-1, view.place[:, :, :n].long())
        torch.maximum(newer[:, :, :n], best, out=newer[:, :, :n])
    later = fresh.flip(2).cummax(dim=2).values.flip(2)                         # max over frames >= f
    tail = torch.full_like(later[:, :, :1], float("-inf"))
    newer[:, :, n:] = torch.cat([later[:, :, 1:], tail], dim=2).flatten(2)
    return newer


def neutral_newer(newer: torch.Tensor, entry: torch.Tensor) -> torch.Tensor:
    """The re-scorer's "newer" input where nothing newer reached a token's place yet: its own entry salience
    (neutral), so inference and distillation feed the head the same thing."""
    return torch.where(torch.isfinite(newer), newer, entry)


class PaFuSalience(EntryScored):
    """PaFu-KV: a distilled per-layer salience head scores each token as it enters the cache; a
    re-scoring head then re-ranks every live token after each chunk from its entry salience, its age
    and the newest salience seen at its place, so a token that a newer view has replaced can go.

    Everything is the head's: its features, whether it re-scores, and any fixed recency term (salience
    units per latent frame, saved in the head file)."""

    name = "pafu"

    def __init__(self, head: SalienceScorer):
        self.head = head
        self.inputs = frozenset(head.input_features)
        self.scores_on_entry = not head.rescores
        self.state_channels = ("entry", "newer") if head.rescores else ("entry",)

    def check_model(self, runner) -> None:
        check = getattr(self.head, "check_backbone", None)    # a head file's; a scorer built in code has none
        if check is not None:
            check(runner)

    def entry_scores(self, layer, keys, values, hidden, tokens_per_frame) -> torch.Tensor:
        return self.head.entry_scores(layer, keys, values, hidden)

    def score(self, view) -> torch.Tensor:
        if not self.head.rescores:
            scores = view.entering_state("entry")
            recency = self.head.recency()
            return scores + recency * view.entering_frame_index.to(scores.dtype) if recency else scores
        newer = newer_at_place(view)
        entry = view.state("entry")
        newer = neutral_newer(newer, entry)
        age = (view.newest_frame - view.frame_index).to(torch.float32)
        scores = self.head.rescore(entry, newer, age)
        recency = self.head.recency()
        return scores - recency * age if recency else scores

    def describe(self) -> str:
        return "pafu (re-scoring)" if self.head.rescores else "pafu"


@dataclass
class Participative(Policy):
    """Deep Forcing's participative compression: after each chunk's cache-writing pass, every live token scores
    by the attention it receives from the queries of the newest ``query_frames`` latent frames (every
    ``query_stride``-th of their tokens): softmax over every key those queries attend to (the chunk's own keys
    included, as in the pass itself), averaged over heads and queries, tile by tile. Re-scored every chunk;
    among equal scores the older token goes first."""

    query_frames: int = 1
    query_stride: int = 1
    name = "participative"
    scores_on_entry = False
    inputs = frozenset({"queries"})
    state_channels = ("participation",)
    ties_by_recency = True

    def __post_init__(self):
        PolicyOptions(query_frames=self.query_frames, query_stride=self.query_stride)     # the one check

    def enter(self, layer, entering, view) -> dict[str, torch.Tensor]:
        window = min(entering.queries.shape[1], self.query_frames * view.tokens_per_frame)
        queries = entering.queries[:, -window:][:, ::self.query_stride]
        return {"participation": attention_received(queries, entering.attended)}

    def score(self, view) -> torch.Tensor:
        return view.state("participation")


@dataclass
class DeepForcing(Participative):
    """Deep Forcing (arXiv 2512.05081), training-free: a deep sink (the first frames of the video, ``sink_share``
    of the budget; 0.5 from the paper's ablation) and participative compression for the rest. Its third part,
    the temporal re-alignment of what is kept, is the cache's ``positions = "realigned"`` (``positions.py``)."""

    sink_share: float = 0.5
    name = "deep_forcing"
    positions = "realigned"

    def __post_init__(self):
        PolicyOptions(sink_share=self.sink_share, query_frames=self.query_frames, query_stride=self.query_stride)

    def sink_frames_for(self, budget_tokens: int, tokens_per_frame: int, chunk_tokens: int) -> int:
        """``sink_share`` of the budget in whole frames, at most what leaves room for the chunk being generated."""
        return max(0, min(int(self.sink_share * budget_tokens // tokens_per_frame),
                          (budget_tokens - chunk_tokens) // tokens_per_frame))


def _participative(head, options: PolicyOptions) -> Participative:
    return Participative(options.query_frames, options.query_stride)


def _deep_forcing(head, options: PolicyOptions) -> DeepForcing:
    return DeepForcing(options.query_frames, options.query_stride, options.sink_share)


@dataclass(frozen=True)
class PolicyEntry:
    """What the pack knows of a policy, declared once."""

    name: str
    help: str                                                  # one line, for tooltips and tables
    cls: type                                                  # its capabilities are the class's attributes
    build: Callable[[SalienceScorer | None, PolicyOptions], Policy]   # -> a policy for one generation
    needs_head: bool = False                                   # a learned salience head must be connected
    control: bool = False                                      # a reference or a floor, not a user's choice

    @property
    def inputs(self) -> frozenset[str]:
        return frozenset(self.cls.inputs)

    @property
    def bounded(self) -> bool:
        return self.cls.bounded

    @property
    def core_ar(self) -> bool:
        """Runs on core's AR path, which provides no attention weights (a head's inputs are checked with it)."""
        return "attention" not in self.inputs

    @property
    def training_free(self) -> bool:
        """A bounded policy that needs no head: what a learned head must beat."""
        return self.bounded and not self.needs_head


_REGISTRY: dict[str, PolicyEntry] = {}


def register_policy(name: str, help: str, cls: type, *, build: Callable | None = None, needs_head: bool = False,
                    control: bool = False) -> PolicyEntry:
    """Add a policy everywhere in one call; ``build(head, options)`` defaults to ``cls()``."""
    if not name.isidentifier():
        raise ValueError(f"a policy name must be an identifier, got {name!r}")
    entry = PolicyEntry(name, help, cls, build or (lambda head, options: cls()), needs_head=needs_head,
                        control=control)
    _REGISTRY[name] = entry
    return entry


def unregister_policy(name: str) -> None:
    """Take a policy out of every list again (a test's own policy)."""
    _REGISTRY.pop(name, None)


def policy_entries() -> list[PolicyEntry]:
    return list(_REGISTRY.values())


def policy_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def policy_entry(name: str) -> PolicyEntry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def make_policy(name: str, head: SalienceScorer | None = None, seed: int = 0,
                options: PolicyOptions | None = None) -> Policy:
    """Build a registered policy for one generation; refuses a policy that needs a head without one."""
    entry = policy_entry(name)
    if entry.needs_head and head is None:
        raise ValueError(f"the {name} policy needs a salience head: connect a PaFu Salience Head Loader "
                         f"(or load one with load_head)")
    return entry.build(head, options if options is not None else PolicyOptions(seed=seed))


def policy_help() -> str:
    """The registry as one paragraph (the budget node's tooltip)."""
    return " ".join(f"{e.name}: {e.help}" for e in policy_entries())


def policy_table() -> str:
    """The registry as a Markdown table (help page and README, kept in step by tools/policy_docs.py)."""
    rows = ["| policy | what it keeps | needs | core-AR patch |", "|---|---|---|---|"]
    for e in policy_entries():
        needs = ", ".join(n for n, on in (("a salience head", e.needs_head), ("attention weights", not e.core_ar),
                                           ("sink_frames >= 1", e.cls.requires_sink)) if on)
        rows.append(f"| `{e.name}` | {e.help} | {needs or '-'} | {'yes' if e.core_ar else 'no'} |")
    return "\n".join(rows)


register_policy("standout", "no head needed: keys that stand out in their frame, newest first; tuned on the tiny "
                "world, unmeasured on Wan", Standout)
register_policy("pafu", "the learned salience head (PaFu-KV) for your model", PaFuSalience,
                build=lambda head, options: PaFuSalience(head), needs_head=True)
register_policy("deep_forcing", "no head needed, Deep Forcing (the default): a deep sink (sink_share of the budget) "
                "plus the tokens the newest frame's queries attend to most; with positions = realigned; published "
                "on Self-Forcing Wan 2.1, unmeasured here on Wan", DeepForcing, build=_deep_forcing)
register_policy("participative", "the tokens the newest frame's queries attend to most (Deep Forcing's participative "
                "compression, without its sink)", Participative, build=_participative)
register_policy("fifo", "a sliding window: the newest frames", FifoWindow)
register_policy("sink_window", "the first frames (sinks) plus a window (StreamingLLM / LongLive)", SinkWindow)
register_policy("attention_mass", "tokens with the most attention received so far (H2O)", AttentionMass)
register_policy("key_norm", "keys of low L2 norm", KeyNorm)
register_policy("keep_all", "everything: no eviction, memory grows with the video (the reference)", KeepAll,
                control=True)
register_policy("random", "a seeded random choice (the floor)", RandomScores,
                build=lambda head, options: RandomScores(seed=options.seed), control=True)
