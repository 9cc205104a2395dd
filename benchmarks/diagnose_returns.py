"""Where the RECALL student's returns go wrong, by cause (prints numbers): the issue's question of why the
student cannot use a sparse cache, even the world oracle's.

    python benchmarks/diagnose_returns.py --frames 42                      # the committed student
    python benchmarks/diagnose_returns.py --student runs/C.safetensors --frames 108

For every return (the first frame of an opening, watched, the tuning seed by default) each wanted object is
right, shown in another colour, or not shown; each invented object (where no decoy can land) sits on a cell
of the *other* group (an object not due: the student mixed the groups up) or on a clean cell (one no object
ever uses). Per policy and budget the script prints each cause per returning object, so the next recipe
aims at the cause that dominates.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.cli import existing_file, list_of, positive_int, run_cli  # noqa: E402
from pafu_core.world.scenes import RECALL  # noqa: E402
from pafu_lab.world.evaluate import Batch, load_world_models, rollouts  # noqa: E402
from pafu_lab.world.metrics import MATCH_TOLERANCE, cell_colors, object_mask, world_labels  # noqa: E402

CAUSES = ("right", "wrong_colour", "not_shown", "other_group", "clean_cell")


def causes(video: torch.Tensor, clip) -> torch.Tensor:
    """[5] counts over the clip's returns (see ``CAUSES``); ``video`` [F, 3, H, W] made watching ``clip``."""
    cfg = clip.cfg
    true_c, got_c = cell_colors(clip.frames, cfg), cell_colors(video, cfg)
    got = object_mask(got_c)
    labels = world_labels(clip)                                        # [F, cells]
    object_cells = torch.zeros(cfg.cells, dtype=torch.bool)
    object_cells[clip.positions] = True
    clean = ~object_cells & ~clip.decoy_area
    starts = (clip.visible & ~torch.cat([torch.zeros(1, dtype=torch.bool), clip.visible[:-1]])).nonzero().flatten()
    seen = torch.zeros(cfg.cells, dtype=torch.bool)
    out = torch.zeros(len(CAUSES))
    for i, b0 in enumerate(starts.tolist()):
        want = labels[b0] & seen
        if want.any():
            close = (got_c[b0] - true_c[b0]).norm(dim=-1) < MATCH_TOLERANCE
            out += torch.tensor([(want & got[b0] & close).sum(), (want & got[b0] & ~close).sum(),
                                 (want & ~got[b0]).sum(), (got[b0] & object_cells & ~labels[b0]).sum(),
                                 (got[b0] & clean).sum()], dtype=torch.float32)
        end = int(starts[i + 1]) if i + 1 < len(starts) else len(clip.visible)
        seen |= labels[b0:end].any(dim=0)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", type=existing_file, default=None, help="RECALL student (default: the committed one)")
    p.add_argument("--head", type=existing_file, default=None, help="head for the pafu rows (default: committed)")
    p.add_argument("--seed", type=int, default=5000, help="noise seed (default: the tuning seed)")
    p.add_argument("--videos", type=positive_int, default=16)
    p.add_argument("--frames", type=positive_int, default=42)
    p.add_argument("--rows", type=list_of(str), default=["keep_all", "oracle_world@0.25", "oracle_world@0.125",
                                                         "pafu@0.25", "fifo@0.25"],
                   help="policy@budget rows (keep_all without a budget)")
    args = p.parse_args(argv)
    student, head = load_world_models(world=RECALL, student_path=args.student, head_path=args.head)
    batch = Batch(seed=args.seed, frames=args.frames, styles=[i % RECALL.num_styles for i in range(args.videos)],
                  watched=True, world=RECALL)
    print(f"watched, {args.videos} videos x {args.frames} frames, seed {args.seed}; per returning object:")
    print("| row | score | " + " | ".join(CAUSES) + " |")
    print("|---|---|" + "---|" * len(CAUSES))
    for row in args.rows:
        name, _, budget = row.partition("@")
        rolls = rollouts(student, head, name, float(budget) if budget else None, batch)
        counts = torch.stack([causes(r.frames, c) for r, c in zip(rolls, batch.clips)]).sum(0)
        wanted = counts[:3].sum().clamp(min=1)
        score = sum(r.accuracy for r in rolls) / len(rolls)
        print(f"| {row} | {score:+.3f} | " + " | ".join(f"{v / wanted:.3f}" for v in counts) + " |")


if __name__ == "__main__":
    run_cli(main)
