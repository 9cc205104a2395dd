"""A self-attention KV cache with a fixed token budget per layer: which token sits where, and which go.

Storage is the store's (``kv_store.py``: slots in the model's dtype or in 8 bits); this module owns the
budget, the commit and the eviction over it, the per-token metadata, and the positions the keys are roped
at (``positions.py``). Every path that runs a model drives the same public protocol: ``open_chunk`` a pass,
``stage`` each layer's K/V (and read what the queries attend to), ``enter`` what the policy reads during the
cache-writing pass, ``commit``; ``rope_frame`` is the temporal position the chunk is roped at.

Beside each slot: the token's position, its score, the policy's state channels; all move with the token.

Eviction after the cache-writing pass, batched over layers and batch, with no host sync: one top-k picks the
lowest-scored unprotected slots (one stable sort instead when the policy breaks ties by recency); the
surviving staged tokens are moved into the freed slots below the budget (one gather + one scatter); nothing
else moves. Keys are cached after RoPE, so attention does not care about slot order. Protected slots (the
newest chunk, sink frames) are excluded by position, never by score value, and a non-finite score counts as
the lowest salience.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .budget import CacheBudget, check_fits, kv_bytes_per_token
from .kv_store import grown, store_class
from .policy import Entering, Policy
from .positions import TemporalBand, check_positions, realigned_numbers
from .report import CacheReport, ChunkStats
from .timing import DeviceTimer
from .view import CacheView


@dataclass(frozen=True)
class CacheShape:
    """What a cache needs to know of the model it serves."""

    num_layers: int
    num_heads: int
    head_dim: int
    dtype: torch.dtype = torch.float32

    @classmethod
    def of(cls, model) -> "CacheShape":
        """From anything with ``num_layers``, ``num_heads``, ``head_dim`` (and ``dtype``): our runner, core's
        causal Wan."""
        return cls(model.num_layers, model.num_heads, model.head_dim, getattr(model, "dtype", torch.float32))


def open_cache(shape: CacheShape, policy: Policy, budget: CacheBudget | None, *, batch: int, tokens_per_frame: int,
               chunk_frames: int, total_frames: int, device: torch.device | str = "cpu", storage: str = "model",
               max_bytes: int | None = None, grid_hw: tuple[int, int] = (0, 0), positions: str = "true",
               band: TemporalBand | None = None) -> tuple["KVCache", CacheReport]:
    """The one way a generation opens its cache (the sampler, the core-AR patch, distillation, the teacher):
    the budget is resolved and checked once, here, and the report starts with what was allocated."""
    cache = KVCache(num_layers=shape.num_layers, batch=batch, num_heads=shape.num_heads, head_dim=shape.head_dim,
                    tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames, total_frames=total_frames,
                    policy=policy, budget=budget, device=device, dtype=shape.dtype, storage=storage,
                    max_bytes=max_bytes, positions=positions, band=band)
    report = CacheReport(policy=policy.describe(), budget_tokens=cache.budget_tokens, tokens_per_frame=tokens_per_frame,
                         num_layers=shape.num_layers, total_frames=total_frames, grid_hw=tuple(grid_hw),
                         sink_frames=cache.sink_frames, positions=positions)
    return cache, report


class KVCache:
    """Per-layer budgeted K/V slots for one generation; the model never sees the policy."""

    def __init__(self, *, num_layers: int, batch: int, num_heads: int, head_dim: int,
                 tokens_per_frame: int, chunk_frames: int, total_frames: int,
                 policy: Policy, budget: CacheBudget | None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, storage: str = "model",
                 max_bytes: int | None = None, positions: str = "true", band: TemporalBand | None = None):
        store = store_class(storage)
        self.policy, self.positions = policy, check_positions(positions)
        if positions == "realigned" and band is None:
            raise ValueError("positions = realigned needs the temporal band of the model's RoPE")
        self.band = band
        self.num_layers, self.batch = num_layers, batch
        self.num_heads, self.head_dim = num_heads, head_dim
        self.tokens_per_frame = tokens_per_frame
        self.chunk_tokens = chunk_frames * tokens_per_frame
        self.total_tokens = total_frames * tokens_per_frame
        self.bytes_per_token = kv_bytes_per_token(num_layers, num_heads, head_dim, dtype, storage)
        self.budget, self.max_bytes = budget, max_bytes
        self.budget_tokens = self.total_tokens
        self.sink_frames = budget.sink_frames if budget is not None else 0
        if policy.bounded:
            if budget is None:
                raise ValueError(f"policy {policy.name!r} needs a budget")
            self.budget_tokens = budget.tokens(tokens_per_frame, chunk_tokens=self.chunk_tokens,
                                               bytes_per_token=self.bytes_per_token * batch)
            self.sink_frames = max(self.sink_frames, policy.sink_frames_for(self.budget_tokens, tokens_per_frame,
                                                                                self.chunk_tokens))
        if policy.requires_sink and self.sink_frames < 1:
            raise ValueError(f"policy {policy.name!r} needs sink_frames >= 1")
        if policy.bounded:
            check_fits(self.budget_tokens, chunk_frames, tokens_per_frame, self.sink_frames)
        self.capacity = min(self.budget_tokens + self.chunk_tokens, self.total_tokens)
        self.device, self.dtype = torch.device(device), dtype
        self._check_memory(store)

        self.store = store(num_layers, batch, self.capacity, num_heads, head_dim, self.device, dtype)
        meta = (num_layers, batch, self.capacity)
        # global position of the token in each slot (frame * tokens_per_frame + index in frame)
        self.token_index = torch.full(meta, -1, device=self.device, dtype=torch.int32)
        # the temporal phase (a frame number) each slot's key is roped at, when positions are realigned
        self.phase = torch.zeros(meta, device=self.device, dtype=torch.int32) if positions == "realigned" else None
        self.scores = torch.zeros(meta, device=self.device, dtype=torch.float32)
        self.channels = tuple(policy.state_channels)
        self.state = (torch.zeros(*meta, len(self.channels), device=self.device, dtype=torch.float32)
                      if self.channels else None)
        self.cross_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self.length = 0             # committed tokens, the same in every layer
        self._staged = 0            # tokens of the chunk being generated
        self._frame_start = 0
        self._rope_frame = 0
        self._opened_frame = None   # the chunk whose positions were settled last
        self._window_checked = False
        self._writing = False
        self._positions = torch.arange(self.capacity, device=self.device)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._warned_nonfinite = False
        self.evicted_total = 0
        self.last_evicted = 0
        self.policy_timer = DeviceTimer(self.device)

    # ---- the public protocol (every path drives it) ------------------------------------------
    @property
    def staged(self) -> int:
        """Tokens of the chunk being generated (staged after the committed ones)."""
        return self._staged

    @property
    def frame_start(self) -> int:
        """The first latent frame of the chunk being generated."""
        return self._frame_start

    @property
    def rope_frame(self) -> int:
        """The temporal position the chunk being generated is roped at: ``frame_start``, or K when realigned."""
        return self._rope_frame

    @property
    def writing(self) -> bool:
        """Whether this pass is the cache-writing pass (then ``enter`` and ``commit``)."""
        return self._writing

    def open_chunk(self, frame_start: int, num_frames: int, write: bool = False) -> None:
        """Start a pass over a chunk; ``write`` marks the cache-writing pass (then ``commit``). The first pass
        over a chunk settles the kept keys' positions (``positions.py``)."""
        tokens = num_frames * self.tokens_per_frame
        if tokens > self.chunk_tokens:
            raise ValueError(f"chunk of {num_frames} frames exceeds the cache's chunk size")
        if self.length + tokens > self.capacity:
            raise RuntimeError("cache capacity exceeded: more frames than the cache was built for")
        if not write and not self._window_checked:     # the first denoising pass: a whole chunk
            self._window_checked = True
            if self.policy.query_frames > num_frames:
                raise ValueError(f"the query window of {self.policy.query_frames} latent frames is larger than a chunk "
                                 f"({num_frames} latent frames); set query_frames to at most {num_frames}")
        self._staged, self._frame_start, self._writing = tokens, frame_start, write
        if frame_start != self._opened_frame:
            self._opened_frame = frame_start
            self._rope_frame = self._realign() if self.phase is not None else frame_start
        if write and self.state is not None:     # staged slots may hold a moved-out token's state
            self.state[:, :, self.length:self.length + tokens] = 0

    def stage(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the current chunk's roped K and V [B, s, H, D] of one layer; return the keys and values
        [B, length + s, H, D] its queries attend to."""
        return self.store.stage(layer, self.length, k, v, commit=self._writing)

    def enter(self, layer: int, entering: Entering) -> None:
        """Cache-writing pass, one layer: the policy reads what it declared while it exists (nothing is kept for
        later) and its state channels take what it returns."""
        if not self.policy.inputs and not self.channels:
            return
        self.policy_timer.start()
        n, end = self.length, self.length + self._staged
        for name, values in self.policy.enter(layer, entering, CacheView(self, n, end)).items():
            lo = n if values.shape[-1] == end - n else 0
            self.state[layer, :, lo:end, self.channels.index(name)] = values.to(torch.float32)
        self.policy_timer.stop()

    def commit(self) -> None:
        """Make the staged chunk part of the cache, score it, and evict down to the budget."""
        self.policy_timer.start()
        try:
            self._commit()
        finally:
            self.policy_timer.stop()

    # ---- positions -----------------------------------------------------------------------------
    def _realign(self) -> int:
        """Renumber the kept frames (``positions.realigned_numbers``), rotate the keys whose number changed, and
        return the chunk's phase K (one host read)."""
        n = self.length
        if n == 0:
            return 0
        frames = (self.token_index[:, :, :n] // self.tokens_per_frame).long()
        number, count = realigned_numbers(frames, -(-self.total_tokens // self.tokens_per_frame))
        delta = number.int() - self.phase[:, :, :n]
        cos, sin = self.band.rotation(delta)                              # [L, B, n, pairs]
        moved = delta != 0
        for layer in range(self.num_layers):
            self.store.rotate_keys(layer, n, cos[layer], sin[layer], moved[layer])
        self.phase[:, :, :n] = number.int()
        return int(count)

    # ---- re-caching (a prompt change) ------------------------------------------------------
    def refresh(self, layer: int, k: torch.Tensor, v: torch.Tensor,
                frame_start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Re-caching, one layer of a written chunk run again (``recache.py``): the slots this layer keeps of
        that chunk take the new roped K and V; returns what the chunk's queries attend to (the kept tokens of
        earlier frames, already refreshed, and the whole chunk) and its mask [B, 1, 1, keys]. Positions,
        scores and policy state stay: the same tokens, recomputed."""
        n, s = self.length, k.shape[1]
        first = frame_start * self.tokens_per_frame
        index = self.token_index[layer, :, :n].long()                       # [B, n]
        inside = (index >= first) & (index < first + s)
        src = (index - first).clamp(0, s - 1)[..., None, None].expand(-1, -1, self.num_heads, self.head_dim)
        held_k, held_v = self.store.refresh(layer, n, inside, src, k, v)
        keys = torch.cat([held_k, k.to(held_k.dtype)], dim=1)
        values = torch.cat([held_v, v.to(held_v.dtype)], dim=1)
        mask = torch.cat([index < first, torch.ones(index.shape[0], s, dtype=torch.bool, device=index.device)], dim=1)
        return keys, values, mask[:, None, None, :]

    def held_chunks(self, chunk_starts: list[int]) -> list[int]:
        """The chunks (by their start frame, ``chunk_starts`` increasing) that hold a token any layer or batch
        row keeps: what re-caching must run again (one host read)."""
        frames = torch.unique(self.token_index[:, :, :self.length].long() // self.tokens_per_frame).tolist()
        starts = torch.tensor(chunk_starts)
        return sorted({chunk_starts[int(torch.searchsorted(starts, f, right=True)) - 1] for f in frames})

    # ---- commit + evict ------------------------------------------------------------------
    def _commit(self) -> None:
        n, s = self.length, self._staged
        end = n + s
        first = self._frame_start * self.tokens_per_frame
        self.token_index[:, :, n:end] = torch.arange(first, first + s, device=self.device, dtype=torch.int32)
        if self.phase is not None:
            offset = torch.arange(s, device=self.device, dtype=torch.int32) // self.tokens_per_frame
            self.phase[:, :, n:end] = self._rope_frame + offset
        scores = self.policy.score(CacheView(self, n, end)).to(torch.float32)
        self._nonfinite |= ~torch.isfinite(scores).all()     # read once per chunk, see take_nonfinite
        if self.policy.scores_on_entry:
            self.scores[:, :, n:end] = scores
        else:
            self.scores[:, :, :end] = scores
        self._staged, self._writing = 0, False
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

    def _lowest(self, key: torch.Tensor, excess: int, end: int) -> torch.Tensor:
        """[L, B, excess] slots of the lowest keys; with ``ties_by_recency`` equal keys go oldest first (slots
        ordered by position, then one stable sort by key)."""
        if not self.policy.ties_by_recency:
            return torch.topk(key, excess, dim=-1, largest=False, sorted=False).indices
        by_age = torch.argsort(self.token_index[:, :, :end], dim=-1, stable=True)
        order = torch.sort(key.gather(-1, by_age), dim=-1, stable=True).indices
        return by_age.gather(-1, order[..., :excess])

    def _evict(self, n: int, end: int, excess: int) -> None:
        scores = self.scores[:, :, :end]
        finite = torch.isfinite(scores)
        # non-finite = lowest salience; protected slots rank above every score, whatever it holds
        key = torch.where(finite, scores, float("-inf")).masked_fill_(self.protected_mask(n, end), float("inf"))
        evicted = self._lowest(key, excess, end)
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
        for buf in self._meta():
            flat = buf.view(self.num_layers * self.batch * self.capacity, -1)
            flat.index_copy_(0, meta_dst, flat.index_select(0, meta_src))
        self.store.move(src, dst)

    def _meta(self) -> list[torch.Tensor]:
        return [t for t in (self.token_index, self.phase, self.scores, self.state) if t is not None]

    # ---- sizes ---------------------------------------------------------------------------
    def _check_memory(self, store) -> None:
        """K/V slots, plus what the store reads through, against ``max_bytes``: refused before allocation."""
        need = self.capacity * self.bytes_per_token * self.batch + store.extra_bytes(
            self.capacity, self.batch, self.num_heads, self.head_dim, self.dtype)
        if self.max_bytes is not None and need > self.max_bytes:
            fit = self.max_bytes // (self.bytes_per_token * self.batch) - self.chunk_tokens
            advice = (f"a budget of at most {fit // self.tokens_per_frame} latent frames "
                      f"({fit} tokens per layer) fits" if fit >= self.chunk_tokens
                      else "not even one chunk fits; lower the resolution, the batch or chunk_frames")
            raise MemoryError(f"the {self.policy.name} cache needs {need / 2**30:.2f} GiB for this video "
                              f"({self.capacity} tokens per layer x {self.num_layers} layers, batch {self.batch}), "
                              f"more than the {self.max_bytes / 2**30:.2f} GiB available; {advice}")

    def grow_chunk(self, chunk_frames: int) -> None:
        """Make room for larger chunks than the cache was built for (ComfyUI's I2V path writes a
        one-frame start latent before its first block); committed tokens keep their slots."""
        tokens = chunk_frames * self.tokens_per_frame
        if tokens <= self.chunk_tokens:
            return
        if self.policy.bounded:
            # a budget in GiB covers the slots of one chunk too: it shrinks as the chunk grows
            self.budget_tokens = self.budget.tokens(self.tokens_per_frame, chunk_tokens=tokens,
                                                    bytes_per_token=self.bytes_per_token * self.batch)
            self.sink_frames = max(self.budget.sink_frames,
                                   self.policy.sink_frames_for(self.budget_tokens, self.tokens_per_frame, tokens))
            check_fits(self.budget_tokens, chunk_frames, self.tokens_per_frame, self.sink_frames, held=self.length)
        capacity = min(self.budget_tokens + tokens, self.total_tokens)
        self.store.grow(capacity)
        self.token_index = grown(self.token_index, 2, capacity, -1)
        self.phase = grown(self.phase, 2, capacity) if self.phase is not None else None
        self.scores = grown(self.scores, 2, capacity)
        self.state = grown(self.state, 2, capacity) if self.state is not None else None
        self._positions = torch.arange(capacity, device=self.device)
        self.capacity, self.chunk_tokens = capacity, tokens
        self._check_memory(type(self.store))

    # ---- reading -------------------------------------------------------------------------
    def chunk_stats(self, chunk: int, frame_start: int, frames: int, chunk_ms: float) -> ChunkStats:
        """The report's row for the chunk just committed (takes the policy's timer)."""
        return ChunkStats(chunk=chunk, frame_start=frame_start, frames=frames, tokens_per_layer=self.length,
                          kv_bytes=self.kv_bytes_held(), cache_bytes=self.nbytes(), chunk_ms=chunk_ms,
                          policy_ms=self.policy_timer.take_ms(), evicted=self.last_evicted,
                          rope_frame=self._rope_frame)

    def take_nonfinite(self) -> bool:
        """Whether a non-finite score was seen since the last call (one host read; call it where the
        loop synchronises anyway). Warns once per cache, naming the policy."""
        seen = bool(self._nonfinite)
        self._nonfinite.zero_()
        if seen and not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(f"cache policy {self.policy.describe()!r} produced non-finite scores (NaN or inf); "
                          "they count as the lowest salience (evicted first). Check the salience head file.",
                          RuntimeWarning, stacklevel=2)
        return seen

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
        owned = self.store.tensors() + self._meta() + [self._positions, self._nonfinite]
        owned += [t for pair in self.cross_kv if pair is not None for t in pair]
        return owned

    def nbytes(self) -> int:
        """Every byte the cache owns: K/V slots, metadata, cross-attention K/V."""
        return sum(t.numel() * t.element_size() for t in self.owned_tensors())

    def kv_bytes_held(self) -> int:
        """Bytes of self-attention K/V in committed slots (what the budget bounds)."""
        return self.length * self.batch * self.bytes_per_token

    def release(self) -> None:
        """Drop every buffer (after an interruption or at the end of a run)."""
        self.store.release()
        self.token_index = self.phase = self.scores = self.state = None
        self._positions = None
        self.cross_kv = [None] * self.num_layers
        self.length = 0

