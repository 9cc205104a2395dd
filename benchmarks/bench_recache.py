"""Does re-caching at a prompt change help? The tiny world's style changes mid-video (prints numbers).

    python benchmarks/bench_recache.py                     # 8 tuning videos, 90 frames, change at frame 45
    python benchmarks/bench_recache.py --videos 4 --frames 60 --change 30

Free generation from the world's first frame (the tuning seed, never the evaluation seed); at ``--change``
the prompt switches to another style's (its backdrop tint changes; the objects' cells and colours do
not). Each policy runs with and without re-caching (``pafu_core/recache.py``) on the same noise. Scores,
over the frames from the change on: **tint error** = distance of the generated backdrop's tint from the
new style's (how fast and how fully the video takes the new prompt; the first chunk after the change and
all frames after it), and the **return score** against the world's truth (does the memory survive). The
script prints the paired differences (re-caching minus not) with 95% intervals.
"""

from __future__ import annotations

import os
import sys

import torch
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.cli import Parser, fraction_of, list_of, one_of, positive_int, run_cli  # noqa: E402
from pafu_core.timeline import PromptTimeline  # noqa: E402
from pafu_core.world.scenes import DEFAULT_WORLD, style_context, style_tint  # noqa: E402
from pafu_lab.world.evaluate import (TUNING_SEED, Batch, load_world_models, mean_ci, rollouts,  # noqa: E402
                                      world_frames)
from pafu_lab.world.metrics import ReturnScores, cell_colors, clip_returns, world_labels  # noqa: E402

POLICIES = ("keep_all", "fifo", "standout", "pafu")


def tint_error(frames: torch.Tensor, clip, style: int) -> torch.Tensor:
    """[F] distance of each frame's backdrop tint (its mean colour over the cells no object ever uses, minus
    its grey) from ``style``'s tint."""
    colors = cell_colors(frames, clip.cfg)                                # [F, cells, 3]
    backdrop = colors[:, ~world_labels(clip).any(dim=0)].mean(dim=1)      # [F, 3]
    tint = backdrop - backdrop.mean(dim=-1, keepdim=True)
    return (tint - style_tint(style, clip.cfg)).norm(dim=-1)


def main(argv=None) -> None:
    p = Parser(prog="python benchmarks/bench_recache.py", description=__doc__)
    p.add_argument("--videos", type=positive_int, default=8)
    p.add_argument("--frames", type=world_frames, default=90)
    p.add_argument("--change", type=positive_int, default=45, help="latent frame where the style changes")
    p.add_argument("--budget", type=fraction_of(DEFAULT_WORLD.clip_frames, "36-frame training clip"), default=0.25,
                   help="fraction of the 36-frame training clip")
    p.add_argument("--policies", type=list_of(one_of(POLICIES, "policy")), default=list(POLICIES))
    args = p.parse_args(argv)
    if not 1 < args.change < args.frames:
        p.error(f"--change must fall inside the video (after its start frame): 2..{args.frames - 1}")
    torch.set_grad_enabled(False)
    student, head = load_world_models()
    styles = [i % DEFAULT_WORLD.num_styles for i in range(args.videos)]
    batch = Batch(seed=TUNING_SEED, frames=args.frames, styles=styles, start_frames=1)
    new_styles = [(s + DEFAULT_WORLD.num_styles // 2) % DEFAULT_WORLD.num_styles for s in styles]
    timeline = PromptTimeline((0, args.change), (torch.cat([style_context(s) for s in styles]),
                                                 torch.cat([style_context(s) for s in new_styles])))
    chunk = batch.sampler.chunk_frames
    first_after = args.change + (-(args.change - 1) % chunk)       # the first chunk wholly after the change
    results = {}
    for policy in tqdm(args.policies, desc="policies"):
        for recache in (False, True):
            rows = rollouts(student, head if policy == "pafu" else None, policy,
                            None if policy == "keep_all" else args.budget, batch, context=timeline, recache=recache)
            per_video = []
            for r, clip, style in zip(rows, batch.clips, new_styles):
                err = tint_error(r.frames, clip, style)
                after = [x for x in clip_returns(r.frames, clip, start_frames=1) if x.frame >= args.change]
                first_chunk = err[first_after:first_after + chunk]
                per_video.append((float(first_chunk.mean()), float(err[args.change:].mean()),
                                  ReturnScores.of(after).primary))
            results[policy, recache] = per_video
    lines = [f"tiny world, free generation from the first frame, {args.frames} latent frames, {args.videos} videos "
             f"(tuning seed {TUNING_SEED}), style change at frame {args.change}, budgets at {args.budget:g} of the "
             f"36-frame clip", "",
             "| policy | re-caching | tint error, first chunk after | tint error, after the change | return score after |",
             "|---|---|---|---|---|"]
    for (policy, recache), vals in results.items():
        cells = []
        for i in range(3):
            m, lo, hi = mean_ci([v[i] for v in vals])
            cells.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}]")
        lines.append(f"| {policy} | {'on' if recache else 'off'} | " + " | ".join(cells) + " |")
    lines.append("")
    for policy in args.policies:
        on, off = results[policy, True], results[policy, False]
        for i, name in enumerate(("tint error, first chunk", "tint error, after", "return score")):
            m, lo, hi = mean_ci([a[i] - b[i] for a, b in zip(on, off)])
            lines.append(f"{policy}: re-caching minus not, {name}: {m:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    print("\n".join(lines))


if __name__ == "__main__":
    run_cli(main)
