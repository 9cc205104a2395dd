"""A head distilled the way the ComfyUI node does it (``pafu_core.distill``'s DistillJob with the node's
defaults), on the tiny world's shipped student, its eight styles as the prompt list: prints the time of
each stage and the held-out figures, and writes the head and its card (compare it with the shipped head
with ``bench_quality.py --world peekaboo --heads node=<out>``).

    python benchmarks/bench_node_recipe.py --out runs/node_head        # ~minutes on 2 CPU cores
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.adapter import WanChunkRunner  # noqa: E402
from pafu_core.cli import Parser, list_of, nonneg_int, one_of, run_cli  # noqa: E402
from pafu_core.distill.card import publish, summary_text  # noqa: E402
from pafu_core.distill.job import DistillJob, model_fingerprint  # noqa: E402
from pafu_core.distill.recipe import node_recipe  # noqa: E402
from pafu_core.wan import load_wan_checkpoint  # noqa: E402
from pafu_core.world import assets  # noqa: E402
from pafu_core.distill.videos import watched_counts  # noqa: E402
from pafu_core.world.codec import encode_frames  # noqa: E402
from pafu_core.world.scenes import DEFAULT_WORLD, STYLE_NAMES, render_clip, style_context  # noqa: E402


def main(argv=None) -> None:
    p = Parser(prog="benchmarks/bench_node_recipe.py", description=__doc__)
    p.add_argument("--out", default="runs/node_head", help="folder for the head and its card")
    p.add_argument("--name", default="node_head")
    p.add_argument("--budget", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=0, help="0: the node's default")
    p.add_argument("--rollouts", type=int, default=0, help="0: the node's default")
    p.add_argument("--clip-frames", type=int, default=0, help="0: the node's default")
    p.add_argument("--recency", type=float, default=None, help="override the recipe's recency (research)")
    p.add_argument("--age-form", default=None, help="override the recipe's age form (research)")
    p.add_argument("--work", default="runs/node_head_work", help="the job's work folder (resumable)")
    p.add_argument("--styles", type=list_of(one_of(STYLE_NAMES, "style")), default=list(STYLE_NAMES),
                   help="the prompt list: these styles, in order (the last quarter held out)")
    p.add_argument("--watch", type=nonneg_int, default=0,
                   help="videos of the world per prompt the model watches, as PaFu Tiny World Scene renders them "
                        "(prompt k: world seeds --world-seed + 100 k + i); 0: the model's own rollouts")
    p.add_argument("--world-seed", type=nonneg_int, default=700)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    student = load_wan_checkpoint(assets.STUDENT).eval().requires_grad_(False)
    runner = WanChunkRunner(student)
    styles = [STYLE_NAMES.index(s) for s in args.styles]
    prompts = [style_context(i) for i in styles]
    latent = DEFAULT_WORLD.grid * 2
    recipe = dict(dim=runner.dim, text_dim=runner.text_dim, contexts=prompts, latent_size=(latent, latent),
                  budget=args.budget, rollouts=args.rollouts, steps=args.steps, clip_frames=args.clip_frames)
    cfg = node_recipe(**recipe)
    videos = None
    if args.watch:
        videos = [torch.stack([encode_frames(render_clip(args.world_seed + 100 * k + i, cfg.rollout_frames,
                                                         style=style).frames) for i in range(args.watch)])
                  for k, style in enumerate(styles)]
        cfg = node_recipe(**recipe, watched=watched_counts(videos))
    overrides = {k: v for k, v in (("recency", args.recency), ("age_form", args.age_form)) if v is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    clock: dict[str, float] = {}
    last = {"stage": None, "t": time.perf_counter()}

    def progress(stage, done, total, left):
        if stage != last["stage"]:
            last.update(stage=stage, t=time.perf_counter())
        clock[stage] = time.perf_counter() - last["t"]
        if done == total:
            print(f"{stage:>11}: {total} done in {clock[stage]:.1f} s", flush=True)

    job = DistillJob(runner, prompts, cfg, args.work, progress=progress, videos=videos)
    tick = time.perf_counter()
    outcome = job.run()
    seconds = time.perf_counter() - tick
    head_path, card_path = publish(outcome, job, args.out, args.name, os.path.basename(assets.STUDENT),
                                   model_fingerprint(student), seconds)
    source = f"{cfg.rollouts} watched videos" if videos else f"{cfg.rollouts} rollouts"
    print(f"recipe: {source} ({cfg.heldout} held out) of {cfg.rollout_frames} frames, "
          f"{cfg.steps} + {cfg.rescore_steps} steps; {seconds / 60:.1f} min in all, threads {torch.get_num_threads()}")
    print(summary_text(outcome, head_path))
    print(f"card: {card_path}")


if __name__ == "__main__":
    run_cli(main)
