"""Per-policy chunk time, cache memory and policy overhead vs rollout length.

Prints measured numbers (nothing here is asserted). Defaults finish in a few minutes on 2 CPU
cores; ``--wan13b`` runs the real Wan 2.1 1.3B shape (random weights time the same as real ones)
on a GPU. Budget fractions are of the reference window (21 latent frames, Self-Forcing's cache).

    python benchmarks/bench_cache.py                       # tiny model, CPU
    python benchmarks/bench_cache.py --wan13b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.adapter import WanChunkRunner  # noqa: E402
from pafu_core.cache import REFERENCE_FRAMES, CacheBudget  # noqa: E402
from pafu_core.policies import make_policy  # noqa: E402
from pafu_core.salience import HeadConfig, SalienceHead  # noqa: E402
from pafu_core.sampler import SamplerConfig, sample_video  # noqa: E402
from pafu_core.wan import WAN21_1_3B, WanConfig, WanDiT, init_weights_  # noqa: E402


def build(args) -> tuple[WanChunkRunner, torch.Tensor]:
    cfg = WAN21_1_3B if args.wan13b else WanConfig(dim=args.dim, ffn_dim=2 * args.dim,
                                                   num_heads=args.dim // 128, num_layers=args.layers)
    dtype = getattr(torch, args.dtype)
    with torch.device(args.device):
        model = init_weights_(WanDiT(cfg).to(args.device), seed=0) if not args.wan13b else WanDiT(cfg)
    model = model.to(dtype).eval()
    context = torch.randn(1, 512 if args.wan13b else 16, cfg.text_dim, device=args.device)
    return WanChunkRunner(model), context


def measure(runner, context, args, policy: str, budget, frames: int) -> dict:
    hw = (60, 104) if args.wan13b else (args.latent, args.latent)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    head = None
    if policy == "pafu":      # an untrained head times exactly like a trained one
        head = SalienceHead(HeadConfig(num_layers=runner.num_layers, dim=runner.dim, num_heads=runner.num_heads))
        head = head.to(args.device, getattr(torch, args.dtype))
    res = sample_video(runner, context, num_frames=frames, height=hw[0], width=hw[1],
                       policy=make_policy(policy, head=head, seed=0), budget=budget,
                       config=SamplerConfig(chunk_frames=3, seed=0), device=args.device)
    wall = time.perf_counter() - t0
    chunks = res.report.chunks
    tail = chunks[-max(1, len(chunks) // 4):]             # steady state: last quarter of the rollout
    head = chunks[1:1 + max(1, len(chunks) // 4)]
    ms = lambda cs: sum(c.chunk_ms for c in cs) / len(cs)
    return dict(
        policy=policy, frames=frames, budget_tokens=res.report.budget_tokens,
        first_ms=ms(head), last_ms=ms(tail),
        policy_share=100 * sum(c.policy_ms for c in tail) / sum(c.chunk_ms for c in tail),
        kv_mib=chunks[-1].kv_bytes / 2**20, cache_mib=res.report.peak_cache_bytes / 2**20,
        peak_mib=(torch.cuda.max_memory_allocated() / 2**20) if args.device.startswith("cuda") else float("nan"),
        wall_s=wall)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--wan13b", action="store_true", help="Wan 2.1 1.3B shape at 480x832 (GPU)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--latent", type=int, default=24, help="latent height = width (tiny model)")
    p.add_argument("--lengths", default="21,42,84", help="rollout lengths in latent frames")
    p.add_argument("--fractions", default="0.5,0.25",
                   help="of the 21-frame window; 12.5%% is below one 3-frame chunk")
    p.add_argument("--policies", default="pafu,fifo,sink_window,key_norm,attention_mass")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    runner, context = build(args)
    lengths = [int(v) for v in args.lengths.split(",")]
    fractions = [float(v) for v in args.fractions.split(",")]
    policies = args.policies.split(",")
    print(f"device={args.device} dtype={args.dtype} layers={runner.num_layers} dim={runner.dim} "
          f"threads={torch.get_num_threads()} reference window={REFERENCE_FRAMES} frames")
    measure(runner, context, args, "fifo", CacheBudget(6), 6)      # warm-up
    header = (f"{'frames':>6} {'policy':>15} {'budget':>8} {'tokens':>7} {'chunk ms first':>14} "
              f"{'chunk ms last':>13} {'x keep-all':>10} {'policy %':>8} {'KV MiB':>8} {'owned MiB':>9} {'peak MiB':>9}")
    print(header)
    rows = []
    for frames in lengths:
        ref = measure(runner, context, args, "keep_all", None, frames)
        rows.append(("100%", ref))
        for frac in fractions:
            for pol in policies:
                budget = CacheBudget(frac, unit="fraction", sink_frames=1 if pol == "sink_window" else 0)
                rows.append((f"{100 * frac:g}%", measure(runner, context, args, pol, budget, frames)))
        for label, r in rows[-(1 + len(fractions) * len(policies)):]:
            print(f"{r['frames']:>6} {r['policy']:>15} {label:>8} {r['budget_tokens']:>7} {r['first_ms']:>14.1f} "
                  f"{r['last_ms']:>13.1f} {r['last_ms'] / ref['last_ms']:>10.2f} {r['policy_share']:>8.2f} "
                  f"{r['kv_mib']:>8.2f} {r['cache_mib']:>9.2f} {r['peak_mib']:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
