"""Choose the training-free ``standout`` policy's recency on the tuning seed, and show its plateau.

    python benchmarks/sweep_standout.py                    # 8 tuning videos, 360 frames, 25% and 12.5%
    python benchmarks/sweep_standout.py --videos 4 --frames 108 --values 0,0.2,0.8

The recency is salience per budget window of frame index (``policies.Standout``). For every value the
script rolls the tiny world out under ``standout`` at each budget (the model watching the world, the
tuning seed: never the evaluation seed) and prints the primary score. It picks the value with the best
mean over budgets and checks the plateau rule: every swept value from half to twice the chosen one scores
within 0.03 of the best, at every budget. Writes ``--out``: sweep.md and sweep.png (score vs recency).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.policies import Standout  # noqa: E402
from pafu_core.world.evaluate import TUNING_SEED, Batch, load_world_models, mean_std, rollouts  # noqa: E402
from pafu_core.world.scenes import DEFAULT_WORLD  # noqa: E402

PLATEAU_TOLERANCE = 0.03


def plateau(values: list[float], scores: dict[float, list[float]], best: float) -> tuple[bool, str]:
    """Does every swept value in [best / 2, 2 * best] score within PLATEAU_TOLERANCE of the best, at every
    budget (``scores[v]``: one score per budget)? With best = 0 the neighbourhood is the next value up."""
    near = [v for v in values if best / 2 <= v <= 2 * best] if best > 0 else [v for v in values[:2]]
    tops = [max(scores[v][i] for v in values) for i in range(len(scores[best]))]
    worst = min(scores[v][i] - tops[i] for v in near for i in range(len(tops)))
    return worst >= -PLATEAU_TOLERANCE, (f"values {', '.join(f'{v:g}' for v in near)} lie within {-worst:.3f} of the "
                                         f"best score at every budget (rule: {PLATEAU_TOLERANCE})")


def plot_sweep(values: list[float], lines: dict[str, list[float]], best: float, xlabel: str, path: str) -> None:
    """Score against the swept value (log x, 0 drawn at the left edge), the chosen value and its
    plateau band [best / 2, 2 * best] marked."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    low = min(v for v in values if v > 0) / 2
    xs = [v if v > 0 else low for v in values]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for i, (name, ys) in enumerate(lines.items()):
        ax.plot(xs, ys, marker="o", color=f"C{i}", label=f"budget {name}")
    if best > 0:
        ax.axvspan(best / 2, 2 * best, color="0.9", label="half to twice the chosen value")
    ax.axvline(best if best > 0 else low, color="k", ls="--", lw=0.8, label=f"chosen {best:g}")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{v:g}" for v in values])
    ax.set_xlabel(xlabel + " (0 at the left edge)")
    ax.set_ylabel("score (right - invented, per object)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Tuning seed: the chosen value must sit on a plateau")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--frames", type=int, default=10 * DEFAULT_WORLD.clip_frames)
    p.add_argument("--budgets", default="0.25,0.125")
    p.add_argument("--values", default="0,0.05,0.1,0.2,0.4,0.8,1.6,3.2",
                   help="recency values, salience per budget window (sorted ascending)")
    p.add_argument("--seed", type=int, default=TUNING_SEED, help="noise seed (default: the tuning seed)")
    p.add_argument("--out", default="out/sweep_standout")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    budgets = [float(b) for b in args.budgets.split(",")]
    values = sorted(float(v) for v in args.values.split(","))
    os.makedirs(args.out, exist_ok=True)
    student, _ = load_world_models()
    batch = Batch(seed=args.seed, frames=args.frames, watched=True,
                  styles=[i % DEFAULT_WORLD.num_styles for i in range(args.videos)])
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
    best = max(values, key=lambda v: sum(scores[v]))
    ok, why = plateau(values, scores, best)
    text = (f"standout recency sweep: tiny world watched, {args.frames} frames, {args.videos} videos (seed {args.seed}), "
            f"primary score per budget\n\n" + "\n".join(lines) + f"\n\nbest: {best:g} per window (mean over budgets "
            f"{sum(scores[best]) / len(budgets):.3f}); plateau {'holds' if ok else 'FAILS'}: {why}")
    print(text)
    with open(os.path.join(args.out, "sweep.md"), "w") as fh:
        fh.write(text + "\n")
    plot_sweep(values, {f"{100 * b:g}%": [scores[v][i] for v in values] for i, b in enumerate(budgets)}, best,
               "standout recency (salience per budget window)", os.path.join(args.out, "sweep.png"))
    print(f"\nwrote {args.out}/sweep.md and sweep.png")


if __name__ == "__main__":
    main()
