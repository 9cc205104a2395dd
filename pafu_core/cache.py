"""A self-attention KV cache with a fixed token budget per layer, and its eviction mechanics.

Layout: one preallocated buffer ``kv`` [layers, 2 (K/V), batch, capacity, heads, head_dim] with
capacity = budget + one chunk. The committed tokens of every layer occupy slots ``[0, length)``;
the chunk being generated is staged at ``[length, length + chunk)`` so attention always reads a
contiguous prefix (the same convention as ComfyUI's native ``kv_caches``: ``k[:, :end]``).

Beside each slot the cache keeps the token's position, its eviction score and a few channels of
per-token state that the policy owns (``Policy.state_channels``: the salience head's entry score,
the accumulated attention mass, ...); all of them move with the token.

Eviction after the cache-writing pass, batched over layers and batch, with no host sync: one
top-k picks the lowest-scored unprotected slots; the surviving staged tokens are moved into the
freed slots below the budget (one gather + one scatter); nothing else moves. Keys are cached after
RoPE, so a kept token keeps its true position and attention does not care about slot order.
Protected slots (the newest chunk, sink frames) are excluded by position, never by score value,
and a non-finite score counts as the lowest salience.

Storage: the model's dtype, or ``int8`` with one scale per token and head; then each layer is
dequantised on its own into one reusable buffer when it is read (peak memory falls with the
cache, no full-precision copy of the cache ever exists), and the chunk being generated stays in
full precision until it is committed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from .policies import Policy
from .report import CacheReport, ChunkStats
from .timing import DeviceTimer

#: Self-Forcing's keep-all cache: 21 latent frames. Budget fractions are of this window.
REFERENCE_FRAMES = 21
#: the one vocabulary of budget units, from the node's combo to the eviction
BUDGET_UNITS = ("fraction", "latent_frames", "tokens", "GiB")
KV_STORAGE = ("model", "int8")


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")


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
        _check_finite("budget", self.value)
        if not self.value > 0:
            raise ValueError(f"budget must be positive, got {self.value}")
        if self.unit == "fraction" and self.value > 1:
            raise ValueError(f"budget fraction must be in (0, 1], got {self.value}")
        if self.sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {self.sink_frames}")

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
               max_bytes: int | None = None, grid_hw: tuple[int, int] = (0, 0)) -> tuple["KVCache", CacheReport]:
    """The one way a generation opens its cache (the sampler, the core-AR patch, distillation, the teacher):
    the budget is resolved and checked once, here, and the report starts with what was allocated."""
    cache = KVCache(num_layers=shape.num_layers, batch=batch, num_heads=shape.num_heads, head_dim=shape.head_dim,
                    tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames, total_frames=total_frames,
                    policy=policy, budget=budget, device=device, dtype=shape.dtype, storage=storage,
                    max_bytes=max_bytes)
    report = CacheReport(policy=policy.describe(), budget_tokens=cache.budget_tokens, tokens_per_frame=tokens_per_frame,
                         num_layers=shape.num_layers, total_frames=total_frames, grid_hw=tuple(grid_hw),
                         sink_frames=cache.sink_frames)
    return cache, report


class KVCache:
    """Per-layer budgeted K/V storage for one generation; the model never sees the policy."""

    def __init__(self, *, num_layers: int, batch: int, num_heads: int, head_dim: int,
                 tokens_per_frame: int, chunk_frames: int, total_frames: int,
                 policy: Policy, budget: CacheBudget | None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, storage: str = "model",
                 max_bytes: int | None = None):
        if storage not in KV_STORAGE:
            raise ValueError(f"kv storage must be one of {', '.join(KV_STORAGE)}, got {storage!r}")
        self.policy = policy
        self.num_layers, self.batch = num_layers, batch
        self.num_heads, self.head_dim = num_heads, head_dim
        self.tokens_per_frame = tokens_per_frame
        self.chunk_tokens = chunk_frames * tokens_per_frame
        self.total_tokens = total_frames * tokens_per_frame
        self.storage = storage
        self.sink_frames = budget.sink_frames if budget is not None else 0
        self.bytes_per_token = kv_bytes_per_token(num_layers, num_heads, head_dim, dtype, storage)
        if policy.requires_sink and self.sink_frames < 1:
            raise ValueError(f"policy {policy.name!r} needs sink_frames >= 1")
        if policy.bounded:
            if budget is None:
                raise ValueError(f"policy {policy.name!r} needs a budget")
            self.budget_tokens = budget.tokens(tokens_per_frame, chunk_tokens=self.chunk_tokens,
                                               bytes_per_token=self.bytes_per_token * batch)
            self._check_fits(chunk_frames)
        else:
            self.budget_tokens = self.total_tokens
        self.capacity = min(self.budget_tokens + self.chunk_tokens, self.total_tokens)
        self.device, self.dtype = torch.device(device), dtype
        self.budget, self.max_bytes = budget, max_bytes
        self._check_memory()

        store_dtype = torch.int8 if storage == "int8" else dtype
        self.kv = torch.zeros(num_layers, 2, batch, self.capacity, num_heads, head_dim,
                              device=self.device, dtype=store_dtype)
        self.kv_scale = self.scratch = None
        if storage == "int8":
            self.kv_scale = torch.zeros(num_layers, 2, batch, self.capacity, num_heads,
                                        device=self.device, dtype=torch.float16)
            # one layer in full precision: the dequantised committed tokens + the staged chunk
            self.scratch = torch.zeros(2, batch, self.capacity, num_heads, head_dim, device=self.device, dtype=dtype)
        meta = (num_layers, batch, self.capacity)
        # global position of the token in each slot (frame * tokens_per_frame + index in frame)
        self.token_index = torch.full(meta, -1, device=self.device, dtype=torch.int32)
        self.scores = torch.zeros(meta, device=self.device, dtype=torch.float32)
        self.channels = tuple(policy.state_channels)
        self.state = (torch.zeros(*meta, len(self.channels), device=self.device, dtype=torch.float32)
                      if self.channels else None)
        self.cross_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self.length = 0             # committed tokens, the same in every layer
        self._staged = 0            # tokens of the chunk being generated
        self._frame_start = 0
        self._writing = False
        self._positions = torch.arange(self.capacity, device=self.device)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._warned_nonfinite = False
        self.evicted_total = 0
        self.last_evicted = 0
        self.policy_timer = DeviceTimer(self.device)

    def _needed_bytes(self) -> int:
        """K/V slots, plus the full-precision layer buffer 8-bit storage reads through."""
        need = self.capacity * self.bytes_per_token * self.batch
        if self.storage == "int8":
            need += 2 * self.capacity * self.batch * self.num_heads * self.head_dim * \
                torch.empty((), dtype=self.dtype).element_size()
        return need

    def _check_memory(self) -> None:
        need = self._needed_bytes()
        if self.max_bytes is not None and need > self.max_bytes:
            raise MemoryError(self._too_big(need, self.max_bytes))

    def _too_big(self, need: int, limit: int) -> str:
        fit = limit // (self.bytes_per_token * self.batch) - self.chunk_tokens
        advice = (f"a budget of at most {fit // self.tokens_per_frame} latent frames "
                  f"({fit} tokens per layer) fits" if fit >= self.chunk_tokens
                  else "not even one chunk fits; lower the resolution, the batch or chunk_frames")
        return (f"the {self.policy.name} cache needs {need / 2**30:.2f} GiB for this video "
                f"({self.capacity} tokens per layer x {self.num_layers} layers, batch {self.batch}), more than "
                f"the {limit / 2**30:.2f} GiB available; {advice}")

    def _check_fits(self, chunk_frames: int, held: int = 0) -> None:
        """The one refusal of a budget that cannot hold a chunk (plus the sink frames, and the ``held``
        tokens already committed), in its own words."""
        tpf = self.tokens_per_frame
        chunk = chunk_frames * tpf
        needed = max(chunk + self.sink_frames * tpf, held)
        if self.budget_tokens < needed:
            raise ValueError(
                f"budget of {max(0, self.budget_tokens)} tokens per layer is smaller than one chunk "
                f"({chunk} tokens = {chunk_frames} frames x {tpf})"
                + (f" plus {self.sink_frames} sink frames" if self.sink_frames else "")
                + f"; raise the budget to at least {needed} tokens ({-(-needed // tpf)} latent frames)")

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
            self._check_fits(chunk_frames, held=self.length)
        capacity = min(self.budget_tokens + tokens, self.total_tokens)

        def grown(t: torch.Tensor | None, dim: int, fill=0):
            if t is None:
                return None
            shape = list(t.shape)
            shape[dim] = capacity
            out = torch.full(shape, fill, dtype=t.dtype, device=t.device)
            keep = min(capacity, self.capacity)
            out.narrow(dim, 0, keep).copy_(t.narrow(dim, 0, keep))
            return out

        self.kv, self.kv_scale = grown(self.kv, 3), grown(self.kv_scale, 3)
        self.scratch = grown(self.scratch, 2)
        self.token_index = grown(self.token_index, 2, -1)
        self.scores, self.state = grown(self.scores, 2), grown(self.state, 2)
        self._positions = torch.arange(capacity, device=self.device)
        self.capacity, self.chunk_tokens = capacity, tokens
        self._check_memory()

    # ---- used by the chunk forward -------------------------------------------------------
    def open_chunk(self, frame_start: int, num_frames: int, write: bool = False) -> None:
        """Start a pass over a chunk; ``write`` marks the cache-writing pass (then ``commit``)."""
        tokens = num_frames * self.tokens_per_frame
        if tokens > self.chunk_tokens:
            raise ValueError(f"chunk of {num_frames} frames exceeds the cache's chunk size")
        if self.length + tokens > self.capacity:
            raise RuntimeError("cache capacity exceeded: more frames than the cache was built for")
        self._staged, self._frame_start, self._writing = tokens, frame_start, write
        if write and self.state is not None:     # staged slots may hold a moved-out token's state
            self.state[:, :, self.length:self.length + tokens] = 0

    def stage(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the current chunk's roped K and V of one layer; return what its queries attend to."""
        n, end = self.length, self.length + self._staged
        if self.storage == "model":
            self.kv[layer, 0, :, n:end] = k
            self.kv[layer, 1, :, n:end] = v
            return self.kv[layer, 0, :, :end], self.kv[layer, 1, :, :end]
        if self._writing:                        # the committed chunk is stored in 8 bits
            self._quantize_into(layer, n, end, k, v)
        scratch = self.scratch
        scale = self.kv_scale[layer, :, :, :n, :, None].to(scratch.dtype)      # small: products in the model dtype
        torch.mul(self.kv[layer, :, :, :n], scale, out=scratch[:, :, :n])
        scratch[0, :, n:end] = k
        scratch[1, :, n:end] = v
        return scratch[0, :, :end], scratch[1, :, :end]

    def _quantize_into(self, layer: int, n: int, end: int, k: torch.Tensor, v: torch.Tensor) -> None:
        for i, x in enumerate((k, v)):
            # in fp32, then clamped to what fp16 holds: never a zero or infinite scale
            scale = x.abs().amax(dim=-1).float().div_(127.0).clamp_(6.2e-5, 65504.0).to(torch.float16)
            self.kv_scale[layer, i, :, n:end] = scale
            self.kv[layer, i, :, n:end] = (x.float() / scale[..., None].float()).round_().clamp_(-127, 127).to(torch.int8)

    def enter(self, layer: int, keys: torch.Tensor, values: torch.Tensor, hidden: torch.Tensor) -> None:
        """Cache-writing pass, one layer: the policy reads the entering tokens' features (keys
        before RoPE, values, the block's input) while they exist, so nothing is kept for later."""
        if not self.policy.entry_features:
            return
        self.policy_timer.start()
        n, end = self.length, self.length + self._staged
        entry = self.policy.entry_scores(layer, keys, values, hidden, self.tokens_per_frame)
        self.state[layer, :, n:end, self.channels.index("entry")] = entry.to(torch.float32)
        self.policy_timer.stop()

    def add_attention_mass(self, layer: int, mass: torch.Tensor) -> None:
        self.state[layer, :, :mass.shape[-1], self.channels.index("mass")] += mass

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
        if self.storage == "model":
            for i, x in enumerate((k, v)):
                slots = self.kv[layer, i, :, :n]
                slots.copy_(torch.where(inside[..., None, None], torch.gather(x, 1, src).to(slots.dtype), slots))
            held_k, held_v = self.kv[layer, 0, :, :n], self.kv[layer, 1, :, :n]
        else:
            old = self.kv[layer, :, :, :n].clone(), self.kv_scale[layer, :, :, :n].clone()
            self._quantize_into(layer, 0, n, torch.gather(k, 1, src), torch.gather(v, 1, src))
            keep = ~inside
            self.kv[layer, :, :, :n] = torch.where(keep[None, ..., None, None], old[0], self.kv[layer, :, :, :n])
            self.kv_scale[layer, :, :, :n] = torch.where(keep[None, ..., None], old[1], self.kv_scale[layer, :, :, :n])
            held = self.kv[layer, :, :, :n].to(k.dtype) * self.kv_scale[layer, :, :, :n, :, None].to(k.dtype)
            held_k, held_v = held[0], held[1]
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
    def commit(self) -> None:
        """Make the staged chunk part of the cache, score it, and evict down to the budget."""
        self.policy_timer.start()
        try:
            self._commit()
        finally:
            self.policy_timer.stop()

    def _commit(self) -> None:
        n, s = self.length, self._staged
        end = n + s
        first = self._frame_start * self.tokens_per_frame
        self.token_index[:, :, n:end] = torch.arange(first, first + s, device=self.device, dtype=torch.int32)
        view = CacheView(self, n, end)
        scores = self.policy.score(view).to(torch.float32)
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

    def _evict(self, n: int, end: int, excess: int) -> None:
        scores = self.scores[:, :, :end]
        finite = torch.isfinite(scores)
        # non-finite = lowest salience; protected slots rank above every score, whatever it holds
        key = torch.where(finite, scores, float("-inf")).masked_fill_(self.protected_mask(n, end), float("inf"))
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
        for buf in (self.token_index, self.scores, self.state):
            if buf is not None:
                flat = buf.view(self.num_layers * self.batch * self.capacity, -1)
                flat.index_copy_(0, meta_dst, flat.index_select(0, meta_src))
        kv_rows = (torch.arange(self.num_layers, device=self.device).view(-1, 1, 1, 1) * 2
                   + torch.arange(2, device=self.device).view(1, 2, 1, 1)) * self.batch \
            + torch.arange(self.batch, device=self.device).view(1, 1, -1, 1)
        kv_rows = kv_rows * self.capacity
        kv_src = (kv_rows + src.unsqueeze(1)).flatten()
        kv_dst = (kv_rows + dst.unsqueeze(1)).flatten()
        for buf, width in ((self.kv, self.num_heads * self.head_dim), (self.kv_scale, self.num_heads)):
            if buf is not None:
                flat = buf.view(-1, width)
                flat.index_copy_(0, kv_dst, flat.index_select(0, kv_src))

    def chunk_stats(self, chunk: int, frame_start: int, frames: int, chunk_ms: float) -> ChunkStats:
        """The report's row for the chunk just committed (takes the policy's timer)."""
        return ChunkStats(chunk=chunk, frame_start=frame_start, frames=frames, tokens_per_layer=self.length,
                          kv_bytes=self.kv_bytes_held(), cache_bytes=self.nbytes(), chunk_ms=chunk_ms,
                          policy_ms=self.policy_timer.take_ms(), evicted=self.last_evicted)

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
        owned = [self.kv, self.token_index, self.scores, self._positions, self._nonfinite]
        owned += [t for t in (self.kv_scale, self.scratch, self.state) if t is not None]
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
        self.kv = self.kv_scale = self.scratch = self.token_index = self.scores = self.state = None
        self._positions = None
        self.cross_kv = [None] * self.num_layers
        self.length = 0


class CacheView:
    """What a policy may read when it scores: positions, its own per-token state, the entering range."""

    def __init__(self, cache: KVCache, start: int, end: int):
        self.cache, self.start, self.end = cache, start, end

    @property
    def num_entering(self) -> int:
        return self.end - self.start

    @property
    def tokens_per_frame(self) -> int:
        return self.cache.tokens_per_frame

    @property
    def frame_index(self) -> torch.Tensor:
        """[layers, B, N] latent frame of every live token (the entering ones last)."""
        return self.cache.token_index[:, :, :self.end] // self.cache.tokens_per_frame

    @property
    def place(self) -> torch.Tensor:
        """[layers, B, N] position of every live token within its frame (row-major patch index)."""
        return self.cache.token_index[:, :, :self.end] % self.cache.tokens_per_frame

    @property
    def entering_frame_index(self) -> torch.Tensor:
        return self.cache.token_index[:, :, self.start:self.end] // self.cache.tokens_per_frame

    @property
    def newest_frame(self) -> int:
        return self.cache._frame_start + self.num_entering // self.cache.tokens_per_frame - 1

    def state(self, name: str) -> torch.Tensor:
        """[layers, B, N] the policy's own per-token channel ``name`` (a view: writes persist)."""
        return self.cache.state[:, :, :self.end, self.cache.channels.index(name)]

    def entering_state(self, name: str) -> torch.Tensor:
        return self.state(name)[:, :, self.start:]
