"""Quality vs budget on the tiny world: every policy, several budgets, several seeds (prints numbers).

    python benchmarks/bench_quality.py                        # 8 seeds, 50/25/12.5%, 360 frames
    python benchmarks/bench_quality.py --seeds 2 --frames 108 # quicker look

For each seed the keep-all rollout is the reference; every budgeted policy runs with the same noise.
Budgets are fractions of the 36-frame training clip. Writes ``--out`` (a Markdown table and a plot of
consistency against budget).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.plots import COLORS  # noqa: E402
from pafu_core.progress import Progress  # noqa: E402
from pafu_core.world.evaluate import (BUDGETED, compare_to_reference, load_world_models, mean_std,  # noqa: E402
                                      rollouts, table)
from pafu_core.world.scenes import DEFAULT_WORLD  # noqa: E402


def plot(rows, budgets, policies, path: str) -> None:
    w, h, pad = 560, 360, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([pad, 20, w - 20, h - pad], outline="black")
    d.text((pad, 4), "return consistency (world ground truth) vs budget; mean over seeds", fill="black")
    xs = {b: pad + 30 + i * (w - pad - 80) / max(1, len(budgets) - 1) for i, b in enumerate(sorted(budgets))}
    for b, x in xs.items():
        d.text((x - 12, h - pad + 6), f"{100 * b:g}%", fill="black")
    for frac in (0, 0.5, 1.0):
        y = h - pad - frac * (h - pad - 20)
        d.text((8, y - 6), f"{frac:.1f}", fill="black")
    keep = mean_std(r.consistency for r in rows if r.policy == "keep_all")[0]
    if keep == keep:                      # NaN when the video is too short for the scene to return
        y = h - pad - keep * (h - pad - 20)
        d.line([(pad, y), (w - 20, y)], fill=(150, 150, 150), width=1)
        d.text((w - 110, y - 12), "keep-all", fill=(120, 120, 120))
    for i, pol in enumerate(policies):
        pts = []
        for b in sorted(budgets):
            m = mean_std(r.consistency for r in rows if r.policy == pol and r.budget == b)[0]
            if m == m:
                pts.append((xs[b], h - pad - m * (h - pad - 20)))
        color = COLORS[i % len(COLORS)]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
        for x, yy in pts:
            d.ellipse([x - 3, yy - 3, x + 3, yy + 3], fill=color)
        d.text((pad + 8 + 80 * i, h - 18), pol, fill=color)
    img.save(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--frames", type=int, default=10 * DEFAULT_WORLD.clip_frames)
    p.add_argument("--budgets", default="0.5,0.25,0.125")
    p.add_argument("--policies", default=",".join(BUDGETED))
    p.add_argument("--seed", type=int, default=0, help="noise seed of the batch")
    p.add_argument("--out", default="out/bench_quality")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    os.makedirs(args.out, exist_ok=True)
    budgets = [float(b) for b in args.budgets.split(",")]
    policies = args.policies.split(",")
    student, head = load_world_models()
    # all seeds run as one batch (row i: style i mod 8, its own noise); each row's cache evicts on its own
    styles = [i % DEFAULT_WORLD.num_styles for i in range(args.seeds)]
    bar = Progress(1 + len(budgets) * len(policies), "batched rollouts")
    refs = rollouts(student, head, "keep_all", None, args.seed, args.frames, styles)
    bar.update()
    rows = list(refs)
    for b in budgets:
        for pol in policies:
            group = rollouts(student, head, pol, b, args.seed, args.frames, styles)
            compare_to_reference(group, refs)
            rows += group
            bar.update()
    text = (f"tiny world, {args.frames} latent frames, {args.seeds} videos (mean ± std), budgets as "
            f"fractions of the {DEFAULT_WORLD.clip_frames}-frame training clip, CPU threads "
            f"{torch.get_num_threads()}\n\n" + table(rows))
    print(text)
    with open(os.path.join(args.out, "results.md"), "w") as fh:
        fh.write(text + "\n")
    plot(rows, budgets, policies, os.path.join(args.out, "consistency_vs_budget.png"))
    print(f"\nwrote {args.out}/results.md and consistency_vs_budget.png")


if __name__ == "__main__":
    main()
