"""Per-policy chunk time, memory and policy overhead vs rollout length, against a lean reference.

Prints measured numbers (nothing here is asserted). Defaults finish in a few minutes on 2 CPU cores;
``--wan13b`` runs the real Wan 2.1 1.3B shape (random weights time the same as real ones) on a GPU.
Budget fractions are of the reference window (21 latent frames, Self-Forcing's cache).

Every row is timed in this process, next to the lean reference forward (``lean_reference.py``: the
same blocks and shapes, SDPA over one contiguous pre-filled cache of the same size, nothing else), so
each row prints its ratio to it. Peak memory is the allocator's peak on a GPU, the tensor-storage peak
on the CPU (``pafu_core/memory.py``), measured in a second run so that tracking never slows the timing.
After each length, Deep Forcing's and participative compression's chunk time and peak memory over FIFO's at
the same budget: what the Wan default costs over the cheapest policy.

    python benchmarks/bench_cache.py                       # tiny model, CPU
    python benchmarks/bench_cache.py --wan13b --device cuda --dtype bfloat16 --json out/bench_cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.lean_reference import LeanForward  # noqa: E402
from pafu_core.adapter import WanChunkRunner  # noqa: E402
from pafu_core.budget import REFERENCE_FRAMES, CacheBudget  # noqa: E402
from pafu_core.cli import (Parser, UserError, fraction_of, list_of, one_of, output_file, positive_int,  # noqa: E402
                           run_cli, torch_device, torch_dtype)
from pafu_core.policies import make_policy, policy_entries, policy_entry  # noqa: E402
from pafu_core.salience import HeadConfig, SalienceHead  # noqa: E402
from pafu_core.sampler import sample_video  # noqa: E402
from pafu_core.schedule import SamplerConfig  # noqa: E402
from pafu_core.wan import WAN21_1_3B, WanConfig, WanDiT, init_weights_  # noqa: E402
from pafu_lab.memory import peak_memory  # noqa: E402
from pafu_lab.world.evaluate import check_budget_fraction  # noqa: E402


def build(args) -> tuple[WanChunkRunner, torch.Tensor]:
    cfg = WAN21_1_3B if args.wan13b else WanConfig(dim=args.dim, ffn_dim=2 * args.dim,
                                                   num_heads=args.dim // 128, num_layers=args.layers)
    dtype = getattr(torch, args.dtype)
    with torch.device(args.device):
        model = WanDiT(cfg) if args.wan13b else init_weights_(WanDiT(cfg), seed=0)
    model = model.to(args.device, dtype).eval().requires_grad_(False)
    context = torch.randn(1, 512 if args.wan13b else 16, cfg.text_dim, device=args.device)
    return WanChunkRunner(model), context


def latent_hw(args) -> tuple[int, int]:
    return (60, 104) if args.wan13b else (args.latent, args.latent)


def rollout(runner, context, args, policy: str, budget, frames: int, storage: str):
    head = None
    if policy == "pafu":      # an untrained head times exactly like a trained one (re-scoring, as shipped)
        head = SalienceHead(HeadConfig(num_layers=runner.num_layers, dim=runner.dim, num_heads=runner.num_heads,
                                       rescore=True)).to(args.device)
    hw = latent_hw(args)
    return sample_video(runner, context, num_frames=frames, height=hw[0], width=hw[1],
                        policy=make_policy(policy, head=head, seed=0), budget=budget,
                        config=SamplerConfig(chunk_frames=3, seed=0), device=args.device, kv_storage=storage,
                        positions=policy_entry(policy).cls.positions)          # each policy's own recipe


def measure(runner, context, args, policy: str, budget, frames: int, storage: str = "model") -> dict:
    cuda = args.device.startswith("cuda")
    t0 = time.perf_counter()
    with peak_memory(args.device) if (cuda and args.memory) else nullcontext() as tracked:   # free on a GPU
        res = rollout(runner, context, args, policy, budget, frames, storage)
    wall = time.perf_counter() - t0
    peak = float("nan")
    if args.memory:
        if not cuda:                  # the CPU tracker slows every operator: a second, untimed run
            with peak_memory(args.device) as tracked:
                rollout(runner, context, args, policy, budget, frames, storage)
        peak = tracked.bytes / 2**20
    chunks = res.report.chunks
    tail = chunks[-max(1, len(chunks) // 4):]             # steady state: last quarter of the rollout
    ms = sum(c.chunk_ms for c in tail) / len(tail)
    cached = min(res.report.budget_tokens, frames * res.report.tokens_per_frame) - 3 * res.report.tokens_per_frame
    hw = latent_hw(args)
    lean = LeanForward(runner.model, 1, 3 * res.report.tokens_per_frame, max(0, cached), context.shape[1],
                       args.device, runner.dtype).chunk_ms(passes=5) if args.lean else float("nan")
    return dict(policy=policy + ("" if storage == "model" else f" ({storage})"), frames=frames,
                budget_tokens=res.report.budget_tokens, last_ms=ms, lean_ms=lean,
                policy_share=100 * sum(c.policy_ms for c in tail) / sum(c.chunk_ms for c in tail),
                kv_mib=chunks[-1].kv_bytes / 2**20, cache_mib=res.report.peak_cache_bytes / 2**20,
                peak_mib=peak, wall_s=wall, hw=list(hw))


def print_against_fifo(rows: list[dict]) -> None:
    """Deep Forcing's cost next to FIFO's at one budget: what the Wan default costs over the cheapest policy."""
    by_policy = {r["policy"]: r for r in rows}
    fifo = by_policy.get("fifo")
    for name in ("deep_forcing", "participative"):
        r = by_policy.get(name)
        if r is None or fifo is None:
            continue
        print(f"{r['frames']:>6} {name} / fifo at {r['budget']}: chunk time {r['last_ms'] / fifo['last_ms']:.3f}x, "
              f"peak memory {r['peak_mib'] / fifo['peak_mib']:.3f}x, K/V held {r['kv_mib'] / fifo['kv_mib']:.3f}x",
              flush=True)


def main(argv=None):
    window = f"{REFERENCE_FRAMES}-frame reference window"
    p = Parser(prog="benchmarks/bench_cache.py", description=__doc__)
    p.add_argument("--device", type=torch_device, default="cpu")
    p.add_argument("--dtype", type=torch_dtype, default="float32")
    p.add_argument("--wan13b", action="store_true", help="Wan 2.1 1.3B shape at 480x832 (GPU)")
    p.add_argument("--dim", type=positive_int, default=256, help="model width, a multiple of 128 (heads of 128)")
    p.add_argument("--layers", type=positive_int, default=4)
    p.add_argument("--latent", type=positive_int, default=24, help="latent height = width (tiny model), even")
    p.add_argument("--lengths", type=list_of(positive_int), default=[21, 42, 84],
                   help="rollout lengths in latent frames")
    p.add_argument("--fractions", type=list_of(fraction_of(REFERENCE_FRAMES, window)), default=[0.25],
                   help=f"of the {window}")
    p.add_argument("--policies", type=list_of(one_of(tuple(e.name for e in policy_entries() if e.bounded), "policy")),
                   default=["pafu", "fifo", "sink_window", "attention_mass", "participative", "deep_forcing"])
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True, help="also fifo with 8-bit K/V")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="measure peak memory")
    p.add_argument("--lean", action=argparse.BooleanOptionalAction, default=True, help="time the lean reference")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if not args.wan13b and args.dim % 128:
        raise UserError(f"--dim {args.dim} is not a multiple of 128 (the heads are 128 wide); use e.g. 128 or 256")
    if not args.wan13b and args.latent % 2:
        raise UserError(f"--latent {args.latent} is odd; the model's 2x2 patches need an even latent size")
    if min(args.lengths) < 3:
        raise UserError(f"--lengths {min(args.lengths)} is shorter than one chunk (3 latent frames)")
    for frac in args.fractions:
        check_budget_fraction(frac, args.policies + ["fifo"], flag="--fractions", clip=REFERENCE_FRAMES, chunk=3,
                              window="reference window")
    if args.json:
        output_file(args.json, "--json")
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    runner, context = build(args)
    lengths, fractions, policies = args.lengths, args.fractions, args.policies
    print(f"device={args.device} dtype={args.dtype} layers={runner.num_layers} dim={runner.dim} "
          f"latent={latent_hw(args)} threads={torch.get_num_threads()} reference window={REFERENCE_FRAMES} frames")
    rollout(runner, context, args, "fifo", CacheBudget(6), 6, "model")      # warm-up
    print(f"{'frames':>6} {'policy':>18} {'budget':>8} {'tokens':>7} {'chunk ms':>9} {'lean ms':>8} {'x lean':>7} "
          f"{'x keep-all':>10} {'policy %':>8} {'K/V MiB':>8} {'owned MiB':>9} {'peak MiB':>9}")
    rows = []
    for frames in lengths:
        ref = measure(runner, context, args, "keep_all", None, frames)
        group = [("100%", ref)]
        for frac in fractions:
            for pol in policies:
                budget = CacheBudget(frac, unit="fraction", sink_frames=1 if pol == "sink_window" else 0)
                group.append((f"{100 * frac:g}%", measure(runner, context, args, pol, budget, frames)))
            if args.int8:
                group.append((f"{100 * frac:g}%", measure(runner, context, args, "fifo",
                                                          CacheBudget(frac, unit="fraction"), frames, "int8")))
        for label, r in group:
            r["budget"], r["x_keep_all"], r["x_lean"] = label, r["last_ms"] / ref["last_ms"], r["last_ms"] / r["lean_ms"]
            print(f"{r['frames']:>6} {r['policy']:>18} {label:>8} {r['budget_tokens']:>7} {r['last_ms']:>9.1f} "
                  f"{r['lean_ms']:>8.1f} {r['x_lean']:>7.2f} {r['x_keep_all']:>10.2f} {r['policy_share']:>8.2f} "
                  f"{r['kv_mib']:>8.2f} {r['cache_mib']:>9.2f} {r['peak_mib']:>9.1f}", flush=True)
        rows += [r for _, r in group]
        for frac in fractions:
            print_against_fifo([r for label, r in group if label == f"{100 * frac:g}%"])
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"device": args.device, "dtype": args.dtype, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    run_cli(main)
