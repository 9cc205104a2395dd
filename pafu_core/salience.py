"""The Salience Estimation Head (S-MLP) and its file format.

One small MLP per transformer layer predicts how much each token will matter, from what the causal
model has when the token enters the cache (keys before RoPE, values, and/or the block's hidden
state). All layers' MLPs are stored as stacked weights and run as one batched matmul, so scoring a
chunk costs a couple of kernel launches rather than one per layer.

File: safetensors only (never pickle). The header's ``__metadata__["pafu"]`` holds JSON: format
version, model family, the backbone's shape and fingerprint, input features, and a training
summary. ``load_head`` validates all of it; ``SalienceHead.check_backbone`` validates against the
model the head is applied to, naming the field that disagrees.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

FORMAT_VERSION = 1
MODEL_FAMILY = "wan2.1"
FEATURES = ("keys", "values", "hidden")
BACKBONE_FIELDS = ("dim", "num_heads", "num_layers", "patch_size")
_TENSORS = ("w1", "b1", "w2", "b2")


@dataclass
class HeadConfig:
    num_layers: int
    dim: int
    num_heads: int
    patch_size: tuple[int, int, int] = (1, 2, 2)
    input_features: tuple[str, ...] = ("keys", "values")
    hidden: int = 64
    per_head: bool = False      # one score per attention head (averaged into the token's score)
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        self.input_features = tuple(self.input_features)
        self.patch_size = tuple(int(p) for p in self.patch_size)
        bad = [f for f in self.input_features if f not in FEATURES]
        if bad or not self.input_features:
            raise ValueError(f"input_features must be a non-empty subset of {FEATURES}, got {self.input_features}")
        if len(set(self.input_features)) != len(self.input_features):
            raise ValueError(f"input_features has duplicates: {self.input_features}")
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")

    @property
    def in_features(self) -> int:
        return self.dim * len(self.input_features)    # keys and values are H*D = dim wide, hidden dim

    @property
    def out_features(self) -> int:
        return self.num_heads if self.per_head else 1

    def backbone(self) -> dict:
        return {"dim": self.dim, "num_heads": self.num_heads, "num_layers": self.num_layers,
                "patch_size": list(self.patch_size)}


def backbone_fingerprint(backbone: dict) -> str:
    import hashlib
    key = {k: backbone[k] for k in BACKBONE_FIELDS}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class SalienceHead(nn.Module):
    """Per-layer 2-layer MLPs, stacked: [layers, in, hidden] and [layers, hidden, out]."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.config = cfg
        lyr, i, h, o = cfg.num_layers, cfg.in_features, cfg.hidden, cfg.out_features
        self.w1 = nn.Parameter(torch.randn(lyr, i, h) / i ** 0.5)
        self.b1 = nn.Parameter(torch.zeros(lyr, 1, h))
        self.w2 = nn.Parameter(torch.randn(lyr, h, o) / h ** 0.5)
        self.b2 = nn.Parameter(torch.zeros(lyr, 1, o))

    @property
    def input_features(self) -> tuple[str, ...]:
        return self.config.input_features

    def features(self, keys, values, hidden) -> torch.Tensor:
        """Concatenate the configured features into [layers, B*S, in] (each layer-normed)."""
        given = {"keys": keys, "values": values, "hidden": hidden}
        parts = []
        for name in self.input_features:
            t = given[name]
            if t is None:
                raise ValueError(f"salience head needs {name!r} but none were given")
            lyr, b, s = t.shape[:3]
            t = t.reshape(lyr, b * s, -1)
            parts.append(F.layer_norm(t.to(self.w1.dtype), t.shape[-1:]))
        return torch.cat(parts, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [layers, T, in] -> [layers, T, out] raw scores."""
        hid = F.gelu(torch.baddbmm(self.b1, x, self.w1))
        return torch.baddbmm(self.b2, hid, self.w2)

    def score_tokens(self, keys, values, hidden, max_bytes: float = 256e6) -> torch.Tensor:
        """The cache-policy interface: [layers, B, S, ...] features -> [layers, B, S] salience.

        Layers are scored in as few batched groups as keep the feature matrix under ``max_bytes``
        (one group for small models; a handful at Wan 1.3B scale).
        """
        ref = next(t for t in (keys, values, hidden) if t is not None)
        lyr, b, s = ref.shape[:3]
        if lyr != self.config.num_layers:
            raise ValueError(f"salience head has {self.config.num_layers} layers, the model {lyr}")
        per_layer = b * s * self.config.in_features * self.w1.element_size()
        group = max(1, min(lyr, int(max_bytes // max(1, per_layer))))
        out = []
        for g0 in range(0, lyr, group):
            sl = slice(g0, g0 + group)
            part = [t[sl] if t is not None else None for t in (keys, values, hidden)]
            x = self.features(*part)
            hid = F.gelu(torch.baddbmm(self.b1[sl], x, self.w1[sl]))
            out.append(torch.baddbmm(self.b2[sl], hid, self.w2[sl]).mean(dim=-1))
        return torch.cat(out).view(lyr, b, s)

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
    cfg = head.config
    meta = {"format_version": FORMAT_VERSION, "model_family": MODEL_FAMILY,
            "backbone": cfg.backbone(), "backbone_fingerprint": backbone_fingerprint(cfg.backbone()),
            "input_features": list(cfg.input_features), "hidden": cfg.hidden,
            "per_head": cfg.per_head, "training": cfg.training}
    tensors = {name: getattr(head, name).detach().to("cpu").contiguous() for name in _TENSORS}
    save_file(tensors, os.fspath(path), metadata={"pafu": json.dumps(meta, sort_keys=True)})


def _read_header(path: str) -> dict:
    """Parse a safetensors header ourselves to give precise errors for non-safetensors files."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        start = fh.read(8)
        n = int.from_bytes(start, "little") if len(start) == 8 else -1
        header = None
        if 0 < n <= min(size - 8, 100_000_000):
            try:
                header = json.loads(fh.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError):
                header = None
    if not isinstance(header, dict):
        if start[:1] == b"\x80" or start[:2] == b"PK":
            raise ValueError(f"{path}: this is a pickle / torch.save file; salience heads are loaded "
                             "from safetensors only (pickle can run arbitrary code)")
        raise ValueError(f"{path}: not a safetensors file, or its header is truncated")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ValueError(f"{path}: file is truncated ({size} bytes, header promises {8 + n + end})")
    return header


def load_head(path: str | os.PathLike, device: torch.device | str = "cpu") -> SalienceHead:
    """Load and validate a head file; every refusal says what is wrong with the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"salience head file not found: {path}")
    header = _read_header(path)
    raw = header.get("__metadata__", {}).get("pafu")
    if raw is None:
        raise ValueError(f"{path}: safetensors file has no PaFu metadata: not a PaFu salience head")
    meta = json.loads(raw)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {meta.get('format_version')} is not supported "
                         f"(this version reads {FORMAT_VERSION})")
    if meta.get("model_family") != MODEL_FAMILY:
        raise ValueError(f"{path}: model_family is {meta.get('model_family')!r}, expected {MODEL_FAMILY!r}")
    backbone = meta.get("backbone") or {}
    missing = [f for f in BACKBONE_FIELDS if f not in backbone]
    if missing:
        raise ValueError(f"{path}: backbone metadata lacks {missing}")
    if backbone_fingerprint(backbone) != meta.get("backbone_fingerprint"):
        raise ValueError(f"{path}: backbone_fingerprint does not match the backbone fields (edited file?)")
    cfg = HeadConfig(num_layers=backbone["num_layers"], dim=backbone["dim"], num_heads=backbone["num_heads"],
                     patch_size=tuple(backbone["patch_size"]), input_features=tuple(meta["input_features"]),
                     hidden=meta["hidden"], per_head=meta["per_head"], training=meta.get("training", {}))
    head = SalienceHead(cfg)
    from safetensors.torch import load_file
    tensors = load_file(path)
    expected = {name: tuple(getattr(head, name).shape) for name in _TENSORS}
    got = {name: tuple(t.shape) for name, t in tensors.items()}
    if got != expected:
        raise ValueError(f"{path}: tensors {got} do not match the metadata, which implies {expected}")
    with torch.no_grad():
        for name in _TENSORS:
            getattr(head, name).copy_(tensors[name])
    return head.to(device).eval()
