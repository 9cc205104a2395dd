"""The README's ablation: distil one head per variant (targets, re-scoring, age input, training data),
then score every head on the tiny world's truth beside the heuristics and the oracles (prints numbers).

    python benchmarks/ablation.py --out runs/ablation                   # about 40 minutes on 2 CPU cores
    python benchmarks/ablation.py --variants more_data,entry_only --videos 8
    python benchmarks/ablation.py --variants more_data --recency-sweep 0,0.01,0.03,0.05,0.1,0.2,0.4

Variants are chosen on the *tuning* seed (``--seed``, default the tuning batch), never on the
evaluation seed that ``bench_quality.py`` reports. The student's own rollouts are generated once
(``rollouts.safetensors``) and shared by every variant trained on rollouts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.cli import Parser, existing_file, fraction_of, list_of, nonneg_float, one_of, output_dir, positive_int, run_cli  # noqa: E402,E501
from pafu_core.distill.recipe import DistillConfig  # noqa: E402
from pafu_lab.distill import distill  # noqa: E402
from pafu_core.salience import load_head, save_head  # noqa: E402
from pafu_core.world import assets  # noqa: E402
from pafu_lab.assets import TEACHER  # noqa: E402
from pafu_lab.world.clips import world_clips  # noqa: E402
from pafu_lab.world.evaluate import (TUNING_SEED, WATCHED_ONLY, check_budget_fraction, world_frames,  # noqa: E402
                                     world_models)
from pafu_core.world.scenes import DEFAULT_WORLD, WORLDS  # noqa: E402

#: the ablation's base recipe; every variant below changes one thing (``SHIPPED`` is the committed head's)
BASE = dict(student=assets.STUDENT, teacher=TEACHER, contexts="tiny_world", rollouts=28, heldout=4,
            rollout_frames=72, chunk_frames=3, targets="future_student", rescore=True, hidden=32,
            rescore_hidden=16, steps=600, rescore_steps=600, lr=3e-3, age_unit=float(DEFAULT_WORLD.clip_frames),
            eval_budget=0, seed=0)
SHIPPED = "recency"
#: the policies every head is scored beside
QUALITY_POLICIES = ("fifo", "sink_window", "standout", "attention_mass", "key_norm", "random", "standout_open",
                    "tell_rule", "oracle_world", "oracle_causal")
#: the shipped head's fixed recency term (salience per frame of age), chosen with --recency-sweep on the tuning seed
RECENCY = 0.05
#: the data and steps every head from "more_data" on is distilled with; LONG on 144-frame clips
MORE_DATA = dict(rollouts=56, heldout=8, steps=1200, rescore_steps=1200)
LONG = dict(MORE_DATA, rollout_frames=144)
VARIANTS = {
    "base": {},
    "sse_teacher_noisy": dict(targets="sse_teacher_noisy"),
    "future_teacher_noisy": dict(targets="future_teacher_noisy"),
    "sse_teacher_clean": dict(targets="sse_teacher_clean"),
    "entry_only": dict(rescore=False),
    "paper_entry_only": dict(targets="sse_teacher_clean", rescore=False),
    "no_age": dict(rescore_inputs=("entry", "newer")),
    "more_data": MORE_DATA,
    "recency": dict(MORE_DATA, recency=RECENCY),   # the shipped head
    "monotone_age": dict(MORE_DATA, age_form="monotone"),
    "superseded": dict(MORE_DATA, sse_supersede=True),
    "long_clips": LONG,
    "long_superseded": dict(LONG, sse_supersede=True),
    "long_half_superseded": dict(LONG, sse_supersede=True, sse_supersede_share=0.5),
    "long_half_superseded_monotone": dict(LONG, sse_supersede=True, sse_supersede_share=0.5, age_form="monotone"),
    "world_clips": dict(clips="world"),            # world clips instead of the student's rollouts (--no-watched)
}


def with_recency(path: str, recency: float, out_dir: str) -> str:
    """A copy of a head file with another fixed recency term (the weights untouched)."""
    head = load_head(path)
    head.config = dataclasses.replace(head.config, recency=recency)
    out = os.path.join(out_dir, f"{os.path.basename(path).removesuffix('.safetensors')}_recency{recency:g}.safetensors")
    save_head(head, out)
    return out


def main(argv=None):
    clip = f"{DEFAULT_WORLD.clip_frames}-frame training clip"
    p = Parser(prog="benchmarks/ablation.py", description=__doc__)
    p.add_argument("--variants", type=list_of(one_of(tuple(VARIANTS), "variant")), default=list(VARIANTS))
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--videos", type=positive_int, default=16)
    p.add_argument("--frames", type=world_frames, default=10 * DEFAULT_WORLD.clip_frames)
    p.add_argument("--seed", type=int, default=TUNING_SEED, help="noise seed of the scoring batch (tuning)")
    p.add_argument("--budgets", type=list_of(fraction_of(DEFAULT_WORLD.clip_frames, clip)), default=[0.25, 0.125],
                   help=f"comma-separated fractions of the {clip}")
    p.add_argument("--recency-sweep", type=list_of(nonneg_float), default=None,
                   help="comma-separated recency terms: score the first variant's head with each (same weights)")
    p.add_argument("--head-seed", type=int, default=BASE["seed"],
                   help="seed of every head's distillation (its init and batches): rerun with another to see the spread")
    p.add_argument("--watched", action=argparse.BooleanOptionalAction, default=True,
                   help="the benchmark's setting: the model watches the world, so every head learns from world clips")
    p.add_argument("--world", choices=sorted(WORLDS), default=DEFAULT_WORLD.name,
                   help="the world whose clips the heads learn from and are scored on")
    p.add_argument("--student", type=existing_file, default=None,
                   help="the causal student trained on that world (default: the world's committed one)")
    args = p.parse_args(argv)
    world = WORLDS[args.world]
    args.student = args.student or world_models(world)[0]
    policies = [q for q in QUALITY_POLICIES if args.watched or q not in WATCHED_ONLY]   # free: no tell_rule
    for b in args.budgets:                   # the scoring below runs sink_window: checked before any distillation
        check_budget_fraction(b, policies, flag="--budgets")
    output_dir(args.out, "--out")
    os.makedirs(args.out, exist_ok=True)
    rollouts = os.path.join(args.out, "rollouts.safetensors")
    heads = {}
    for name in dict.fromkeys(args.variants):
        fields = dict(BASE, student=args.student, seed=args.head_seed, **VARIANTS[name])
        if fields.get("clips") == "world" or args.watched:
            path = os.path.join(args.out, f"world_clips_{fields['rollouts']}x{fields['rollout_frames']}.safetensors")
            if not os.path.exists(path):
                from safetensors.torch import save_file
                lat, ctx = world_clips(fields["rollouts"], fields["rollout_frames"], seed=7, cfg=world)
                save_file({"latents": lat.contiguous(), "context": ctx.contiguous()}, path)
            fields["clips"] = path
        elif os.path.exists(rollouts):
            fields["clips"] = rollouts
        else:
            fields["save_clips"] = rollouts
        out = os.path.join(args.out, f"head_{name}.safetensors")
        if not os.path.exists(out):
            print(f"== distilling {name}: {json.dumps(VARIANTS[name])}", flush=True)
            with torch.no_grad():
                _, metrics = distill(DistillConfig(**fields, out=out))
            print(json.dumps({k: v for k, v in metrics.items() if k != "timing"}), flush=True)
        heads[name] = out
    if args.recency_sweep:
        first = next(iter(heads))
        for value in args.recency_sweep:
            heads[f"{first}+recency{value:g}"] = with_recency(heads[first], value, args.out)
    from benchmarks import bench_quality
    bench_quality.main(["--videos", str(args.videos), "--frames", str(args.frames), "--seed", str(args.seed),
                        "--budgets", ",".join(map(repr, args.budgets)), "--policies", ",".join(policies),
                        "--heads", ",".join(f"{k}={v}" for k, v in heads.items()),
                        "--head", heads.get(SHIPPED, next(iter(heads.values()))), "--out", os.path.join(args.out, "quality"),
                        "--world", world.name, "--student", args.student,
                        "--watched" if args.watched else "--no-watched"])


if __name__ == "__main__":
    run_cli(main)
