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

Pure PyTorch: the node pack installs these as object patches on ComfyUI's MODEL.
"""

from __future__ import annotations

import dataclasses
import time
import weakref

import torch

from .cache import CacheBudget, KVCache
from .policies import Policy
from .report import CacheReport, ChunkStats
from .sampler import device_memory_limit
from .timing import synchronize


class _Slots:
    """``cache["k"]`` / ``cache["v"]`` of one layer as core's attention uses them."""

    def __init__(self, owner: "NativeKVCaches", layer: int, which: int):
        self.owner, self.layer, self.which = owner, layer, which

    def __setitem__(self, index, value: torch.Tensor) -> None:       # cache["k"][:, end:new_end] = k
        self.owner._write(self.layer, self.which, index[1], value)

    def __getitem__(self, index) -> torch.Tensor:                     # cache["k"][:, :new_end]
        return self.owner._read(self.layer, self.which, index[1])


class LayerCache(dict):
    """One layer's ``{"k", "v", "end"}`` in core's protocol, knowing the budgeted cache it belongs to."""

    def __init__(self, owner: "NativeKVCaches", layer: int):
        super().__init__(k=_Slots(owner, layer, 0), v=_Slots(owner, layer, 1), end=0)
        self.owner = owner


def native_owner(kv_caches) -> "NativeKVCaches | None":
    """The budgeted cache behind core's list of layer caches, or None for core's own dicts."""
    first = kv_caches[0] if kv_caches else None
    return first.owner if isinstance(first, LayerCache) else None


def check_native_policy(policy: Policy) -> None:
    """Core's attention exposes no attention weights, and its blocks no hidden states."""
    if policy.needs_attention_mass:
        raise ValueError(f"the {policy.name} policy needs attention weights, which core's AR attention does not "
                         "expose; choose another policy, or use the PaFu AR Chunk Sampler")
    if "hidden" in policy.entry_features:
        raise ValueError("this salience head reads hidden states, which core's AR path does not expose; use a head "
                         "trained on keys and values, or the PaFu AR Chunk Sampler")


class NativeKVCaches:
    """One budgeted cache for all layers; ``layers()`` is what ``init_kv_caches`` returns.

    References run one way (layer dicts -> this object, which keeps only weak references back), so
    the buffers are freed the moment core's loop drops its caches."""

    def __init__(self, *, policy: Policy, budget: CacheBudget | None, num_layers: int, batch: int,
                 num_heads: int, head_dim: int, max_seq_len: int, device, dtype: torch.dtype,
                 storage: str = "model", max_bytes: int | None = None, on_chunk=None):
        check_native_policy(policy)
        self._layer_refs: list = []
        self.policy, self.budget, self.storage, self.max_bytes = policy, budget, storage, max_bytes
        self.num_layers, self.batch, self.num_heads, self.head_dim = num_layers, batch, num_heads, head_dim
        self.max_seq_len, self.device, self.dtype = max_seq_len, torch.device(device), dtype
        self.cache: KVCache | None = None
        self.report: CacheReport | None = None
        self.on_chunk = on_chunk
        self._pending: dict[int, torch.Tensor] = {}
        self._read_views: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._raw_keys: dict[int, torch.Tensor] = {}
        self._writing = False
        self._block_t0 = None

    def layers(self) -> list[LayerCache]:
        layers = [LayerCache(self, i) for i in range(self.num_layers)]
        self._layer_refs = [weakref.ref(layer) for layer in layers]
        return layers

    def _set_end(self, end: int) -> None:
        for ref in self._layer_refs:
            layer = ref()
            if layer is not None:
                layer["end"] = end

    # ---- framing passes (called by the wrapped forward_block) ------------------------------
    def begin_pass(self, start_frame: int, frames: int, tokens_per_frame: int, grid_hw, write: bool) -> None:
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
        self._read_views.clear()
        self._raw_keys.clear()
        if not self._writing:
            return
        cache = self.cache
        frame_start = cache._frame_start
        frames = cache._staged // cache.tokens_per_frame
        cache.commit()
        self._set_end(cache.length)
        synchronize(self.device)
        cache.take_nonfinite()
        stats = ChunkStats(chunk=len(self.report.chunks), frame_start=frame_start, frames=frames,
                           tokens_per_layer=cache.length, kv_bytes=cache.kv_bytes_held(), cache_bytes=cache.nbytes(),
                           chunk_ms=(time.perf_counter() - self._block_t0) * 1e3,
                           policy_ms=cache.policy_timer.take_ms(), evicted=cache.last_evicted)
        self.report.chunks.append(stats)
        self._block_t0 = None
        if frame_start + frames >= self.report.total_frames:
            self.report.final_kept = cache.kept_token_mask().cpu()
        if self.on_chunk is not None:
            self.on_chunk(stats, self.report)

    def record_raw_keys(self, layer: int, keys: torch.Tensor) -> None:
        """Keys before RoPE of one layer in a writing pass ([B, S, heads * head_dim])."""
        self._raw_keys[layer] = keys

    # ---- the dict protocol ---------------------------------------------------------------------
    def _build(self, frames: int, tokens_per_frame: int, grid_hw, seeded_start: bool) -> None:
        budget = self.budget
        if seeded_start and budget is not None:   # a start latent written before any denoising: a sink
            budget = dataclasses.replace(budget, sink_frames=max(budget.sink_frames, frames))
        total = -(-self.max_seq_len // tokens_per_frame)
        max_bytes = self.max_bytes if self.max_bytes is not None else device_memory_limit(self.device)
        self.cache = KVCache(num_layers=self.num_layers, batch=self.batch, num_heads=self.num_heads,
                             head_dim=self.head_dim, tokens_per_frame=tokens_per_frame, chunk_frames=frames,
                             total_frames=total, policy=self.policy, budget=budget, device=self.device,
                             dtype=self.dtype, storage=self.storage, max_bytes=max_bytes)
        self.report = CacheReport(policy=self.policy.describe(), budget_tokens=self.cache.budget_tokens,
                                  tokens_per_frame=tokens_per_frame, num_layers=self.num_layers,
                                  total_frames=total, grid_hw=tuple(grid_hw), sink_frames=self.cache.sink_frames)

    def _write(self, layer: int, which: int, where: slice, value: torch.Tensor) -> None:
        if where.start != self.cache.length:
            raise RuntimeError(f"core wrote layer {layer} at slot {where.start}, but the budgeted cache stages at "
                               f"{self.cache.length}: this ComfyUI's AR loop is not the one the PaFu patch was built for")
        b, s = value.shape[:2]
        value = value.view(b, s, self.num_heads, self.head_dim)
        if which == 0:
            self._pending[layer] = value
            return
        keys = self._pending.pop(layer)
        self._read_views[layer] = self.cache.stage(layer, keys, value)
        if self._writing:
            raw = self._raw_keys.pop(layer, None)
            if raw is not None:
                raw = raw.view(b, s, self.num_heads, self.head_dim)
            if self.policy.entry_features and raw is None and "keys" in self.policy.entry_features:
                raise RuntimeError("the salience head needs keys before RoPE, and none were recorded")
            self.cache.enter(layer, raw, value, None)

    def _read(self, layer: int, which: int, where: slice) -> torch.Tensor:
        view = self._read_views[layer][which]
        if where.stop != view.shape[1]:
            raise RuntimeError(f"core read layer {layer} up to slot {where.stop}, the cache holds {view.shape[1]}")
        return view


def wrap_forward_block(model, forward_block):
    """``forward_block`` of a CausalWanModel, framing each pass on a ``NativeKVCaches``. Other caches
    (core's own dicts) pass straight through."""

    def wrapped(x, timestep, context, start_frame, kv_caches, crossattn_caches, clip_fea=None):
        owner = native_owner(kv_caches)
        if owner is None:
            return forward_block(x, timestep, context, start_frame, kv_caches, crossattn_caches, clip_fea)
        write = bool((timestep == 0).all())
        _, ph, pw = model.patch_size
        grid = (-(-x.shape[-2] // ph), -(-x.shape[-1] // pw))
        owner.begin_pass(int(start_frame), x.shape[2], grid[0] * grid[1], grid, write)
        hooks = []
        if write and "keys" in owner.policy.entry_features:
            hooks = [blk.self_attn.norm_k.register_forward_hook(
                lambda mod, args, out, i=i: owner.record_raw_keys(i, out)) for i, blk in enumerate(model.blocks)]
        try:
            out = forward_block(x, timestep, context, start_frame, kv_caches, crossattn_caches, clip_fea)
        finally:
            for h in hooks:
                h.remove()
        owner.end_pass()
        return out

    return wrapped
