"""Wan 2.1 diffusion transformer, weight-compatible with Wan / ComfyUI / Self-Forcing checkpoints.

The module tree uses the exact Wan 2.1 parameter names and shapes, so a real checkpoint loads with
strict key checking. The autoregressive chunk forward does not live here: it is written against the
*layout* of this tree (see ``adapter.py``) so that it also runs over ComfyUI's ``WanModel`` and
``CausalWanModel``. ``WanDiT.forward`` is the plain full-sequence forward (optionally with an
attention mask) that serves as the bidirectional teacher and as the reference for exactness tests.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from .ops import TorchOps


@dataclass(frozen=True)
class WanConfig:
    """Sizes of a Wan 2.1 text-to-video DiT. ``WAN21_1_3B`` is the real 1.3B model."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim={self.head_dim} must be even and >= 6 for 3-axis RoPE")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def tokens_per_frame(self, latent_height: int, latent_width: int) -> int:
        """Tokens one latent frame becomes after patchify (1560 for 480x832 at Wan's patch 1x2x2)."""
        _, ph, pw = self.patch_size
        return (latent_height // ph) * (latent_width // pw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], head_dim: int = 128) -> "WanConfig":
        """Infer sizes from a (prefix-stripped) Wan state dict, the way ComfyUI's detection does."""
        try:
            pe = sd["patch_embedding.weight"]
            dim, in_dim = pe.shape[0], pe.shape[1]
            ffn_dim = sd["blocks.0.ffn.0.weight"].shape[0]
            text_dim = sd["text_embedding.0.weight"].shape[1]
            freq_dim = sd["time_embedding.0.weight"].shape[1]
            head_w = sd["head.head.weight"]
        except KeyError as e:
            raise ValueError(f"not a Wan 2.1 state dict: missing key {e.args[0]!r}") from None
        if "head.modulation" not in sd:
            raise ValueError("not a Wan 2.1 state dict: missing key 'head.modulation'")
        if pe.ndim != 5 or head_w.ndim != 2:
            raise ValueError(f"not a Wan 2.1 state dict: patch_embedding.weight {tuple(pe.shape)} / head.head.weight "
                             f"{tuple(head_w.shape)} have the wrong number of dimensions")
        if dim < head_dim or dim % head_dim:
            raise ValueError(f"not a Wan 2.1 state dict: its width {dim} is not a multiple of the head size {head_dim}")
        blocks = [k.split(".")[1] for k in sd if k.startswith("blocks.")]
        if not blocks or not all(b.isdigit() for b in blocks):
            raise ValueError("not a Wan 2.1 state dict: no numbered 'blocks.N.' layers")
        layers = 1 + max(int(b) for b in blocks)
        patch = tuple(pe.shape[2:])
        if head_w.shape[0] % math.prod(patch):
            raise ValueError(f"not a Wan 2.1 state dict: head.head.weight {tuple(head_w.shape)} does not fit the "
                             f"patch size {patch}")
        out_dim = head_w.shape[0] // math.prod(patch)
        return cls(dim=dim, ffn_dim=ffn_dim, num_heads=dim // head_dim, num_layers=layers,
                   in_dim=in_dim, out_dim=out_dim, text_dim=text_dim, freq_dim=freq_dim,
                   patch_size=patch)


WAN21_1_3B = WanConfig()


def tiny_config(dim: int = 128, num_layers: int = 2, ffn_dim: int | None = None) -> WanConfig:
    """A small config that ComfyUI's own Wan detection also builds (head_dim 128, text_dim 4096)."""
    return WanConfig(dim=dim, ffn_dim=ffn_dim or 2 * dim, num_heads=max(1, dim // 128),
                     num_layers=num_layers)


class WanSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = WanSelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)


class WanHead(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)


class WanDiT(nn.Module):
    """Wan 2.1 T2V backbone (parameters only + full-sequence forward)."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.config = cfg
        dim = cfg.dim
        self.patch_size = cfg.patch_size
        self.freq_dim = cfg.freq_dim
        self.dim = dim
        self.num_heads = cfg.num_heads
        self.out_dim = cfg.out_dim
        self.in_dim = cfg.in_dim
        self.text_dim = cfg.text_dim
        self.model_type = "t2v"
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = WanHead(cfg)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                frame_offset: int = 0, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Full-sequence forward: x [B, C, F, H, W], timestep [B] or per frame [B, F], context [B, L, text_dim].

        ``attn_mask`` (bool [N, N], True = attend) turns it into e.g. a block-causal model.
        Returns the flow prediction with x's shape.
        """
        from .adapter import WanChunkRunner  # one implementation of the layer math, shared
        runner = WanChunkRunner(self, TorchOps())
        return runner.forward_full(x, timestep, context, frame_offset=frame_offset, attn_mask=attn_mask)


# ---------------------------------------------------------------------------------------------
# Checkpoint loading

#: Prefixes that AR training checkpoints and ComfyUI exports put before Wan's own names.
CHECKPOINT_PREFIXES = ("generator_ema.", "generator.", "model._fsdp_wrapped_module.",
                       "model.diffusion_model.", "diffusion_model.", "_orig_mod.", "model.")


def strip_checkpoint_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map Self-Forcing / CausVid / Causal-Forcing / ComfyUI layouts onto plain Wan names.

    When both an EMA generator and a plain generator are present, the EMA weights win (as the
    released AR checkpoints are meant to be used).
    """
    if any(k.startswith("generator_ema.") for k in sd):
        sd = {k: v for k, v in sd.items() if k.startswith("generator_ema.")}
    elif any(k.startswith("generator.") for k in sd):
        sd = {k: v for k, v in sd.items() if k.startswith("generator.")}
    out = {}
    for key, value in sd.items():
        changed = True
        while changed:
            changed = False
            for prefix in CHECKPOINT_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file: safetensors (header checked first), or a torch file loaded with
    ``weights_only=True`` (never unpickles code). Every refusal names the file and the defect."""
    import pickle
    import warnings
    import zipfile

    from .safefile import FileFormatError, load_tensors, read_header, sniff
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise FileFormatError(f"checkpoint {name}: the file is empty")
    kind = sniff(path)
    if kind == "safetensors" or path.endswith((".safetensors", ".sft")):     # a pickle is refused there
        sd = load_tensors(read_header(path, what="checkpoint"))
        if not sd:
            raise FileFormatError(f"checkpoint {name}: a safetensors file that holds no tensors, so no weights")
        return sd
    if kind != "torch":
        raise FileFormatError(f"checkpoint {name}: not a checkpoint ({kind}); give a torch .pt / .pth file "
                              "(zip or pickle) or a .safetensors file")
    try:
        with warnings.catch_warnings():     # a pickle protocol torch.save does not write: refused below, in one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise FileFormatError(f"checkpoint {name}: it holds Python objects besides tensors, which are not loaded "
                              "(they could run code); re-save it as a plain state dict or safetensors") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError, AttributeError, IndexError):
        raise FileFormatError(f"checkpoint {name}: not a readable torch checkpoint (truncated or corrupt)") from None
    if isinstance(obj, dict) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        # {"generator_ema": {...}, "generator": {...}, ...}: flatten one level with the key as prefix
        flat = {}
        for top, inner in obj.items():
            if isinstance(inner, dict):
                flat.update({f"{top}.{k}": v for k, v in inner.items() if isinstance(v, torch.Tensor)})
        obj = flat
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        what = type(obj).__name__ if not isinstance(obj, dict) else "no named tensors"
        raise FileFormatError(f"checkpoint {name}: it holds {'a ' + what if not isinstance(obj, dict) else what}, "
                              "not a state dict (parameter names mapped to tensors)")
    return obj


def state_dict_problems(own: dict[str, tuple], sd: dict[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and wrongly shaped keys of ``sd`` against the shapes ``own``."""
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong_shape = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k])}"
                         for k in set(sd) & set(own) if tuple(sd[k].shape) != tuple(own[k]))
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}"
                        + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}"
                        + (" ..." if len(unexpected) > 20 else ""))
    if wrong_shape:
        problems.append(f"wrong shapes ({len(wrong_shape)}): {'; '.join(wrong_shape[:20])}")
    return problems


def check_wan_state_dict(sd: dict[str, torch.Tensor], name: str = "checkpoint") -> WanConfig:
    """A (prefix-stripped) Wan 2.1 state dict's config, after checking every key and shape against
    the layout it implies (built on the meta device: nothing is allocated)."""
    try:
        cfg = WanConfig.from_state_dict(sd)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in WanDiT(cfg).state_dict().items()}
    problems = state_dict_problems(own, sd)
    if problems:
        raise ValueError(f"{name} does not match the Wan 2.1 layout its shapes imply:\n  " + "\n  ".join(problems))
    return cfg


def load_wan_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Strictly load a (possibly prefixed) Wan state dict; errors name every bad key."""
    sd = strip_checkpoint_prefixes(sd)
    problems = state_dict_problems({k: tuple(v.shape) for k, v in model.state_dict().items()}, sd)
    if problems:
        raise ValueError("Wan state dict does not match the model:\n  " + "\n  ".join(problems))
    model.load_state_dict(sd, strict=True)


def load_wan_checkpoint(path: str | os.PathLike, config: WanConfig | None = None,
                        dtype: torch.dtype = torch.float32) -> WanDiT:
    """Build a ``WanDiT`` from a checkpoint file, inferring the config when none is given."""
    sd = strip_checkpoint_prefixes(read_state_dict(path))
    cfg = config or check_wan_state_dict(sd, os.path.basename(os.fspath(path)))
    model = WanDiT(cfg)
    load_wan_state_dict(model, sd)
    return model.to(dtype)


def init_weights_(model: WanDiT, seed: int = 0) -> WanDiT:
    """Deterministic random init (for tests and timing; random weights time the same as real ones)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "modulation" not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif "modulation" in name:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
    return model


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
