"""Turn an autoregressive Wan 2.1 training checkpoint into a safetensors file ComfyUI loads as causal-AR.

    python -m pafu_core.convert self_forcing_dmd.pt self_forcing_dmd.safetensors [--dtype bf16]

Self-Forcing, CausVid and Causal Forcing release ``.pt`` files whose weights sit under ``generator_ema.``
/ ``generator.`` / ``model.`` prefixes (EMA weights preferred). The output has Wan's own parameter
names, is checked against the Wan 2.1 layout its shapes imply, and carries the safetensors metadata
``config = {"transformer": {"causal_ar": true}}``, so ComfyUI 0.27's ``UNETLoader`` builds a
``CausalWanModel`` from it (and the frontend can offer it as a download: it is a .safetensors file).
The ``.pt`` is read with ``weights_only=True``: no pickled code runs.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

from .cli import Parser, output_file, run_cli
from .wan import check_wan_state_dict, read_state_dict, strip_checkpoint_prefixes

DTYPES = {"keep": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
CAUSAL_AR_METADATA = {"config": json.dumps({"transformer": {"causal_ar": True}})}


def convert(src: str, dst: str, dtype: str = "keep") -> dict:
    """Write ``dst``; returns a summary (config, tensors, bytes)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not dst.endswith((".safetensors", ".sft")):
        raise ValueError(f"the output must be a .safetensors file, got {dst!r}")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("the output would overwrite the input")
    sd = strip_checkpoint_prefixes(read_state_dict(src))
    cfg = check_wan_state_dict(sd, os.path.basename(src))
    cast = DTYPES[dtype]
    sd = {k: (v.to(cast) if cast is not None and v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    tmp = dst + ".tmp"
    save_file(sd, tmp, metadata={**CAUSAL_AR_METADATA, "pafu_source": os.path.basename(src)})
    os.replace(tmp, dst)
    return {"config": cfg.to_dict(), "tensors": len(sd), "bytes": os.path.getsize(dst)}


def main(argv=None) -> None:
    p = Parser(prog="python -m pafu_core.convert", description=__doc__)
    p.add_argument("src", help="a Self-Forcing / CausVid / Causal Forcing checkpoint (.pt or .safetensors)")
    p.add_argument("dst", help="the .safetensors file to write")
    p.add_argument("--dtype", choices=list(DTYPES), default="keep", help="cast floating-point weights")
    args = p.parse_args(argv)
    output_file(args.dst, "dst")
    info = convert(args.src, args.dst, args.dtype)          # a refused file: one sentence, exit status 2
    cfg = info["config"]
    print(f"wrote {args.dst}: Wan 2.1, {cfg['num_layers']} layers, dim {cfg['dim']}, {info['tensors']} tensors, "
          f"{info['bytes'] / 2**30:.2f} GiB, marked causal-AR for ComfyUI's UNETLoader")


if __name__ == "__main__":
    run_cli(main)
