"""Does the RECALL student follow the schedule it is given? (prints numbers): the issue's question of why free
generation's timeline stays far below the bar.

    python benchmarks/diagnose_schedule.py                                  # the committed student, keep-all
    python benchmarks/diagnose_schedule.py --student runs/J3.safetensors --policies keep_all,fifo

Free generation from the world's first frame (tuning seed by default), 108 frames, under three schedules given
as conditioning: the world's own, the curtain closed from the start on, and the world's shifted by
``--shift`` frames. The start fixes no schedule, so a student that follows its conditioning agrees with each
one alike; one that ignores it agrees with none. Per row the script prints the share of frames that show an
object (on any of the world's object cells), their agreement with the schedule given, and, under the world's
own schedule, the timeline errors split: closed frames that show an object, open frames that show none.
Watched, the same student under the world's own schedule gives the agreement its past makes easy.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.cli import existing_file, list_of, nonneg_int, positive_int, run_cli  # noqa: E402
from pafu_core.world.scenes import CLOSED, RECALL, frame_context  # noqa: E402
from pafu_lab.world.evaluate import BUDGETED, WATCHED_ONLY, Batch, check_policies, load_world_models, rollouts  # noqa: E402
from pafu_lab.world.metrics import cell_colors, object_mask  # noqa: E402

SCHEDULES = ("world", "closed", "shifted")
#: rows that run in free generation without a keep-all reference
POLICIES = ("keep_all",) + tuple(q for q in BUDGETED if q not in WATCHED_ONLY + ("oracle_causal",))


def given_schedule(clip, name: str, start: int, shift: int) -> torch.Tensor:
    """[F] long: the group the curtain shows per frame (``CLOSED``), as schedule ``name`` gives it after the
    ``start`` frames (which keep the world's)."""
    showing = clip.showing.clone()
    if name == "closed":
        showing[start:] = CLOSED
    elif name == "shifted":
        showing[start:] = torch.roll(clip.showing, shift)[start:]
    return showing


def schedule_agreement(video: torch.Tensor, clip, showing: torch.Tensor, start: int) -> dict:
    """Counts over the frames after ``start``: frames, open ones (as ``showing`` says), frames that agree (an
    object shown on one of the world's object cells exactly when open), closed frames showing an object, open
    frames showing none."""
    cells = torch.zeros(clip.cfg.cells, dtype=torch.bool)
    cells[clip.positions] = True
    shows = (object_mask(cell_colors(video, clip.cfg)) & cells).any(-1)[start:]
    open_ = (showing != CLOSED)[start:]
    return {"frames": len(open_), "open": int(open_.sum()), "agree": int((shows == open_).sum()),
            "closed_shows": int((shows & ~open_).sum()), "open_shows_none": int((~shows & open_).sum())}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", type=existing_file, default=None, help="default: the committed RECALL student")
    p.add_argument("--policies", type=list_of(str), default=["keep_all"])
    p.add_argument("--budget", type=float, default=0.25, help="budget of the budgeted policies (fraction of the clip)")
    p.add_argument("--videos", type=positive_int, default=8)
    p.add_argument("--frames", type=positive_int, default=108)
    p.add_argument("--seed", type=int, default=5000, help="noise and scene seed (default: the tuning seed)")
    p.add_argument("--shift", type=nonneg_int, default=5, help="frames the shifted schedule is moved by")
    args = p.parse_args(argv)
    policies = check_policies(args.policies, allowed=POLICIES)
    head_needed = any(q.startswith("pafu") for q in policies)
    student, head = load_world_models(student_path=args.student, world=RECALL, with_head=head_needed)
    styles = [i % RECALL.num_styles for i in range(args.videos)]
    print(f"{args.videos} videos of {args.frames} frames, seed {args.seed}; agreement: frames that show an object "
          "exactly when the schedule given says the curtain is open")
    print(f"{'mode':8} {'policy':12} {'schedule':9} {'showing':>8} {'agree':>6} {'closed, shows':>14} "
          f"{'open, none':>11}")
    for watched in (True, False):
        batch = Batch(seed=args.seed, frames=args.frames, styles=styles, watched=watched, world=RECALL,
                      start_frames=0 if watched else 1)
        for policy in policies:
            for name in SCHEDULES[:1] if watched else SCHEDULES:
                showing = [given_schedule(c, name, batch.start_frames, args.shift) for c in batch.clips]
                context = torch.cat([frame_context(c.style, s, RECALL) for c, s in zip(batch.clips, showing)])
                budget = None if policy == "keep_all" else args.budget
                rows = rollouts(student, head, policy, budget, batch, context=context)
                n = {k: sum(schedule_agreement(r.frames, batch.clips[r.row], showing[r.row], batch.start_frames)[k]
                            for r in rows) for k in ("frames", "open", "agree", "closed_shows", "open_shows_none")}
                shown = (n["closed_shows"] + n["open"] - n["open_shows_none"]) / n["frames"]
                closed = n["frames"] - n["open"]
                print(f"{'watched' if watched else 'free':8} {policy:12} {name:9} {shown:8.3f} "
                      f"{n['agree'] / n['frames']:6.3f} {n['closed_shows'] / max(1, closed):14.3f} "
                      f"{n['open_shows_none'] / max(1, n['open']):11.3f}", flush=True)


if __name__ == "__main__":
    run_cli(main)
