"""A self-attention KV cache with a fixed token budget per layer, and its eviction mechanics.

Layout: one preallocated buffer ``kv`` [layers, 2 (K/V), batch, capacity, heads, head_dim] with
capacity = budget + one chunk. The committed tokens of every layer occupy slots ``[0, length)``;
the chunk being generated is staged at ``[length, length + chunk)`` so attention always reads a
contiguous prefix (the same convention as ComfyUI's native ``kv_caches``: ``k[:, :end]``).

Eviction after the cache-writing pass, batched over layers and batch, with no host sync:
one top-k picks the lowest-scored unprotected slots; the surviving staged tokens are moved into
the freed slots below the budget (one gather + one scatter); nothing else moves. Keys are cached
after RoPE, so a kept token keeps its true position and attention does not care about slot order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .policies import Policy
from .timing import DeviceTimer

#: Self-Forcing's keep-all cache: 21 latent frames. Budget fractions are of this window.
REFERENCE_FRAMES = 21


@dataclass(frozen=True)
class CacheBudget:
    """How many tokens each layer may keep, stated as tokens, latent frames or a fraction.

    ``fraction`` is of ``reference_frames`` latent frames (Self-Forcing's 21-frame window for Wan,
    the training clip for the tiny world). ``sink_frames`` first frames are never evicted.
    """

    value: float
    unit: str = "frames"  # "tokens" | "frames" | "fraction"
    sink_frames: int = 0
    reference_frames: int = REFERENCE_FRAMES

    def __post_init__(self):
        if self.unit not in ("tokens", "frames", "fraction"):
            raise ValueError(f"budget unit must be 'tokens', 'frames' or 'fraction', got {self.unit!r}")
        if not self.value > 0:
            raise ValueError(f"budget must be positive, got {self.value}")
        if self.unit == "fraction" and self.value > 1:
            raise ValueError(f"budget fraction must be in (0, 1], got {self.value}")
        if self.sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {self.sink_frames}")

    def tokens(self, tokens_per_frame: int) -> int:
        if self.unit == "tokens":
            return int(self.value)
        if self.unit == "frames":
            return int(round(self.value * tokens_per_frame))
        return int(round(self.value * self.reference_frames * tokens_per_frame))


def cache_bytes_for(budget_tokens: int, num_layers: int, num_heads: int, head_dim: int,
                    dtype: torch.dtype) -> int:
    """Bytes of self-attention K/V that ``budget_tokens`` per layer hold (the nominal cache size)."""
    return budget_tokens * num_layers * 2 * num_heads * head_dim * torch.empty((), dtype=dtype).element_size()


class KVCache:
    """Per-layer budgeted K/V storage for one generation; the model never sees the policy."""

    def __init__(self, *, num_layers: int, batch: int, num_heads: int, head_dim: int,
                 tokens_per_frame: int, chunk_frames: int, total_frames: int,
                 policy: Policy, budget: CacheBudget | None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, hidden_dim: int | None = None):
        self.policy = policy
        self.num_layers, self.batch = num_layers, batch
        self.num_heads, self.head_dim = num_heads, head_dim
        self.tokens_per_frame = tokens_per_frame
        self.chunk_tokens = chunk_frames * tokens_per_frame
        self.total_tokens = total_frames * tokens_per_frame
        self.sink_frames = budget.sink_frames if budget is not None else 0
        if policy.requires_sink and self.sink_frames < 1:
            raise ValueError(f"policy {policy.name!r} needs sink_frames >= 1")
        if policy.bounded:
            if budget is None:
                raise ValueError(f"policy {policy.name!r} needs a budget")
            self.budget_tokens = budget.tokens(tokens_per_frame)
            needed = self.chunk_tokens + self.sink_frames * tokens_per_frame
            if self.budget_tokens < needed:
                raise ValueError(
                    f"budget of {self.budget_tokens} tokens per layer is smaller than one chunk "
                    f"({self.chunk_tokens} tokens = {chunk_frames} frames x {tokens_per_frame})"
                    + (f" plus {self.sink_frames} sink frames" if self.sink_frames else "")
                    + f"; raise the budget to at least {needed} tokens "
                      f"({-(-needed // tokens_per_frame)} latent frames)")
        else:
            self.budget_tokens = self.total_tokens
        self.capacity = min(self.budget_tokens + self.chunk_tokens, self.total_tokens)
        self.device, self.dtype = torch.device(device), dtype

        shape = (num_layers, 2, batch, self.capacity, num_heads, head_dim)
        self.kv = torch.zeros(shape, device=self.device, dtype=dtype)
        meta = (num_layers, batch, self.capacity)
        # global position of the token in each slot (frame * tokens_per_frame + index in frame)
        self.token_index = torch.full(meta, -1, device=self.device, dtype=torch.int32)
        self.scores = torch.zeros(meta, device=self.device, dtype=torch.float32)
        self.attention_mass = (torch.zeros(meta, device=self.device, dtype=torch.float32)
                               if policy.needs_attention_mass else None)
        self.hidden = None
        if "hidden" in policy.entry_features:
            if hidden_dim is None:
                raise ValueError(f"policy {policy.name!r} reads hidden states: give hidden_dim")
            self.hidden = torch.zeros(num_layers, batch, self.chunk_tokens, hidden_dim,
                                      device=self.device, dtype=dtype)
        self.cross_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self.length = 0             # committed tokens, the same in every layer
        self._staged = 0            # tokens of the chunk being generated
        self._frame_start = 0
        self._positions = torch.arange(self.capacity, device=self.device)
        self.evicted_total = 0
        self.last_evicted = 0
        self.policy_timer = DeviceTimer(self.device)

    # ---- used by the chunk forward -------------------------------------------------------
    def open_chunk(self, frame_start: int, num_frames: int) -> None:
        tokens = num_frames * self.tokens_per_frame
        if tokens > self.chunk_tokens:
            raise ValueError(f"chunk of {num_frames} frames exceeds the cache's chunk size")
        if self.length + tokens > self.capacity:
            raise RuntimeError("cache capacity exceeded: more frames than the cache was built for")
        self._staged, self._frame_start = tokens, frame_start
        if self.attention_mass is not None:   # staged slots may hold a moved-out token's mass
            self.attention_mass[:, :, self.length:self.length + tokens] = 0

    def stage(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the current chunk's roped K and V of one layer; return what its queries attend to."""
        end = self.length + self._staged
        self.kv[layer, 0, :, self.length:end] = k
        self.kv[layer, 1, :, self.length:end] = v
        return self.kv[layer, 0, :, :end], self.kv[layer, 1, :, :end]

    def record_hidden(self, layer: int, hidden: torch.Tensor) -> None:
        if self.hidden is not None:
            self.hidden[layer, :, :self._staged] = hidden

    def add_attention_mass(self, layer: int, mass: torch.Tensor) -> None:
        if self.attention_mass is not None:
            self.attention_mass[layer, :, :mass.shape[-1]] += mass

    # ---- commit + evict ------------------------------------------------------------------
    def commit(self, unrope: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Make the staged chunk part of the cache, score it, and evict down to the budget.

        ``unrope`` maps staged roped keys [..., S, H, D] back to keys before RoPE (what the
        salience head reads); policies that do not read keys never call it.
        """
        self.policy_timer.start()
        try:
            self._commit(unrope)
        finally:
            self.policy_timer.stop()

    def _commit(self, unrope) -> None:
        n, s = self.length, self._staged
        end = n + s
        first = self._frame_start * self.tokens_per_frame
        self.token_index[:, :, n:end] = torch.arange(first, first + s, device=self.device, dtype=torch.int32)
        view = CacheView(self, n, end, unrope)
        if self.policy.scores_on_entry:
            self.scores[:, :, n:end] = self.policy.score(view).to(torch.float32)
        else:
            self.scores[:, :, :end] = self.policy.score(view).to(torch.float32)
        self._staged = 0
        excess = end - self.budget_tokens
        self.last_evicted = max(0, excess)
        if excess <= 0:
            self.length = end
            return
        self._evict(n, end, excess)
        self.length = self.budget_tokens
        self.evicted_total += excess

    def protected_mask(self, n: int, end: int) -> torch.Tensor:
        """True for slots that are never evicted: the newest chunk and sink frames."""
        newest = (self._positions[:end] >= n).expand(self.num_layers, self.batch, end)
        return newest | (self.token_index[:, :, :end] < self.sink_frames * self.tokens_per_frame)

    def _evict(self, n: int, end: int, excess: int) -> None:
        key = self.scores[:, :, :end].masked_fill(self.protected_mask(n, end), float("inf"))
        evicted = torch.topk(key, excess, dim=-1, largest=False, sorted=False).indices
        holes_first = torch.sort(evicted, dim=-1).values           # slots < budget come first
        budget = self.budget_tokens
        # Which slots of the tail [budget, end) were evicted; survivors there fill the holes.
        tail_pos = torch.where(evicted >= budget, evicted - budget, torch.full_like(evicted, excess))
        tail_evicted = torch.zeros(self.num_layers, self.batch, excess + 1, dtype=torch.int8,
                                   device=self.device).scatter_(-1, tail_pos, 1)[..., :excess]
        survivors_first = budget + torch.argsort(tail_evicted, dim=-1, stable=True)
        # j-th hole gets the j-th surviving tail token; past the holes, both indices point at
        # evicted tail slots beyond the new end, so those copies are harmless no-ops.
        self._move(src=survivors_first, dst=holes_first)

    def _move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy slot ``src`` to slot ``dst`` per (layer, batch) row in every buffer at once."""
        rows = torch.arange(self.num_layers * self.batch, device=self.device).view(
            self.num_layers, self.batch, 1) * self.capacity
        meta_src, meta_dst = (rows + src).flatten(), (rows + dst).flatten()
        for buf in (self.token_index, self.scores, self.attention_mass):
            if buf is not None:
                flat = buf.view(-1)
                flat.index_copy_(0, meta_dst, flat.index_select(0, meta_src))
        kv_rows = (torch.arange(self.num_layers, device=self.device).view(-1, 1, 1, 1) * 2
                   + torch.arange(2, device=self.device).view(1, 2, 1, 1)) * self.batch \
            + torch.arange(self.batch, device=self.device).view(1, 1, -1, 1)
        kv_rows = kv_rows * self.capacity
        kv_src = (kv_rows + src.unsqueeze(1)).flatten()
        kv_dst = (kv_rows + dst.unsqueeze(1)).flatten()
        flat = self.kv.view(-1, self.num_heads * self.head_dim)
        flat.index_copy_(0, kv_dst, flat.index_select(0, kv_src))

    # ---- reading -------------------------------------------------------------------------
    @property
    def frame_index(self) -> torch.Tensor:
        """[layers, B, capacity] latent frame of the token in each slot (-1: never used)."""
        return torch.where(self.token_index >= 0, self.token_index // self.tokens_per_frame, -1)

    def kept_frame_counts(self, total_frames: int) -> torch.Tensor:
        """[layers, total_frames] how many tokens of each frame a layer keeps (batch 0)."""
        idx = self.token_index[:, 0, :self.length].long() // self.tokens_per_frame
        counts = torch.zeros(self.num_layers, total_frames, device=self.device, dtype=torch.int32)
        return counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.int32))

    def kept_token_mask(self) -> torch.Tensor:
        """[layers, total tokens] bool: which tokens of the video each layer holds now (batch 0)."""
        idx = self.token_index[:, 0, :self.length].long()
        mask = torch.zeros(self.num_layers, self.total_tokens, device=self.device, dtype=torch.bool)
        return mask.scatter_(1, idx, True)

    def owned_tensors(self) -> list[torch.Tensor]:
        owned = [self.kv, self.token_index, self.scores, self._positions]
        owned += [t for t in (self.attention_mass, self.hidden) if t is not None]
        owned += [t for pair in self.cross_kv if pair is not None for t in pair]
        return owned

    def nbytes(self) -> int:
        """Every byte the cache owns: K/V slots, metadata, cross-attention K/V."""
        return sum(t.numel() * t.element_size() for t in self.owned_tensors())

    def kv_bytes_held(self) -> int:
        """Bytes of self-attention K/V in committed slots (what the budget bounds)."""
        return cache_bytes_for(self.length * self.batch, self.num_layers, self.num_heads, self.head_dim, self.dtype)

    def release(self) -> None:
        """Drop every buffer (after an interruption or at the end of a run)."""
        self.kv = self.token_index = self.scores = self.attention_mass = self.hidden = None
        self._positions = None
        self.cross_kv = [None] * self.num_layers
        self.length = 0


class CacheView:
    """What a policy may read when it scores: the cache's tensors and the tokens entering it."""

    def __init__(self, cache: KVCache, start: int, end: int, unrope):
        self.cache, self.start, self.end = cache, start, end
        self._unrope = unrope

    @property
    def num_entering(self) -> int:
        return self.end - self.start

    @property
    def keys(self) -> torch.Tensor:
        """Roped keys of all live slots [layers, B, N, H, D]."""
        return self.cache.kv[:, 0, :, :self.end]

    @property
    def values(self) -> torch.Tensor:
        return self.cache.kv[:, 1, :, :self.end]

    @property
    def frame_index(self) -> torch.Tensor:
        return self.cache.token_index[:, :, :self.end] // self.cache.tokens_per_frame

    @property
    def attention_mass(self) -> torch.Tensor | None:
        m = self.cache.attention_mass
        return None if m is None else m[:, :, :self.end]

    @property
    def entering_frame_index(self) -> torch.Tensor:
        return self.cache.token_index[:, :, self.start:self.end] // self.cache.tokens_per_frame

    @property
    def entering_keys(self) -> torch.Tensor:
        """Keys of the entering tokens before RoPE [layers, B, S, H, D]."""
        roped = self.cache.kv[:, 0, :, self.start:self.end]
        if self._unrope is None:
            raise RuntimeError("this cache commit was given no way to undo RoPE")
        lyr, b = roped.shape[:2]
        return self._unrope(roped.flatten(0, 1)).unflatten(0, (lyr, b))

    @property
    def entering_values(self) -> torch.Tensor:
        return self.cache.kv[:, 1, :, self.start:self.end]

    @property
    def entering_hidden(self) -> torch.Tensor:
        if self.cache.hidden is None:
            raise RuntimeError("hidden states were not collected for this policy")
        return self.cache.hidden[:, :, :self.num_entering]
