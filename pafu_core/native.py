"""The budgeted cache behind ComfyUI core's own autoregressive path (``CausalWanModel`` + ``ar_video``).

Core's causal Wan keeps one dict per layer, ``{"k", "v", "end"}``: each pass writes its block's roped
keys and values at ``k[:, end:end + s]`` and attends to ``k[:, :end + s]``; the sampler winds ``end``
back after every denoising pass and commits the block with a last pass at timestep 0. Its caches are
allocated for the whole video (``init_kv_caches(batch, frames * tokens_per_frame)``) and never evict.

``NativeKVCaches.layers()`` is a drop-in for that list of dicts (core may copy the list, so each
layer dict knows its owner). Each layer's ``"k"`` / ``"v"`` is a small proxy: writes go into the
staged slots of one ``KVCache`` (budget + one block, the same object our own sampler uses, 8-bit
storage included), reads return the slots attention needs. The model's
``forward_block`` is wrapped (``wrap_forward_block``) so that every pass is framed: a pass at
timestep 0 is the cache-writing pass, after which the policy scores the block and the cache evicts
down to its budget; the layers' ``end`` is set back to the cache's length before every pass. A
start latent written before any denoising (core's ``ARVideoI2V`` seeds the cache that way) is
protected like a sink. The salience head reads keys before RoPE through forward hooks on each
block's ``self_attn.norm_k`` that exist only during writing passes.

The protocol is checked, because a core that drifted from it would give a wrong video, not an error:
``check_native_protocol`` at patch time (methods, their signatures, core's own per-layer dict), and
the first pass of every run (each layer wrote and read through the stand-in, ``end`` moved as core's
attention moves it, with core's type). Both variants of ``end`` seen upstream are supported: an int
(0.27) and a one-element tensor read with ``.item()`` and set with ``fill_`` / ``-=``; reads may be
``.view``-ed or ``.reshape``-d and wrapped in any container, since they are plain tensors.

Positions: with ``positions = "realigned"`` the wrapper hands core's ``forward_block`` the cache's
``rope_frame`` as its start frame, so core ropes the block where the re-aligned numbering puts it, and the cache
rotates what it keeps (``positions.py``). A policy that reads queries (participative compression) gets them from
hooks on each block's ``self_attn.norm_q`` (queries before RoPE) and a pre-hook on ``self_attn`` (the RoPE
frequencies core passes it), roped with ComfyUI's own function that the node hands in (``rope``).

Pure PyTorch: the node pack installs these as object patches on ComfyUI's MODEL.
"""

from __future__ import annotations

import time

import torch

from .budget import CacheBudget, device_memory_limit
from .cache import CacheShape, KVCache, open_cache
from .native_protocol import NativeProtocolError, as_int, describe, end_kind, refusal
from .policy import Entering, Policy
from .positions import TemporalBand
from .report import CacheReport
from .timing import synchronize

class _Slots:
    """``cache["k"]`` / ``cache["v"]`` of one layer as core's attention uses them: ``[:, a:b]`` and nothing else."""

    def __init__(self, owner: "NativeKVCaches", layer: int, which: int):
        self.owner, self.layer, self.which = owner, layer, which

    def _span(self, index, verb: str) -> tuple[int, int]:
        if not (isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None)
                and isinstance(index[1], slice) and index[1].step is None and index[1].stop is not None):
            raise self.owner.refusal(f"layer {self.layer} {verb} its cache as [{index!r}] instead of [:, a:b]")
        return as_int(index[1].start or 0), as_int(index[1].stop)

    def __setitem__(self, index, value: torch.Tensor) -> None:       # cache["k"][:, end:new_end] = k
        self.owner._write(self.layer, self.which, *self._span(index, "wrote"), value)

    def __getitem__(self, index) -> torch.Tensor:                     # cache["k"][:, :new_end]
        return self.owner._read(self.layer, self.which, *self._span(index, "read"))


class LayerCache(dict):
    """One layer's ``{"k", "v", "end"}`` in core's protocol, knowing the budgeted cache it belongs to; ``end`` is a
    copy of core's own initial one (an int, or a tensor that core's attention and sampler update in place)."""

    def __init__(self, owner: "NativeKVCaches", layer: int, end=0):
        super().__init__(k=_Slots(owner, layer, 0), v=_Slots(owner, layer, 1),
                         end=end.clone() if isinstance(end, torch.Tensor) else end)
        self.owner = owner


def native_owner(kv_caches) -> "NativeKVCaches | None":
    """The budgeted cache behind core's list of layer caches (also if core copied our dicts), or None for core's own."""
    first = kv_caches[0] if kv_caches else None
    slots = first.get("k") if isinstance(first, dict) else None
    return slots.owner if isinstance(slots, _Slots) else None


def wrap_init_kv_caches(model, build):
    """``init_kv_caches`` returning ``build(batch, max_seq_len, device, dtype).layers(end)``, where ``end`` comes from
    core's own ``init_kv_caches`` at zero tokens on the run's device, so the stand-in's ``end`` is core's kind."""
    original = type(model).init_kv_caches.__get__(model, type(model))

    def init_kv_caches(batch_size, max_seq_len, device, dtype):
        end = original(batch_size, 0, device, dtype)[0]["end"]
        if end_kind(end) is None:
            raise refusal(f"a layer cache's 'end' is {describe(end)}", model)
        return build(batch_size, max_seq_len, device, dtype).layers(end)

    return init_kv_caches


class NativeKVCaches:
    """One budgeted cache for all layers; ``layers()`` is what ``init_kv_caches`` returns.

    References run one way (layer dicts -> this object, which holds core's list only during a pass), so
    the buffers are freed the moment core's loop drops its caches."""

    def __init__(self, *, policy: Policy, budget: CacheBudget | None, num_layers: int, batch: int,
                 num_heads: int, head_dim: int, max_seq_len: int, device, dtype: torch.dtype,
                 storage: str = "model", max_bytes: int | None = None, on_chunk=None, positions: str = "true",
                 band: TemporalBand | None = None, rope=None):
        """The policy was checked against core's path when the patch was applied (``check_native_policy``);
        ``rope(q, freqs)`` ropes captured queries (ComfyUI's ``apply_rope1``) for a policy that reads them."""
        if "queries" in policy.inputs and rope is None:
            raise ValueError(f"the {policy.name} policy reads queries: the patch needs the model's RoPE function")
        self._live = None                 # core's list of layer dicts during a pass, else None
        self.end_kind = int
        self._checked = False             # the first pass is checked against core's protocol
        self._wrote: set[int] = set()
        self._reads: set[tuple[int, int]] = set()
        self._model = None                # core's model, only for the version in messages
        self.policy, self.budget, self.storage, self.max_bytes = policy, budget, storage, max_bytes
        self.num_layers, self.batch, self.num_heads, self.head_dim = num_layers, batch, num_heads, head_dim
        self.max_seq_len, self.device, self.dtype = max_seq_len, torch.device(device), dtype
        self.cache: KVCache | None = None
        self.report: CacheReport | None = None
        self.on_chunk = on_chunk
        self._pending: dict[int, torch.Tensor] = {}
        self._read_views: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._raw_keys: dict[int, torch.Tensor] = {}
        self._raw_queries: dict[int, torch.Tensor] = {}
        self._freqs: dict[int, object] = {}
        self.positions, self.band, self.rope = positions, band, rope
        self._writing = False
        self._block_t0 = None

    def layers(self, end=0) -> list[LayerCache]:
        """Core's list of layer dicts; ``end`` is core's own initial one (int or tensor), copied per layer."""
        self.end_kind = end_kind(end)
        return [LayerCache(self, i, end) for i in range(self.num_layers)]

    def refusal(self, what: str) -> NativeProtocolError:
        return refusal(what, self._model)

    def _set_end(self, end: int) -> None:
        """Set ``end`` in the dicts core passes (they may be copies of ours) the way core does: assign an int, or
        ``fill_`` a tensor that core's attention reads with ``.item()``."""
        for layer in self._live:
            if isinstance(layer["end"], torch.Tensor):
                layer["end"].fill_(end)
            else:
                layer["end"] = end

    def _check_pass(self) -> None:
        """After the first pass: every layer wrote K and V and read both through the stand-in, and left ``end`` where
        core's attention moves it, with core's type; otherwise some layer attended to something else."""
        unwritten = sorted(set(range(self.num_layers)) - self._wrote)
        unread = sorted({(i, w) for i in range(self.num_layers) for w in (0, 1)} - self._reads)
        if unwritten:
            raise self.refusal(f"layer {unwritten[0]} never wrote its keys and values through the budgeted cache")
        if unread:
            raise self.refusal(f"layer {unread[0][0]} never read its {('keys', 'values')[unread[0][1]]} through the "
                               "budgeted cache")
        want = self.cache.length + self.cache.staged
        for i, layer in enumerate(self._live):
            end = layer.get("end")
            if end_kind(end) is not self.end_kind:
                raise self.refusal(f"layer {i}'s attention left 'end' as {describe(end)}, where core's "
                                   f"init_kv_caches made {'an int' if self.end_kind is int else 'a tensor'}")
            if as_int(end) != want:
                raise self.refusal(f"layer {i}'s attention left 'end' at {as_int(end)} after a pass of "
                                   f"{self.cache.staged} tokens from {self.cache.length}, not at {want}")
        self._checked = True

    # ---- framing passes (called by the wrapped forward_block) ------------------------------
    def begin_pass(self, start_frame: int, frames: int, tokens_per_frame: int, grid_hw, write: bool,
                   kv_caches, model=None) -> None:
        self._live = kv_caches
        self._model = model if model is not None else self._model
        self._wrote.clear()
        self._reads.clear()
        if self.cache is None:
            self._build(frames, tokens_per_frame, grid_hw, seeded_start=write)
        elif frames * tokens_per_frame > self.cache.chunk_tokens:
            self.cache.grow_chunk(frames)
        if self._block_t0 is None:
            self._block_t0 = time.perf_counter()
        self.cache.open_chunk(start_frame, frames, write=write)
        self._writing = write
        self._set_end(self.cache.length)

    def end_pass(self) -> None:
        if not self._checked:
            self._check_pass()
        self._read_views.clear()
        self._raw_keys.clear()
        self._raw_queries.clear()
        self._freqs.clear()
        if not self._writing:
            self._live = None
            return
        cache = self.cache
        frame_start = cache.frame_start
        frames = cache.staged // cache.tokens_per_frame
        cache.commit()
        self._set_end(cache.length)
        self._live = None
        synchronize(self.device)
        cache.take_nonfinite()
        stats = cache.chunk_stats(len(self.report.chunks), frame_start, frames,
                                  (time.perf_counter() - self._block_t0) * 1e3)
        self.report.chunks.append(stats)
        self._block_t0 = None
        if frame_start + frames >= self.report.total_frames:
            self.report.final_kept = cache.kept_token_mask().cpu()
        if self.on_chunk is not None:
            self.on_chunk(stats, self.report)

    def record_raw_keys(self, layer: int, keys: torch.Tensor) -> None:
        """Keys before RoPE of one layer in a writing pass ([B, S, heads * head_dim])."""
        self._raw_keys[layer] = keys

    def record_raw_queries(self, layer: int, queries: torch.Tensor) -> None:
        """Queries before RoPE of one layer in a writing pass ([B, S, heads * head_dim])."""
        self._raw_queries[layer] = queries

    def record_freqs(self, layer: int, freqs) -> None:
        """The RoPE frequencies core passes one layer's self-attention in a writing pass."""
        self._freqs[layer] = freqs

    @property
    def rope_frame(self) -> int:
        """The start frame core ropes the open pass at (``KVCache.rope_frame``)."""
        return self.cache.rope_frame

    @property
    def hooks_needed(self) -> tuple[bool, bool]:
        """Whether writing passes must capture (keys before RoPE, queries and RoPE frequencies)."""
        inputs = self.policy.inputs
        return "keys" in inputs, "queries" in inputs

    # ---- the dict protocol ---------------------------------------------------------------------
    def _build(self, frames: int, tokens_per_frame: int, grid_hw, seeded_start: bool) -> None:
        budget = self.budget
        if seeded_start and budget is not None:   # a start latent written before any denoising: a sink
            budget = budget.with_sinks(frames)
        total = -(-self.max_seq_len // tokens_per_frame)
        max_bytes = self.max_bytes if self.max_bytes is not None else device_memory_limit(self.device)
        shape = CacheShape(self.num_layers, self.num_heads, self.head_dim, self.dtype)
        self.cache, self.report = open_cache(shape, self.policy, budget, batch=self.batch,
                                             tokens_per_frame=tokens_per_frame, chunk_frames=frames,
                                             total_frames=total, device=self.device, storage=self.storage,
                                             max_bytes=max_bytes, grid_hw=grid_hw, positions=self.positions,
                                             band=self.band)

    def _write(self, layer: int, which: int, start: int, stop: int, value: torch.Tensor) -> None:
        if self._live is None:
            raise self.refusal(f"layer {layer} wrote its cache outside forward_block, which the patch frames")
        n, s = self.cache.length, self.cache.staged
        if (start, stop) != (n, n + s) or tuple(value.shape[1:]) != (s, self.num_heads, self.head_dim):
            raise self.refusal(f"layer {layer} wrote {describe(value)} at slots {start}:{stop}, where the budgeted "
                               f"cache stages [batch, {s}, {self.num_heads}, {self.head_dim}] at {n}:{n + s}")
        b = value.shape[0]
        if which == 0:
            self._pending[layer] = value
            return
        keys = self._pending.pop(layer, None)
        if keys is None:
            raise self.refusal(f"layer {layer} wrote its values before its keys")
        self._wrote.add(layer)
        self._read_views[layer] = self.cache.stage(layer, keys, value)
        if self._writing:
            self.cache.enter(layer, self._entering(layer, b, s, value))

    def _entering(self, layer: int, b: int, s: int, value: torch.Tensor) -> Entering:
        """What the policy reads of one layer's writing pass, from what the hooks captured."""
        wants_keys, wants_queries = self.hooks_needed
        keys = queries = None
        if wants_keys:
            raw = self._raw_keys.pop(layer, None)
            if raw is None:
                raise RuntimeError("the policy needs keys before RoPE, and none were recorded")
            keys = raw.view(b, s, self.num_heads, self.head_dim)
        if wants_queries:
            raw, freqs = self._raw_queries.pop(layer, None), self._freqs.pop(layer, None)
            if raw is None or freqs is None:
                raise self.refusal(f"layer {layer}'s self-attention computed no queries through self_attn.norm_q, or "
                                   "was not passed its RoPE frequencies, where this policy reads its queries")
            queries = self.rope(raw.view(b, s, self.num_heads, self.head_dim), freqs)
        return Entering(keys=keys, values=value, queries=queries, attended=self._read_views[layer][0])

    def _read(self, layer: int, which: int, start: int, stop: int) -> torch.Tensor:
        """The kept tokens and the staged block, ``[B, length + staged, heads, head_dim]`` with unit stride over
        ``heads x head_dim``, so core's ``.view(b, new_end, n * d)`` and ``.reshape(b, -1, n * d)`` both work; a read
        that does not start at slot 0 (a window) has no meaning once slots are not positions."""
        view = self._read_views.get(layer, (None, None))[which]
        if view is None or start != 0 or stop != view.shape[1]:
            held = f"0:{view.shape[1]}" if view is not None else "nothing yet"
            raise self.refusal(f"layer {layer} read slots {start}:{stop} where the budgeted cache holds {held}")
        self._reads.add((layer, which))
        return view


def wrap_forward_block(model, forward_block):
    """``forward_block`` of a CausalWanModel, framing each pass on a ``NativeKVCaches``. Other caches
    (core's own dicts) pass straight through. Core may pass arguments by keyword (its ``forward`` does), and
    later arguments (``clip_fea``, any newer one) go through untouched."""

    def wrapped(x, timestep, context, start_frame, kv_caches, crossattn_caches, *args, **kwargs):
        owner = native_owner(kv_caches)
        if owner is None:
            return forward_block(x, timestep, context, start_frame, kv_caches, crossattn_caches, *args, **kwargs)
        write = bool((timestep == 0).all())
        _, ph, pw = model.patch_size
        grid = (-(-x.shape[-2] // ph), -(-x.shape[-1] // pw))
        owner.begin_pass(int(start_frame), x.shape[2], grid[0] * grid[1], grid, write, kv_caches, model)
        hooks = []
        wants_keys, wants_queries = owner.hooks_needed
        for i, blk in enumerate(model.blocks if write else ()):
            if wants_keys:
                hooks.append(blk.self_attn.norm_k.register_forward_hook(
                    lambda mod, args, out, i=i: owner.record_raw_keys(i, out)))
            if wants_queries:
                hooks.append(blk.self_attn.norm_q.register_forward_hook(
                    lambda mod, args, out, i=i: owner.record_raw_queries(i, out)))
                hooks.append(blk.self_attn.register_forward_pre_hook(
                    lambda mod, args, kwargs, i=i: owner.record_freqs(i, args[1] if len(args) > 1 else
                                                                      kwargs.get("freqs")), with_kwargs=True))
        try:
            rope_start = start_frame if owner.rope_frame == int(start_frame) else owner.rope_frame
            out = forward_block(x, timestep, context, rope_start, kv_caches, crossattn_caches, *args, **kwargs)
        finally:
            for h in hooks:
                h.remove()
        owner.end_pass()
        return out

    return wrapped
