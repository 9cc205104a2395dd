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

Pure PyTorch: the node pack installs these as object patches on ComfyUI's MODEL.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import time
from pathlib import Path

import torch

from .cache import CacheBudget, CacheShape, KVCache, open_cache
from .policies import Policy, policy_entries
from .report import CacheReport
from .sampler import device_memory_limit
from .timing import synchronize


FORWARD_BLOCK_ARGS = ("x", "timestep", "context", "start_frame", "kv_caches", "crossattn_caches")
INIT_KV_CACHES_ARGS = ("batch_size", "max_seq_len", "device", "dtype")
LAYER_KEYS = ("end", "k", "v")


class NativeProtocolError(ValueError):
    """Core's causal Wan differs from the protocol the patch stands in for: one sentence instead of a wrong video."""


def comfyui_version(model=None) -> str:
    """``ComfyUI 0.27.0`` for messages: core's ``comfyui_version`` module (main.py imports it), else the
    ``comfyui_version.py`` beside the package the model's class comes from (read as text, never imported)."""
    version = getattr(sys.modules.get("comfyui_version"), "__version__", None)
    if version is None and model is not None:
        package = sys.modules.get(type(model).__module__.partition(".")[0])
        file = getattr(package, "__file__", None)          # None for a namespace package such as comfy
        dirs = [Path(file).parent] if file else [Path(d) for d in getattr(package, "__path__", [])]
        paths = [d.parent / "comfyui_version.py" for d in dirs if (d.parent / "comfyui_version.py").is_file()]
        found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", paths[0].read_text(errors="replace")) if paths else None
        version = found.group(1) if found else None
    return f"ComfyUI {version}" if version else "this ComfyUI (version unknown)"


def refusal(what: str, model=None) -> NativeProtocolError:
    return NativeProtocolError(f"the PaFu KV Cache Patch does not fit the causal Wan of {comfyui_version(model)}: "
                               f"{what}; use the PaFu AR Chunk Sampler instead.")


def _end_kind(end):
    """The type of core's ``end``: ``int`` (0.27) or ``torch.Tensor`` (one integer element, ``.item()`` / ``fill_``)."""
    if type(end) is int:
        return int
    if isinstance(end, torch.Tensor) and end.numel() == 1 and not end.is_floating_point() and not end.is_complex() \
            and end.dtype != torch.bool:
        return torch.Tensor
    return None


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {str(x.dtype).replace('torch.', '')} tensor of shape {list(x.shape)}"
    return f"{'an' if type(x).__name__[0] in 'aeiou' else 'a'} {type(x).__name__}"


def _as_int(x) -> int:
    return int(x.item()) if isinstance(x, torch.Tensor) else int(x)


class _Slots:
    """``cache["k"]`` / ``cache["v"]`` of one layer as core's attention uses them: ``[:, a:b]`` and nothing else."""

    def __init__(self, owner: "NativeKVCaches", layer: int, which: int):
        self.owner, self.layer, self.which = owner, layer, which

    def _span(self, index, verb: str) -> tuple[int, int]:
        if not (isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None)
                and isinstance(index[1], slice) and index[1].step is None and index[1].stop is not None):
            raise self.owner.refusal(f"layer {self.layer} {verb} its cache as [{index!r}] instead of [:, a:b]")
        return _as_int(index[1].start or 0), _as_int(index[1].stop)

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


def check_native_protocol(model, *, needs_keys: bool = False):
    """Refuse, at patch time, a causal Wan whose protocol differs from what the patch wraps and calls: the methods and
    their argument names (core passes them by keyword), the attributes the pass framing reads, and the per-layer dict
    of core's own ``init_kv_caches`` (probed with zero tokens). Returns core's initial ``end``."""
    def bound(name: str, expected: tuple[str, ...]):
        fn = getattr(type(model), name, None)
        if not callable(fn):
            raise refusal(f"its {type(model).__name__} has no {name} method", model)
        fn = fn.__get__(model, type(model))
        try:
            names = tuple(inspect.signature(fn).parameters)[:len(expected)]
        except (TypeError, ValueError):
            names = ()
        if names != expected:
            raise refusal(f"{name} takes ({', '.join(names)}) where the patch expects ({', '.join(expected)})", model)
        return fn

    init = bound("init_kv_caches", INIT_KV_CACHES_ARGS)
    bound("forward_block", FORWARD_BLOCK_ARGS)
    missing = [a for a in ("blocks", "patch_size", "num_layers", "num_heads", "head_dim") if not hasattr(model, a)]
    if missing:
        raise refusal(f"its {type(model).__name__} has no {', '.join(missing)}", model)
    if len(model.blocks) != model.num_layers or len(model.patch_size) != 3:
        raise refusal(f"it has {len(model.blocks)} blocks for num_layers {model.num_layers} and patch size "
                      f"{tuple(model.patch_size)}", model)
    if needs_keys and not all(isinstance(getattr(getattr(b, "self_attn", None), "norm_k", None), torch.nn.Module)
                              for b in model.blocks):
        raise refusal("its blocks have no self_attn.norm_k, where this salience head reads keys before RoPE", model)
    caches = init(1, 0, "cpu", torch.float32)
    if not isinstance(caches, list) or len(caches) != model.num_layers:
        raise refusal(f"init_kv_caches returns {_describe(caches)}, not a list of {model.num_layers} dicts", model)
    shape = [1, 0, model.num_heads, model.head_dim]
    for layer in caches:
        if not isinstance(layer, dict) or tuple(sorted(layer)) != LAYER_KEYS:
            keys = sorted(layer) if isinstance(layer, dict) else _describe(layer)
            raise refusal(f"a layer cache holds {keys} instead of {list(LAYER_KEYS)}", model)
        for name in ("k", "v"):
            if not isinstance(layer[name], torch.Tensor) or list(layer[name].shape) != shape:
                raise refusal(f"a layer cache's {name!r} is {_describe(layer[name])}, not [batch, tokens, heads, "
                              f"head_dim] = {shape}", model)
        if _end_kind(layer["end"]) is None:
            raise refusal(f"a layer cache's 'end' is {_describe(layer['end'])}, where the patch knows an int or a "
                          "one-element integer tensor", model)
    return caches[0]["end"]


def wrap_init_kv_caches(model, build):
    """``init_kv_caches`` returning ``build(batch, max_seq_len, device, dtype).layers(end)``, where ``end`` comes from
    core's own ``init_kv_caches`` at zero tokens on the run's device, so the stand-in's ``end`` is core's kind."""
    original = type(model).init_kv_caches.__get__(model, type(model))

    def init_kv_caches(batch_size, max_seq_len, device, dtype):
        end = original(batch_size, 0, device, dtype)[0]["end"]
        if _end_kind(end) is None:
            raise refusal(f"a layer cache's 'end' is {_describe(end)}", model)
        return build(batch_size, max_seq_len, device, dtype).layers(end)

    return init_kv_caches


def core_ar_policy_names() -> tuple[str, ...]:
    """The registered policies that core's AR path can run (no attention weights there)."""
    return tuple(e.name for e in policy_entries() if e.core_ar)


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

    References run one way (layer dicts -> this object, which holds core's list only during a pass), so
    the buffers are freed the moment core's loop drops its caches."""

    def __init__(self, *, policy: Policy, budget: CacheBudget | None, num_layers: int, batch: int,
                 num_heads: int, head_dim: int, max_seq_len: int, device, dtype: torch.dtype,
                 storage: str = "model", max_bytes: int | None = None, on_chunk=None):
        check_native_policy(policy)
        self._live = None                 # core's list of layer dicts during a pass, else None
        self._end_kind = int
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
        self._writing = False
        self._block_t0 = None

    def layers(self, end=0) -> list[LayerCache]:
        """Core's list of layer dicts; ``end`` is core's own initial one (int or tensor), copied per layer."""
        self._end_kind = _end_kind(end)
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
        want = self.cache.length + self.cache._staged
        for i, layer in enumerate(self._live):
            end = layer.get("end")
            if _end_kind(end) is not self._end_kind:
                raise self.refusal(f"layer {i}'s attention left 'end' as {_describe(end)}, where core's "
                                   f"init_kv_caches made {'an int' if self._end_kind is int else 'a tensor'}")
            if _as_int(end) != want:
                raise self.refusal(f"layer {i}'s attention left 'end' at {_as_int(end)} after a pass of "
                                   f"{self.cache._staged} tokens from {self.cache.length}, not at {want}")
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
        if not self._writing:
            self._live = None
            return
        cache = self.cache
        frame_start = cache._frame_start
        frames = cache._staged // cache.tokens_per_frame
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

    # ---- the dict protocol ---------------------------------------------------------------------
    def _build(self, frames: int, tokens_per_frame: int, grid_hw, seeded_start: bool) -> None:
        budget = self.budget
        if seeded_start and budget is not None:   # a start latent written before any denoising: a sink
            budget = dataclasses.replace(budget, sink_frames=max(budget.sink_frames, frames))
        total = -(-self.max_seq_len // tokens_per_frame)
        max_bytes = self.max_bytes if self.max_bytes is not None else device_memory_limit(self.device)
        shape = CacheShape(self.num_layers, self.num_heads, self.head_dim, self.dtype)
        self.cache, self.report = open_cache(shape, self.policy, budget, batch=self.batch,
                                             tokens_per_frame=tokens_per_frame, chunk_frames=frames,
                                             total_frames=total, device=self.device, storage=self.storage,
                                             max_bytes=max_bytes, grid_hw=grid_hw)

    def _write(self, layer: int, which: int, start: int, stop: int, value: torch.Tensor) -> None:
        if self._live is None:
            raise self.refusal(f"layer {layer} wrote its cache outside forward_block, which the patch frames")
        n, s = self.cache.length, self.cache._staged
        if (start, stop) != (n, n + s) or tuple(value.shape[1:]) != (s, self.num_heads, self.head_dim):
            raise self.refusal(f"layer {layer} wrote {_describe(value)} at slots {start}:{stop}, where the budgeted "
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
            raw = self._raw_keys.pop(layer, None)
            if raw is not None:
                raw = raw.view(b, s, self.num_heads, self.head_dim)
            if self.policy.entry_features and raw is None and "keys" in self.policy.entry_features:
                raise RuntimeError("the salience head needs keys before RoPE, and none were recorded")
            self.cache.enter(layer, raw, value, None)

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
        if write and "keys" in owner.policy.entry_features:
            hooks = [blk.self_attn.norm_k.register_forward_hook(
                lambda mod, args, out, i=i: owner.record_raw_keys(i, out)) for i, blk in enumerate(model.blocks)]
        try:
            out = forward_block(x, timestep, context, start_frame, kv_caches, crossattn_caches, *args, **kwargs)
        finally:
            for h in hooks:
                h.remove()
        owner.end_pass()
        return out

    return wrapped
