"""README main job: one long tiny-world video under every policy at the same budget, side by side.

    python -m pafu_lab.demo                      # 360 latent frames (10x the training clip), 25% budget
    python -m pafu_lab.demo --frames 72 --out /tmp/pafu-demo

The model *watches* the world: it predicts each chunk from its cache, then the cache takes the
world's real chunk (``--free`` lets it roll out on its own frames instead). What must be remembered
is the objects' colours at their latest appearance, twelve frames before they return: beyond a FIFO
window, and changed since the first frame that a sink keeps.

A single example video (one noise seed): the benchmark (``benchmarks/bench_quality.py``) runs 16
videos for the statistics. Writes, into ``--out``: ``side_by_side.mp4`` (every policy, labelled, with
a frame counter; when the objects return, a green frame if that policy brought them back with the
colours they last had, red if not), ``side_by_side_return.png`` (one such moment), ``kept_tokens.mp4``
(for each frame, which of its tokens each policy's cache still holds at the end), ``curves.png``
(K/V held and chunk time per frame) and ``results.md``. Uses only the committed weights; no download.
"""

from __future__ import annotations

import os

import torch
from PIL import Image
from tqdm.auto import tqdm

from pafu_core.cli import Parser, UserError, fraction_of, list_of, one_of, output_dir, positive_int, run_cli
from pafu_core.plots import render_curves, render_token_heatmaps
from pafu_core.world.scenes import DEFAULT_WORLD, STYLE_NAMES

from .video import panels, to_uint8, write_mp4
from .world.evaluate import (BUDGETED, TABLE_LEGEND, Batch, check_budget_fraction, check_policies,
                             compare_to_reference, load_world_models, rollouts, table, world_frames)
from .world.metrics import returns, watched_returns

DEFAULT_POLICIES = ("fifo", "sink_window", "standout", "pafu")


def main(argv=None) -> None:
    p = Parser(prog="python -m pafu_lab.demo", description=__doc__)
    p.add_argument("--frames", type=world_frames, default=10 * DEFAULT_WORLD.clip_frames,
                   help=f"latent frames to generate (at least {2 * DEFAULT_WORLD.period}: two periods of the world)")
    p.add_argument("--budget", type=fraction_of(DEFAULT_WORLD.clip_frames,
                                                f"{DEFAULT_WORLD.clip_frames}-frame training clip"),
                   default=0.25, help=f"fraction of the training clip's {DEFAULT_WORLD.clip_frames} frames")
    p.add_argument("--seed", type=int, default=1, help="noise seed of the example video")
    p.add_argument("--style", choices=STYLE_NAMES, default="blue")
    p.add_argument("--policies", type=list_of(one_of(BUDGETED, "policy")), default=list(DEFAULT_POLICIES),
                   help=f"budgeted policies to compare with keep-all (any of {', '.join(BUDGETED)})")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--scale", type=positive_int, default=12, help="nearest-neighbour upscale of the 16x16 frames")
    p.add_argument("--free", action="store_true", help="free rollouts: the cache holds the model's own frames")
    args = p.parse_args(argv)
    policies = ["keep_all"] + list(dict.fromkeys(check_policies(args.policies)))
    check_budget_fraction(args.budget, policies[1:])           # before any rollout, in the flag's unit
    if args.scale > 64:
        raise UserError(f"--scale {args.scale} is too large (frames of {16 * args.scale} pixels); use at most 64")
    output_dir(args.out, "--out")
    os.makedirs(args.out, exist_ok=True)

    with torch.no_grad():              # local: leaves the caller's grad mode alone
        run_demo(args, policies)


def run_demo(args, policies: list[str]) -> None:
    student, head = load_world_models()
    batch = Batch(seed=args.seed, frames=args.frames, styles=[STYLE_NAMES.index(args.style)], watched=not args.free)
    truth = batch.truth[0] if batch.watched else None
    chunks = -(-args.frames // batch.sampler.chunk_frames)
    bar = tqdm(total=len(policies) * chunks, desc=f"rollouts ({args.frames} frames x {len(policies)} policies)")
    rolls = []
    for name in policies:
        bar.set_postfix(policy=name)
        rolls += rollouts(student, head, name, None if name == "keep_all" else args.budget, batch,
                          chunk_callback=lambda stats, x0: bar.update(), reference=rolls[:1])
    bar.close()
    compare_to_reference(rolls[1:], rolls[:1])
    budget = f"{100 * args.budget:g}% budget"
    label = {r.policy: f"{r.policy} ({'unbounded' if r.policy == 'keep_all' else budget})" for r in rolls}

    videos, marks, events = {}, {}, {}
    if truth is not None:
        videos["the world (watched)"] = to_uint8(truth, args.scale)
    for r in rolls:
        videos[label[r.policy]] = to_uint8(r.frames, args.scale)
        marks[label[r.policy]] = {}
        for ret in (returns(r.frames) if truth is None else watched_returns(r.frames, truth)):
            for t in range(ret.frame, min(ret.frame + DEFAULT_WORLD.visible_frames, args.frames)):
                marks[label[r.policy]][t] = ret.all_right
    for start in range(DEFAULT_WORLD.period, args.frames, DEFAULT_WORLD.period):
        for t in range(start, min(start + DEFAULT_WORLD.visible_frames, args.frames)):
            events[t] = "the objects return: green = all right and nothing invented, red = not"
    side = panels(videos, marks, events)
    write_mp4(side, os.path.join(args.out, "side_by_side.mp4"), desc="side_by_side.mp4")
    last_return = max((t for t in events if t < args.frames - 1), default=args.frames - 1)
    Image.fromarray(side[last_return]).save(os.path.join(args.out, "side_by_side_return.png"))

    kept = {}
    for r in rolls[1:]:
        frames01 = torch.from_numpy(to_uint8(r.frames, args.scale)).float() / 255
        heat = render_token_heatmaps(r.report, r.report.grid_hw, frames01)
        kept[label[r.policy]] = (heat.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    legend = {0: "kept tokens: a token in its own colours is still in the cache at the end (every layer); "
                 "dimmed = evicted by some layers; nearly black = evicted by all"}
    write_mp4(panels(kept, events={t: legend[0] for t in range(args.frames)}),
              os.path.join(args.out, "kept_tokens.mp4"), desc="kept_tokens.mp4")
    Image.fromarray(render_curves([r.report for r in rolls], timing_note="this run's machine, indicative only")).save(
        os.path.join(args.out, "curves.png"))

    mode = "the model watches the world" if truth is not None else "free rollout"
    text = (f"One example video (noise seed {args.seed}, style {args.style}, {mode}): tiny world, {args.frames} latent frames "
            f"({args.frames / DEFAULT_WORLD.clip_frames:g}x the training clip), budget {100 * args.budget:g}% of "
            f"{DEFAULT_WORLD.clip_frames} frames. A single video has no spread; for 16 videos with confidence "
            f"intervals run `python benchmarks/bench_quality.py`.\n\n" + table(rolls, single=True)
            + "\n\n" + TABLE_LEGEND)
    with open(os.path.join(args.out, "results.md"), "w") as fh:
        fh.write(text + "\n")
    print(text)
    print(f"\nwrote {args.out}/: side_by_side.mp4, side_by_side_return.png, kept_tokens.mp4, curves.png, results.md")


if __name__ == "__main__":
    run_cli(main)
