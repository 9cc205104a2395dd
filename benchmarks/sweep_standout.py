"""Choose the training-free ``standout`` policy's recency on the tuning seed, and show its plateau.

    python benchmarks/sweep_standout.py                    # 8 tuning videos, 360 frames, 25% and 12.5%
    python benchmarks/sweep_standout.py --videos 4 --frames 108 --values 0,0.2,0.8

The recency is salience per budget window of frame index (``policies.Standout``). For every value the
script rolls the tiny world out under ``standout`` at each budget (the model watching the world, the
tuning seed: never the evaluation seed) and prints the primary score. It picks the value whose worst
score over its neighbourhood (the swept values from half to twice it, every budget) is highest: a value
that a small change of rhythm or budget cannot push off a cliff. Then it checks the plateau rule: every
value of that neighbourhood scores within 0.03 of the chosen one, at every budget. Writes ``--out``:
sweep.md and sweep.png (score vs recency).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.policies import Standout  # noqa: E402
from pafu_lab.charts import plot_sweep  # noqa: E402
from pafu_core.adapter import WanChunkRunner  # noqa: E402
from pafu_core.wan import load_wan_checkpoint  # noqa: E402
from pafu_lab.world.evaluate import TUNING_SEED, Batch, mean_std, rollouts, world_models  # noqa: E402
from pafu_core.world.scenes import DEFAULT_WORLD, WORLDS  # noqa: E402

PLATEAU_TOLERANCE = 0.03


def neighbourhood(values: list[float], v: float) -> list[float]:
    """The swept values from half to twice ``v`` (for 0: 0 and the next value up)."""
    return [u for u in values if v / 2 <= u <= 2 * v] if v > 0 else values[:2]


def robust_choice(values: list[float], scores: dict[float, list[float]]) -> float:
    """The value whose worst score over its neighbourhood and every budget is highest."""
    return max(values, key=lambda v: min(min(scores[u]) for u in neighbourhood(values, v)))


def plateau(values: list[float], scores: dict[float, list[float]], chosen: float) -> tuple[bool, str]:
    """Does every value of the chosen one's neighbourhood score within PLATEAU_TOLERANCE of it, at every
    budget (``scores[v]``: one score per budget)?"""
    near = neighbourhood(values, chosen)
    gap = max(scores[chosen][i] - scores[v][i] for v in near for i in range(len(scores[chosen])))
    return gap <= PLATEAU_TOLERANCE, (f"the values {', '.join(f'{v:g}' for v in near)} score at most {gap:.3f} "
                                      f"below the chosen one at any budget (rule: {PLATEAU_TOLERANCE})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--frames", type=int, default=10 * DEFAULT_WORLD.clip_frames)
    p.add_argument("--budgets", default="0.25,0.125")
    p.add_argument("--values", default="0,0.05,0.1,0.2,0.4,0.8,1.6,3.2",
                   help="recency values, salience per budget window (sorted ascending)")
    p.add_argument("--seed", type=int, default=TUNING_SEED, help="noise seed (default: the tuning seed)")
    p.add_argument("--world", choices=sorted(WORLDS), default=DEFAULT_WORLD.name)
    p.add_argument("--student", default=None, help="the causal student trained on that world (default: the committed one)")
    p.add_argument("--out", default="out/sweep_standout")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    budgets = [float(b) for b in args.budgets.split(",")]
    values = sorted(float(v) for v in args.values.split(","))
    os.makedirs(args.out, exist_ok=True)
    world = WORLDS[args.world]
    student = WanChunkRunner(load_wan_checkpoint(args.student or world_models(world)[0]).eval().requires_grad_(False))
    batch = Batch(seed=args.seed, frames=args.frames, watched=True, world=world,
                  styles=[i % world.num_styles for i in range(args.videos)])
    scores: dict[float, list[float]] = {}
    lines = ["| recency per window | " + " | ".join(f"{100 * b:g}%" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    bar = tqdm(total=len(values) * len(budgets), desc="standout sweep")
    for v in values:
        row = []
        for b in budgets:
            group = rollouts(student, None, "standout", b, batch, custom=Standout(recency=v))
            row.append(mean_std([r.accuracy for r in group])[0])
            bar.update()
        scores[v] = row
        lines.append(f"| {v:g} | " + " | ".join(f"{s:.3f}" for s in row) + " |")
    bar.close()
    best = robust_choice(values, scores)
    peak = max(values, key=lambda v: sum(scores[v]))
    ok, why = plateau(values, scores, best)
    text = (f"standout recency sweep: tiny world {world.name} watched, {args.frames} frames, {args.videos} videos (seed {args.seed}), "
            f"primary score per budget\n\n" + "\n".join(lines) + f"\n\nchosen: {best:g} per window (the best worst "
            f"score over half to twice the value: {min(min(scores[u]) for u in neighbourhood(values, best)):.3f}; its "
            f"mean over budgets {sum(scores[best]) / len(budgets):.3f}); the best mean is {peak:g} "
            f"({sum(scores[peak]) / len(budgets):.3f}); plateau {'holds' if ok else 'FAILS'}: {why}")
    print(text)
    with open(os.path.join(args.out, "sweep.md"), "w") as fh:
        fh.write(text + "\n")
    plot_sweep(values, {f"{100 * b:g}%": [scores[v][i] for v in values] for i, b in enumerate(budgets)}, best,
               "standout recency (salience per budget window)", os.path.join(args.out, "sweep.png"))
    print(f"\nwrote {args.out}/sweep.md and sweep.png")


if __name__ == "__main__":
    main()
