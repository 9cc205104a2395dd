"""Where the salience targets' time goes, and what cheaper targets keep of their ranking.

The node's targets (``future_student``) run the student over each rolled-out clip block by block at
every noise level of the sampler, and score every key by the max over each block's queries. Two savings:
fewer noise levels (``target_steps``) and a stride over the queries (``target_query_stride``). For each
variant this prints the time per clip and the Spearman of its targets to the full ones (per layer, over
the tokens; the static targets and the re-scorer's at every commit), mean over the clips.

    python benchmarks/bench_cheap_targets.py                       # the tiny world's student, 6 clips
    python benchmarks/bench_cheap_targets.py --wan13b --device cuda --clips 2   # Wan 2.1 1.3B shape (GPU)
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.adapter import WanChunkRunner  # noqa: E402
from pafu_core.cli import Parser, run_cli  # noqa: E402
from pafu_core.distill.features import commit_blocks  # noqa: E402
from pafu_core.distill.ranking import spearman  # noqa: E402
from pafu_core.distill.recipe import node_recipe  # noqa: E402
from pafu_core.distill.rollouts import rollout_clip  # noqa: E402
from pafu_core.distill.targets import sse_targets  # noqa: E402
from pafu_core.wan import WAN21_1_3B, WanDiT, load_wan_checkpoint  # noqa: E402
from pafu_core.world import assets  # noqa: E402
from pafu_core.world.scenes import DEFAULT_WORLD, style_context  # noqa: E402

VARIANTS = [(0, 1), (2, 1), (1, 1), (0, 2), (0, 4), (2, 2), (1, 4)]    # (target_steps, query_stride); 0: all steps


def layer_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over layers of the Spearman over tokens: a, b [layers, N]."""
    return statistics.fmean(float(spearman(x.double(), y.double())) for x, y in zip(a, b))


def timed_targets(runner, clip, cfg):
    sync = torch.cuda.synchronize if cfg.device.startswith("cuda") else (lambda: None)
    sync()
    tick = time.perf_counter()
    res = sse_targets(runner, clip.latents.to(cfg.device), clip.context.to(cfg.device), cfg.sse())
    sync()
    return res, time.perf_counter() - tick


def main(argv=None) -> None:
    p = Parser(prog="benchmarks/bench_cheap_targets.py", description=__doc__)
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--wan13b", action="store_true", help="random weights at the Wan 2.1 1.3B shape")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.wan13b:
        with torch.device(args.device):
            model = WanDiT(WAN21_1_3B).to(torch.bfloat16)
        size, prompts = (60, 104), [torch.randn(1, 16, 4096, generator=torch.Generator().manual_seed(i))
                                    for i in range(args.clips)]
    else:
        model = load_wan_checkpoint(assets.STUDENT)
        size, prompts = (DEFAULT_WORLD.grid * 2,) * 2, [style_context(i % 8) for i in range(args.clips)]
    runner = WanChunkRunner(model.to(args.device).eval().requires_grad_(False))
    base = node_recipe(dim=runner.dim, text_dim=runner.text_dim, contexts=prompts[:1], latent_size=size, budget=0.25,
                       device=args.device, dtype="bfloat16" if args.wan13b else "float32")
    tick = time.perf_counter()
    clips = [rollout_clip(runner, c, base, i) for i, c in enumerate(prompts)]
    rollout_s = (time.perf_counter() - tick) / len(clips)
    print(f"{runner.num_layers} layers, dim {runner.dim}, {base.rollout_frames} frames at {size[0]}x{size[1]} latents, "
          f"{len(clips)} clips on {args.device}; rollout {rollout_s:.2f} s per clip")
    print(f"{'steps':>6} {'q stride':>8} {'s / clip':>9} {'x faster':>8} {'rho static':>10} {'rho at commits':>14}")
    full, full_s = None, None
    for steps, stride in VARIANTS:
        cfg = dataclasses.replace(base, target_steps=steps, target_query_stride=stride)
        results = [timed_targets(runner, clip, cfg) for clip in clips]
        seconds = statistics.fmean(s for _, s in results)
        if full is None:
            full, full_s = [r for r, _ in results], seconds
        static = statistics.fmean(layer_spearman(r.targets[:, 0], f.targets[:, 0])
                                  for (r, _), f in zip(results, full))
        blocks = int(full[0].blocks.max()) + 1
        commits = commit_blocks(blocks, base.rollout_frames, base)
        at_commit = statistics.fmean(layer_spearman(r.at_commit(t)[:, 0], f.at_commit(t)[:, 0])
                                     for (r, _), f in zip(results, full) for t in commits)
        label = str(steps or len(base.timesteps))
        print(f"{label:>6} {stride:>8} {seconds:>9.3f} {full_s / seconds:>8.2f} {static:>10.3f} {at_commit:>14.3f}",
              flush=True)


if __name__ == "__main__":
    run_cli(main)
