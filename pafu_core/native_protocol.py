"""Whether ComfyUI core's causal Wan speaks the AR cache protocol the patch stands in for (``native.py``).

Checked at patch time (methods, argument names, the attributes the pass framing reads, core's own per-layer
dict), so a core that drifted from it gets one sentence naming what differs and its version, never a wrong
video; and what core's AR path can show a policy (``CORE_AR_INPUTS``), checked once, when the patch is applied.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import torch

from .policies import policy_entries
from .policy import Policy, check_inputs

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


def end_kind(end):
    """The type of core's ``end``: ``int`` (0.27) or ``torch.Tensor`` (one integer element, ``.item()`` / ``fill_``)."""
    if type(end) is int:
        return int
    if isinstance(end, torch.Tensor) and end.numel() == 1 and not end.is_floating_point() and not end.is_complex() \
            and end.dtype != torch.bool:
        return torch.Tensor
    return None


def describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {str(x.dtype).replace('torch.', '')} tensor of shape {list(x.shape)}"
    return f"{'an' if type(x).__name__[0] in 'aeiou' else 'a'} {type(x).__name__}"


def as_int(x) -> int:
    return int(x.item()) if isinstance(x, torch.Tensor) else int(x)


#: what core's AR path shows a policy in the cache-writing pass (no attention weights, no hidden states)
CORE_AR_INPUTS = frozenset({"keys", "values", "queries"})


def check_native_protocol(model, *, needs_keys: bool = False, needs_queries: bool = False):
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
    def blocks_have(name: str) -> bool:
        return all(isinstance(getattr(getattr(b, "self_attn", None), name, None), torch.nn.Module) for b in model.blocks)
    if needs_keys and not blocks_have("norm_k"):
        raise refusal("its blocks have no self_attn.norm_k, where this salience head reads keys before RoPE", model)
    if needs_queries and not blocks_have("norm_q"):
        raise refusal("its attention blocks expose no queries (no self_attn.norm_q), which this policy scores with",
                      model)
    caches = init(1, 0, "cpu", torch.float32)
    if not isinstance(caches, list) or len(caches) != model.num_layers:
        raise refusal(f"init_kv_caches returns {describe(caches)}, not a list of {model.num_layers} dicts", model)
    shape = [1, 0, model.num_heads, model.head_dim]
    for layer in caches:
        if not isinstance(layer, dict) or tuple(sorted(layer)) != LAYER_KEYS:
            keys = sorted(layer) if isinstance(layer, dict) else describe(layer)
            raise refusal(f"a layer cache holds {keys} instead of {list(LAYER_KEYS)}", model)
        for name in ("k", "v"):
            if not isinstance(layer[name], torch.Tensor) or list(layer[name].shape) != shape:
                raise refusal(f"a layer cache's {name!r} is {describe(layer[name])}, not [batch, tokens, heads, "
                              f"head_dim] = {shape}", model)
        if end_kind(layer["end"]) is None:
            raise refusal(f"a layer cache's 'end' is {describe(layer['end'])}, where the patch knows an int or a "
                          "one-element integer tensor", model)
    return caches[0]["end"]


def core_ar_policy_names() -> tuple[str, ...]:
    """The registered policies whose inputs core's AR path provides (a head's are checked with the head)."""
    return tuple(e.name for e in policy_entries() if e.inputs <= CORE_AR_INPUTS)


def check_native_policy(policy: Policy) -> None:
    """Once, when the patch is applied: core's AR path provides no attention weights and no hidden states."""
    check_inputs(policy, CORE_AR_INPUTS, "core's AR path",
                 "choose another policy (or a head trained on keys and values), or use the PaFu AR Chunk Sampler")
