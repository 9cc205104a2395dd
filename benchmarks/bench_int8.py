"""8-bit K/V on the tiny world: fidelity to the full-precision cache (same seed) and the truth metric.

    python benchmarks/bench_int8.py                    # 16 held-out videos, 360 frames, pafu at 25%

For each video the same rollout runs twice, with the cache in the model's dtype and in int8 (one scale
per token and head); prints the PSNR of the int8 video against the full-precision one, both return
accuracies with their 95% confidence intervals, and the K/V bytes each cache holds.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.cli import Parser, fraction_of, one_of, positive_int, run_cli, torch_device  # noqa: E402
from pafu_lab.world.evaluate import (BUDGETED, EVAL_SEED, Batch, check_budget_fraction,  # noqa: E402
                                      load_world_models, mean_ci, rollouts, world_frames)
from pafu_lab.world.metrics import psnr  # noqa: E402
from pafu_core.world.scenes import DEFAULT_WORLD  # noqa: E402


def main(argv=None):
    clip = f"{DEFAULT_WORLD.clip_frames}-frame training clip"
    p = Parser(prog="benchmarks/bench_int8.py", description=__doc__)
    p.add_argument("--videos", type=positive_int, default=16)
    p.add_argument("--frames", type=world_frames, default=10 * DEFAULT_WORLD.clip_frames)
    p.add_argument("--policy", type=one_of(tuple(q for q in BUDGETED if q != "oracle_causal"), "policy"),
                   default="pafu")
    p.add_argument("--budget", type=fraction_of(DEFAULT_WORLD.clip_frames, clip), default=0.25,
                   help=f"fraction of the {clip}")
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--device", type=torch_device, default="cpu")
    args = p.parse_args(argv)
    check_budget_fraction(args.budget, [args.policy])
    torch.set_grad_enabled(False)
    student, head = load_world_models(args.device)
    batch = Batch(seed=args.seed, frames=args.frames, styles=[i % DEFAULT_WORLD.num_styles for i in range(args.videos)],
                  watched=True)            # the benchmark's setting: the model watches the world
    full = rollouts(student, head, args.policy, args.budget, batch, device=args.device)
    eight = rollouts(student, head, args.policy, args.budget, batch, device=args.device, kv_storage="int8")
    fidelity = [psnr(a.frames, b.frames) for a, b in zip(full, eight)]
    finite = [v for v in fidelity if v != float("inf")]
    acc_full = mean_ci([r.accuracy for r in full])
    acc_eight = mean_ci([r.accuracy for r in eight])
    print(f"tiny world (watched), {args.videos} videos x {args.frames} frames, {args.policy} at {100 * args.budget:g}%, "
          f"noise seed {args.seed}, model dtype {student.dtype}")
    print(f"PSNR int8 vs full-precision cache: mean {sum(finite) / max(1, len(finite)):.1f} dB, min "
          f"{min(finite, default=float('inf')):.1f} dB ({len(fidelity) - len(finite)} of {len(fidelity)} videos identical)")
    print(f"return accuracy: full {acc_full[0]:.3f} [{acc_full[1]:.3f}, {acc_full[2]:.3f}], "
          f"int8 {acc_eight[0]:.3f} [{acc_eight[1]:.3f}, {acc_eight[2]:.3f}]; int8 inside the full run's CI: "
          f"{acc_full[1] <= acc_eight[0] <= acc_full[2]}")
    print(f"K/V held: full {full[0].report.chunks[-1].kv_bytes / 2**20:.3f} MiB, "
          f"int8 {eight[0].report.chunks[-1].kv_bytes / 2**20:.3f} MiB")


if __name__ == "__main__":
    run_cli(main)
