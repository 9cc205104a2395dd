"""The Salience Estimation Head (S-MLP) and its file format.

Entry: one small MLP per transformer layer predicts how much each token will matter, from what the
causal model has when the token enters the cache (keys before RoPE, values, and/or the block's
input), one layer at a time during the cache-writing pass.

Re-scoring (optional, ``rescore``): a second, tiny MLP per layer re-ranks every live token after
each chunk from three numbers: its entry salience, the highest entry salience that has reached its
place (patch position) since it entered, and its age in frames. So a token that newer, equally
salient views of the same place have replaced can make room, and age trades against salience in a
learned way. An optional fixed ``recency`` term (salience per frame, in the file) is added on top:
the re-scorer learns ages seen in its training clips only, and the term keeps ranking old tokens
below young ones far past them (chosen on the tuning seed, see ``benchmarks/ablation.py``).
``age_form="monotone"`` instead keeps age out of the MLP and subtracts a learned, never negative
multiple of log(1 + age / age_unit) per layer: an age effect whose form cannot turn around however far
past the training clips a token has lived.

File: safetensors only (never pickle). The header's ``__metadata__["pafu"]`` holds JSON: format
version, model family, the backbone's shape and fingerprint, input features, the re-scoring
settings and a training summary. ``load_head`` checks the header against the metadata before
allocating anything; ``SalienceHead.check_backbone`` checks against the model it is applied to.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .budget import REFERENCE_FRAMES
from .safefile import FileFormatError, load_tensors, read_header

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MODEL_FAMILY = "wan2.1"
FEATURES = ("keys", "values", "hidden")
BACKBONE_FIELDS = ("dim", "num_heads", "num_layers", "patch_size")
RESCORE_INPUTS = ("entry", "newer", "age")   # entry salience, newest salience at the place, age
#: how age enters the re-scorer: as an MLP input ("input"), or as a learned monotone decay ("monotone")
AGE_FORMS = ("input", "monotone")
#: bounds on what a head file may declare (a Wan 14B has 40 layers of dim 5120)
MAX_LAYERS, MAX_DIM, MAX_HIDDEN = 256, 65_536, 65_536


@dataclass
class HeadConfig:
    num_layers: int
    dim: int
    num_heads: int
    patch_size: tuple[int, int, int] = (1, 2, 2)
    input_features: tuple[str, ...] = ("keys", "values")
    hidden: int = 64
    per_head: bool = False      # one score per attention head (averaged into the token's score)
    rescore: bool = False       # re-rank live tokens after every chunk (see the module docstring)
    rescore_hidden: int = 16
    rescore_inputs: tuple[str, ...] = RESCORE_INPUTS    # which of the three the re-scorer reads
    age_unit: float = float(REFERENCE_FRAMES)   # frames: ages enter the re-scorer as age / age_unit
    recency: float = 0.0        # salience per latent frame: entry-only heads add it per frame of recency,
                                # re-scoring heads subtract it per frame of age from the re-scorer's output
    age_form: str = "input"     # see AGE_FORMS and the module docstring
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        self.input_features = tuple(self.input_features)
        self.patch_size = tuple(int(p) for p in self.patch_size)
        bad = [f for f in self.input_features if f not in FEATURES]
        if bad or not self.input_features:
            raise ValueError(f"input_features must be a non-empty subset of {FEATURES}, got {self.input_features}")
        if len(set(self.input_features)) != len(self.input_features):
            raise ValueError(f"input_features has duplicates: {self.input_features}")
        self.rescore_inputs = tuple(self.rescore_inputs)
        if not self.rescore_inputs or any(i not in RESCORE_INPUTS for i in self.rescore_inputs) \
                or len(set(self.rescore_inputs)) != len(self.rescore_inputs):
            raise ValueError(f"rescore_inputs must be a non-empty subset of {RESCORE_INPUTS}, got {self.rescore_inputs}")
        for name in ("hidden", "rescore_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("age_unit", "recency"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if not self.age_unit > 0:
            raise ValueError(f"age_unit must be positive, got {self.age_unit}")
        if self.recency < 0:
            raise ValueError(f"recency must be >= 0, got {self.recency}")
        if self.age_form not in AGE_FORMS:
            raise ValueError(f"age_form must be one of {AGE_FORMS}, got {self.age_form!r}")
        if self.rescore and not self.mlp_inputs:
            raise ValueError(f"a monotone age needs another re-scoring input besides age, got {self.rescore_inputs}")

    @property
    def mlp_inputs(self) -> tuple[str, ...]:
        """What the re-scoring MLP reads: the re-scoring inputs, less age when age is a monotone decay."""
        if self.age_form == "monotone":
            return tuple(i for i in self.rescore_inputs if i != "age")
        return self.rescore_inputs

    @property
    def in_features(self) -> int:
        return self.dim * len(self.input_features)    # keys and values are H*D = dim wide, hidden dim

    @property
    def out_features(self) -> int:
        return self.num_heads if self.per_head else 1

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        lyr, i, h, o, r = self.num_layers, self.in_features, self.hidden, self.out_features, self.rescore_hidden
        shapes = {"w1": (lyr, i, h), "b1": (lyr, 1, h), "w2": (lyr, h, o), "b2": (lyr, 1, o)}
        if self.rescore:
            shapes.update({"r1": (lyr, len(self.mlp_inputs), r), "rb1": (lyr, 1, r), "r2": (lyr, r, 1), "rb2": (lyr, 1, 1)})
            if self.age_form == "monotone":
                shapes["age_w"] = (lyr, 1, 1)
        return shapes

    def backbone(self) -> dict:
        return {"dim": self.dim, "num_heads": self.num_heads, "num_layers": self.num_layers,
                "patch_size": list(self.patch_size)}

    def metadata(self) -> dict:
        return {"format_version": FORMAT_VERSION, "model_family": MODEL_FAMILY,
                "backbone": self.backbone(), "backbone_fingerprint": backbone_fingerprint(self.backbone()),
                "input_features": list(self.input_features), "hidden": self.hidden,
                "per_head": self.per_head, "rescore": self.rescore, "rescore_hidden": self.rescore_hidden,
                "rescore_inputs": list(self.rescore_inputs),
                "age_unit": self.age_unit, "recency": self.recency, "age_form": self.age_form,
                "training": self.training}


def backbone_fingerprint(backbone: dict) -> str:
    key = {k: backbone[k] for k in BACKBONE_FIELDS}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _mlp(x: torch.Tensor, w1, b1, w2, b2) -> torch.Tensor:
    """x [layers, T, in] through per-layer 2-layer MLPs -> [layers, T, out]."""
    return torch.baddbmm(b2, F.gelu(torch.baddbmm(b1, x, w1)), w2)


class SalienceHead(nn.Module):
    """Per-layer MLPs, stacked over layers so training and re-scoring run as batched matmuls."""

    def __init__(self, cfg: HeadConfig, tensors: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.config = cfg
        for name, shape in cfg.tensor_shapes().items():
            if tensors is not None:
                value = tensors[name].to(torch.float32)
            elif name[0] == "b" or name.startswith("rb") or name == "age_w":
                value = torch.zeros(shape)
            else:
                value = torch.randn(shape) / shape[1] ** 0.5
            self.register_parameter(name, nn.Parameter(value))

    @property
    def input_features(self) -> tuple[str, ...]:
        return self.config.input_features

    @property
    def rescores(self) -> bool:
        return self.config.rescore

    def recency(self) -> float:
        return self.config.recency

    def on_device(self, device: torch.device | str) -> "SalienceHead":
        """This head on ``device`` without moving it: ComfyUI caches the loader's output and may hand the
        same object to several graphs, so a copy per device is made once and kept."""
        device = torch.device(device)
        here = next(self.parameters()).device
        if here == device or (device.type == here.type and device.index is None):
            return self
        copies = self.__dict__.setdefault("_device_copies", {})
        if str(device) not in copies:
            copies[str(device)] = SalienceHead(self.config, dict(self.named_parameters())).to(device).eval()
        return copies[str(device)]

    # ---- entry salience ------------------------------------------------------------------
    def features(self, keys, values, hidden) -> torch.Tensor:
        """Concatenate the configured features, each layer-normed: [..., S, H, D] / [..., S, dim]
        with leading dims (layers, batch) or (batch,) -> [..., S, in]."""
        given = {"keys": keys, "values": values, "hidden": hidden}
        parts = []
        for name in self.input_features:
            t = given[name]
            if t is None:
                raise ValueError(f"salience head needs {name!r} but none were given")
            if name != "hidden":
                t = rearrange(t, "... s h d -> ... s (h d)")
            parts.append(F.layer_norm(t.to(self.w1.dtype), t.shape[-1:]))
        return torch.cat(parts, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [layers, T, in] -> [layers, T] entry salience (all layers at once: training)."""
        return _mlp(x, self.w1, self.b1, self.w2, self.b2).mean(dim=-1)

    def entry_scores(self, layer: int, keys, values, hidden) -> torch.Tensor:
        """The cache-policy interface, one layer: [B, S, ...] features -> [B, S] entry salience."""
        x = self.features(keys, values, hidden)
        b, s = x.shape[:2]
        i = slice(layer, layer + 1)
        out = _mlp(x.view(1, b * s, -1), self.w1[i], self.b1[i], self.w2[i], self.b2[i])
        return out.mean(dim=-1).view(b, s)

    # ---- re-scoring ----------------------------------------------------------------------
    def rescore(self, entry: torch.Tensor, newer: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        """[layers, ..., N] entry salience, newest salience at the place, age in frames -> salience now."""
        if not self.rescores:
            raise RuntimeError("this salience head scores tokens once, on entry (rescore is off)")
        given = {"entry": entry, "newer": newer, "age": age / self.config.age_unit}
        x = torch.stack([given[i] for i in self.config.mlp_inputs], dim=-1).to(self.r1.dtype)
        shape = x.shape[:-1]
        out = _mlp(x.reshape(shape[0], -1, x.shape[-1]), self.r1, self.rb1, self.r2, self.rb2).view(shape)
        if self.config.age_form == "monotone":
            decay = F.softplus(self.age_w).view(-1, *([1] * (out.dim() - 1)))
            out = out - decay * torch.log1p(given["age"].clamp_min(0).to(out.dtype))
        return out

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def check_backbone(self, runner) -> None:
        """Refuse to run on a model this head was not trained for, naming the field."""
        model = {"dim": runner.dim, "num_heads": runner.num_heads, "num_layers": runner.num_layers,
                 "patch_size": list(runner.patch_size)}
        mine = self.config.backbone()
        for name in BACKBONE_FIELDS:
            if mine[name] != model[name]:
                raise ValueError(
                    f"salience head does not fit this model: {name} is {mine[name]} in the head "
                    f"but {model[name]} in the model (the head was trained for a different backbone)")


# ---- file format ---------------------------------------------------------------------------

def save_head(head: SalienceHead, path: str | os.PathLike) -> None:
    from safetensors.torch import save_file
    tensors = {name: getattr(head, name).detach().to("cpu", torch.float32).contiguous()
               for name in head.config.tensor_shapes()}
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"        # written whole, then renamed: an interrupted save leaves no half file
    try:
        save_file(tensors, tmp, metadata={"pafu": json.dumps(head.config.metadata(), sort_keys=True)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _config_from_metadata(meta: dict, fail) -> HeadConfig:
    """Every field checked for presence, type and range before a config (or any tensor) exists."""

    def need(d: dict, key: str, kind, where: str = ""):
        if key not in d:
            fail(f"its metadata lacks {where}{key!r}")
        value = d[key]
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if not ok:
            fail(f"its metadata field {where}{key!r} should be {getattr(kind, '__name__', kind)}, got {value!r}")
        return value

    def count(d, key, limit, where=""):
        value = need(d, key, int, where)
        if not 1 <= value <= limit:
            fail(f"its metadata field {where}{key!r} = {value} is out of range (1..{limit})")
        return value

    version = need(meta, "format_version", int)
    if version not in READABLE_VERSIONS:
        fail(f"format_version {version} is not supported (this version reads {READABLE_VERSIONS})")
    if meta.get("model_family") != MODEL_FAMILY:
        fail(f"model_family is {meta.get('model_family')!r}, expected {MODEL_FAMILY!r}")
    backbone = need(meta, "backbone", dict)
    dims = {k: count(backbone, k, lim, "backbone.") for k, lim in
            (("dim", MAX_DIM), ("num_heads", 1024), ("num_layers", MAX_LAYERS))}
    patch = need(backbone, "patch_size", list, "backbone.")
    if len(patch) != 3 or not all(isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 64 for p in patch):
        fail(f"its backbone.patch_size should be three small positive integers, got {patch!r}")
    if backbone_fingerprint(backbone) != meta.get("backbone_fingerprint"):
        fail("its backbone_fingerprint does not match the backbone fields (an edited file?)")
    features = need(meta, "input_features", list)
    rescore = need(meta, "rescore", bool) if version >= 2 else False
    inputs = need(meta, "rescore_inputs", list) if rescore else list(RESCORE_INPUTS)
    age_form = meta.get("age_form", "input")
    if age_form not in AGE_FORMS:
        fail(f"its metadata field 'age_form' should be one of {AGE_FORMS}, got {age_form!r}")
    numbers = {}
    for key, default in (("age_unit", float(REFERENCE_FRAMES)), ("recency", 0.0)):
        value = meta.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            fail(f"its metadata field {key!r} should be a finite number, got {value!r}")
        numbers[key] = float(value)
    try:
        return HeadConfig(num_layers=dims["num_layers"], dim=dims["dim"], num_heads=dims["num_heads"],
                          patch_size=tuple(patch), input_features=tuple(features),
                          hidden=count(meta, "hidden", MAX_HIDDEN), per_head=need(meta, "per_head", bool),
                          rescore=rescore,
                          rescore_hidden=count(meta, "rescore_hidden", MAX_HIDDEN) if rescore else 16,
                          rescore_inputs=tuple(inputs), age_form=age_form,
                          training=meta.get("training") if isinstance(meta.get("training"), dict) else {},
                          **numbers)
    except (TypeError, ValueError) as e:
        fail(f"its metadata is inconsistent: {e}")


def load_head(path: str | os.PathLike, device: torch.device | str = "cpu") -> SalienceHead:
    """Load a head file; every refusal is one sentence naming the file and what is wrong with it.

    The header is checked against the metadata (names, dtypes, shapes) before any tensor is read,
    so a file cannot make this allocate more than its own size; non-finite weights are refused."""
    path = os.fspath(path)
    name = os.path.basename(path)

    def fail(problem: str):
        raise FileFormatError(f"salience head {name}: {problem}")

    header = read_header(path, what="salience head", max_header_bytes=1_000_000)
    raw = header.metadata.get("pafu")
    if raw is None:
        fail("the safetensors file has no PaFu metadata: not a PaFu salience head")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):
        fail("its PaFu metadata is not valid JSON")
    if not isinstance(meta, dict):
        fail("its PaFu metadata is not a JSON object")
    cfg = _config_from_metadata(meta, fail)
    expected = cfg.tensor_shapes()
    got = {k: e.shape for k, e in header.tensors.items()}
    if set(got) != set(expected):
        fail(f"it holds tensors {sorted(got)} but its metadata implies {sorted(expected)}")
    for key, shape in expected.items():
        entry = header.tensors[key]
        if entry.shape != shape:
            fail(f"tensor {key!r} has shape {list(entry.shape)} but the metadata implies {list(shape)}")
        if entry.dtype not in ("F32", "F16", "BF16"):
            fail(f"tensor {key!r} is {entry.dtype}; head weights are floating point (F32, F16 or BF16)")
    tensors = load_tensors(header)
    for key, t in tensors.items():
        if not torch.isfinite(t).all():
            fail(f"tensor {key!r} holds NaN or infinite values (a corrupt or diverged head)")
    return SalienceHead(cfg, tensors).to(device).eval()
