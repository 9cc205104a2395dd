"""The node pack's runner over ComfyUI's own Wan model class against the core runner (prints numbers).

Both run the same rollout with the same random weights: ``pafu_core``'s ``WanDiT`` with plain torch
ops, and ComfyUI's ``WanModel`` built by ComfyUI's loader, driven through ComfyUI's attention, RoPE and
casting (``nodes/comfy_ops.py``), as the PaFu AR Chunk Sampler does inside ComfyUI. Needs ComfyUI's
modules: ``COMFYUI_PATH`` (or ``--comfyui``); without them it says so and exits 0.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/bench_comfy_path.py            # CPU, mid-size shape
    COMFYUI_PATH=... python benchmarks/bench_comfy_path.py --wan13b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pafu_core.adapter import WanChunkRunner  # noqa: E402
from pafu_core.budget import CacheBudget  # noqa: E402
from pafu_core.cli import (Parser, UserError, output_file, positive_float, positive_int, run_cli,  # noqa: E402
                           torch_device, torch_dtype)
from pafu_core.policies import make_policy  # noqa: E402
from pafu_core.sampler import sample_video  # noqa: E402
from pafu_core.schedule import SamplerConfig  # noqa: E402
from pafu_core.wan import WAN21_1_3B, WanConfig, WanDiT, init_weights_  # noqa: E402
from pafu_lab.memory import peak_memory  # noqa: E402


def comfy_modules(path: str):
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    comfy.cli_args.args.cpu = not torch.cuda.is_available()
    import comfy.sd
    spec = importlib.util.spec_from_file_location("pafu_comfy_ops", os.path.join(ROOT, "nodes", "comfy_ops.py"))
    ops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ops)
    return comfy.sd, ops.ComfyOps


def timed(runner, context, args, hw, frames):
    policy = make_policy("fifo")
    kw = dict(num_frames=frames, height=hw[0], width=hw[1], policy=policy, budget=CacheBudget(args.budget),
              config=SamplerConfig(seed=0), device=args.device)
    sample_video(runner, context, **dict(kw, num_frames=3))                    # warm-up
    t0 = time.perf_counter()
    with peak_memory(args.device) if args.device.startswith("cuda") else _nothing() as peak:
        res = sample_video(runner, context, **kw)
    wall = time.perf_counter() - t0
    if not args.device.startswith("cuda"):
        with peak_memory(args.device) as peak:
            sample_video(runner, context, **kw)
    tail = res.report.chunks[len(res.report.chunks) // 2:]
    return {"chunk_ms": sum(c.chunk_ms for c in tail) / len(tail), "peak_mib": peak.bytes / 2**20, "wall_s": wall,
            "latents": res.latents}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv=None):
    p = Parser(prog="benchmarks/bench_comfy_path.py", description=__doc__)
    p.add_argument("--comfyui", default=None, help="a ComfyUI checkout (default: $COMFYUI_PATH)")
    p.add_argument("--device", type=torch_device, default="cpu")
    p.add_argument("--dtype", type=torch_dtype, default="float32")
    p.add_argument("--wan13b", action="store_true")
    p.add_argument("--dim", type=positive_int, default=384, help="a multiple of 128 (heads of 128)")
    p.add_argument("--layers", type=positive_int, default=6)
    p.add_argument("--latent", type=positive_int, default=16)
    p.add_argument("--frames", type=positive_int, default=24)
    p.add_argument("--budget", type=positive_float, default=6, help="latent frames kept")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    flag = "--comfyui" if args.comfyui else "COMFYUI_PATH"
    args.comfyui = args.comfyui or os.environ.get("COMFYUI_PATH")
    if not args.comfyui:
        print("skipped: ComfyUI's modules are not available (set COMFYUI_PATH to a ComfyUI checkout)")
        return
    if not os.path.isdir(args.comfyui):
        raise UserError(f"{flag} {args.comfyui}: no such folder (a ComfyUI checkout)")
    if importlib.util.find_spec("comfy") is None and not os.path.isdir(os.path.join(args.comfyui, "comfy")):
        raise UserError(f"{flag} {args.comfyui}: not a ComfyUI checkout (it has no comfy/ folder)")
    if not args.wan13b and args.dim % 128:
        raise UserError(f"--dim {args.dim} is not a multiple of 128 (the heads are 128 wide)")
    if args.budget < 3:
        raise UserError(f"--budget {args.budget:g} latent frames is less than one chunk (3 frames); use at least 3")
    if args.frames < 3:
        raise UserError(f"--frames {args.frames} is shorter than one chunk (3 latent frames)")
    if args.json:
        output_file(args.json, "--json")
    torch.set_grad_enabled(False)
    sd_mod, ComfyOps = comfy_modules(os.path.abspath(args.comfyui))
    cfg = WAN21_1_3B if args.wan13b else WanConfig(dim=args.dim, ffn_dim=3 * args.dim, num_heads=args.dim // 128,
                                                   num_layers=args.layers)
    dtype = getattr(torch, args.dtype)
    ours = init_weights_(WanDiT(cfg), seed=0).to(args.device, dtype).eval()
    patcher = sd_mod.load_diffusion_model_state_dict({k: v.cpu() for k, v in ours.state_dict().items()},
                                                     model_options={"dtype": dtype})
    theirs = patcher.model.diffusion_model.to(args.device).eval()
    hw = (60, 104) if args.wan13b else (args.latent, args.latent)
    context = torch.randn(1, 512 if args.wan13b else 16, cfg.text_dim, device=args.device)
    core = timed(WanChunkRunner(ours), context, args, hw, args.frames)
    comfy = timed(WanChunkRunner(theirs, ComfyOps(theirs, dtype), dtype=dtype), context, args, hw, args.frames)
    diff = float((core.pop("latents") - comfy.pop("latents")).abs().max())
    print(f"shape: {cfg.num_layers} layers, dim {cfg.dim}, latent {hw}, {args.frames} frames, fifo at {args.budget:g} "
          f"frames, {args.dtype} on {args.device} ({type(theirs).__name__} from ComfyUI's loader)")
    print(f"{'runner':>22} {'chunk ms':>9} {'peak MiB':>9}")
    print(f"{'pafu_core (WanDiT)':>22} {core['chunk_ms']:>9.1f} {core['peak_mib']:>9.1f}")
    print(f"{'ComfyUI WanModel':>22} {comfy['chunk_ms']:>9.1f} {comfy['peak_mib']:>9.1f}")
    ratio_t, ratio_m = comfy["chunk_ms"] / core["chunk_ms"], comfy["peak_mib"] / max(1e-9, core["peak_mib"])
    print(f"ComfyUI path / core path: chunk time {ratio_t:.3f}x, peak memory {ratio_m:.3f}x; max latent difference {diff:.2e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"core": core, "comfy": comfy, "time_ratio": ratio_t, "memory_ratio": ratio_m,
                       "max_latent_diff": diff}, fh, indent=1)


if __name__ == "__main__":
    run_cli(main)
