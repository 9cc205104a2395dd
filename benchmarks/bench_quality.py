"""Quality vs budget on the tiny world: every policy, oracle bounds, paired statistics (prints numbers).

    python benchmarks/bench_quality.py                              # 16 videos, 25% and 12.5%, 360 frames
    python benchmarks/bench_quality.py --videos 4 --frames 108      # a quicker look
    python benchmarks/bench_quality.py --heads entry_only=runs/h.safetensors   # ablation heads beside pafu

All policies run on the same videos (row i: style i mod 8, its own noise from ``--seed``, by default
the evaluation seed that no training, distillation or tuning ever used). The keep-all rollout is the
fidelity reference. For every budget the script prints pafu's per-video paired differences to FIFO
and sink+window and to the best training-free policy (the best heuristic but random) with 95% confidence
intervals, and how much of the gap between the best heuristic
and the best oracle pafu closes. Writes ``--out``: results.md, results.json, accuracy_vs_budget.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.cli import (Parser, UserError, existing_file, fraction_of, list_of, nonneg_int, one_of,  # noqa: E402
                           output_dir, positive_int, run_cli)
from pafu_lab.charts import plot_accuracy_vs_budget  # noqa: E402
from pafu_core.policies import policy_entry, policy_names  # noqa: E402
from pafu_core.salience import load_head  # noqa: E402
from pafu_lab.world.evaluate import (BUDGETED, EVAL_SEED, ORACLES, RECALL_EVAL_SEED, TABLE_LEGEND, WATCHED_ONLY,  # noqa: E402
                                      Batch, check_budget_fraction, check_policies, compare_to_reference, eval_seed,
                                      load_world_models, mean_ci, paired, rollouts, row_policy, table,
                                      training_free_row, world_frames)
from pafu_lab.world.metrics import CHANCE  # noqa: E402
from pafu_core.world.scenes import DEFAULT_WORLD, WORLDS  # noqa: E402


def verdicts(rows, budgets, learned: list[str]) -> tuple[str, dict]:
    """Paired differences and gap closure, per budget and learned policy."""
    lines, summary = [], {}
    for b in budgets:
        def acc(p):
            return mean_ci([r.accuracy for r in rows if r.policy == p and r.budget == b])[0]
        present = list(dict.fromkeys(r.policy for r in rows if r.budget == b))
        heur = {p: acc(p) for p in present if training_free_row(p)}
        orac = {p: acc(p) for p in ORACLES if any(r.policy == p and r.budget == b for r in rows)}
        best_h = max(heur, key=heur.get) if heur else None
        best_o = max(orac, key=orac.get) if orac else None
        for name in learned:
            entry = {}
            free = [p for p in heur if not policy_entry(row_policy(p)[0]).control]   # random is the floor
            best_free = max(free, key=heur.get) if free else None
            bases = [p for p in ("fifo", "sink_window", "deep_forcing") if p in heur]   # the ones this run scored
            if best_free is not None and best_free not in bases:
                bases.append(best_free)
            for base in bases:
                m, lo, hi = paired(rows, name, base, b)
                entry[f"minus_{base}"] = (m, lo, hi)
                best = "  <- the best training-free policy" if base == best_free else ""
                lines.append(f"{100 * b:g}% {name} - {base}: {m:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}]"
                             f"{'  (above zero)' if lo > 0 else ''}{best}")
            if best_o is not None and best_h is not None:
                gap = orac[best_o] - heur[best_h]
                closed = (acc(name) - heur[best_h]) / gap if gap > 0 else float("nan")
                entry["gap_closed"] = closed
                lines.append(f"{100 * b:g}% {name}: closes {100 * closed:.0f}% of the gap between the best "
                             f"heuristic ({best_h} {heur[best_h]:.3f}) and the best oracle ({best_o} {orac[best_o]:.3f})"
                             if gap > 0 else
                             f"{100 * b:g}% {name}: no gap to close: the best oracle ({best_o} {orac[best_o]:.3f}) scores "
                             f"below the best heuristic ({best_h} {heur[best_h]:.3f}), so it bounds nothing here")
            summary[f"{b}:{name}"] = entry
    return "\n".join(lines), summary


def head_spec(text: str) -> tuple[str, str]:
    """``name=path`` of an extra head (the file must exist)."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not name=path (e.g. entry_only=runs/h.safetensors)")
    return name.strip(), existing_file(path.strip())


def main(argv=None):
    clip = f"{DEFAULT_WORLD.clip_frames}-frame training clip"
    p = Parser(prog="benchmarks/bench_quality.py", description=__doc__)
    p.add_argument("--videos", type=positive_int, default=16)
    p.add_argument("--frames", type=world_frames, default=10 * DEFAULT_WORLD.clip_frames)
    p.add_argument("--budgets", type=list_of(fraction_of(DEFAULT_WORLD.clip_frames, clip)), default=[0.25, 0.125],
                   help=f"comma-separated fractions of the {clip}")
    p.add_argument("--policies", type=list_of(one_of(BUDGETED, "policy")), default=None,
                   help=f"budgeted rows (default: all of them: {', '.join(BUDGETED)}; without --watched, all but "
                        "tell_rule, which reads the frames the cache is written with)")
    p.add_argument("--heads", type=list_of(head_spec), default=[],
                   help="extra heads to compare, as name=path,... (run as policy pafu[name])")
    p.add_argument("--head", type=existing_file, default=None,
                   help="the head that the policy 'pafu' uses (default: the world's committed one)")
    p.add_argument("--student", type=existing_file, default=None,
                   help="the causal student to roll out (default: the world's committed one)")
    p.add_argument("--world", choices=sorted(WORLDS), default=DEFAULT_WORLD.name,
                   help="the world the videos come from (its student and head must be trained on it)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"noise seed of the batch (default: the world's evaluation seed: {EVAL_SEED}, RECALL {RECALL_EVAL_SEED})")
    p.add_argument("--kv-storage", default="model", choices=("model", "int8"))
    p.add_argument("--watched", action=argparse.BooleanOptionalAction, default=True,
                   help="the model watches the world: the cache holds the real frames after each prediction")
    p.add_argument("--start-frames", type=nonneg_int, default=None,
                   help="the world's first latent frames given as the start (written to the cache, kept like "
                        "sinks); default: 1 for free generation (--no-watched), which then scores against the "
                        "truth they fix, 0 when watching")
    p.add_argument("--out", default="out/bench_quality")
    args = p.parse_args(argv)
    budgets = args.budgets
    if args.policies is None:
        args.policies = [q for q in BUDGETED if args.watched or q not in WATCHED_ONLY]
    elif not args.watched and (bad := [q for q in args.policies if q in WATCHED_ONLY]):
        raise UserError(f"{bad[0]} reads the frames the cache is written with, which only a watched batch has: "
                        "leave it out of --policies with --no-watched")
    policies = list(dict.fromkeys(check_policies(args.policies)))
    for b in budgets:                        # before any model work, in the flag's unit
        check_budget_fraction(b, policies, flag="--budgets")
    output_dir(args.out, "--out")
    for path in [args.head] + [path for _, path in args.heads]:
        if path:
            load_head(path)                  # a file that is no head: one sentence, before the student loads
    torch.set_grad_enabled(False)
    os.makedirs(args.out, exist_ok=True)
    world = WORLDS[args.world]
    student, head = load_world_models(head_path=args.head, student_path=args.student, world=world,
                                      with_head=any(row_policy(q)[0] == "pafu" for q in policies))
    if args.seed is None:
        args.seed = eval_seed(world)
    heads = {"pafu": head}
    for name, path in args.heads:
        heads[f"pafu[{name}]"] = load_head(path)
        heads[f"pafu[{name}]"].check_backbone(student)
        policies.append(f"pafu[{name}]")
    batch = Batch(seed=args.seed, frames=args.frames, styles=[i % world.num_styles for i in range(args.videos)],
                  watched=args.watched, world=world,
                  start_frames=(0 if args.watched else 1) if args.start_frames is None else args.start_frames)
    bar = tqdm(total=1 + len(budgets) * len(policies), desc="batched rollouts")   # an upper bound
    refs = rollouts(student, None, "keep_all", None, batch, kv_storage=args.kv_storage)
    bar.update()
    rows = list(refs)
    unbounded = [q for q in policies if (base := row_policy(q)[0]) in policy_names() and not policy_entry(base).bounded]
    for pol in unbounded:                   # rows without a budget (keep-all at other positions) run once
        group = rollouts(student, None, pol, None, batch, reference=refs, kv_storage=args.kv_storage)
        compare_to_reference(group, refs)
        rows += group
        bar.update()
    for b in budgets:
        for pol in (q for q in policies if q not in unbounded):
            bar.set_postfix(budget=b, policy=pol)
            group = rollouts(student, heads.get(pol, heads.get(row_policy(pol)[0])), pol, b, batch, reference=refs,
                             kv_storage=args.kv_storage)
            compare_to_reference(group, refs)
            rows += group
            bar.update()
    bar.close()
    learned = [q for q in policies if row_policy(q)[0] == "pafu"]
    text, summary = verdicts(rows, budgets, learned)
    mode = ("watching the world (the cache holds its real frames)" if args.watched
            else "free generation (the cache holds the model's own frames)")
    if batch.start_frames:
        mode += f", from the world's first {batch.start_frames} latent frame{'s' * (batch.start_frames > 1)}"
    header = (f"tiny world {world.name}, {mode}, {args.frames} latent frames, {args.videos} videos (seed {args.seed}), budgets as "
              f"fractions of the {DEFAULT_WORLD.clip_frames}-frame training clip, K/V storage {args.kv_storage}, "
              f"CPU threads {torch.get_num_threads()}; chance = {CHANCE:.3f}")
    report = header + "\n\n" + table(rows) + "\n\n" + TABLE_LEGEND + "\n\n" + text
    print(report)
    with open(os.path.join(args.out, "results.md"), "w") as fh:
        fh.write(report + "\n")
    per_video = [{"policy": r.policy, "budget": r.budget, "video": r.row, "score": r.accuracy, "recall": r.recall,
                  "false_rate": r.false_rate, "all_right": r.all_right, "self_consistent": r.consistency,
                  "timeline": r.timeline,
                  "psnr": r.psnr, "change": r.change, "rhythm": r.schedule} for r in rows]
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump({"header": header, "verdicts": summary, "videos": per_video}, fh, indent=1)
    plot_accuracy_vs_budget(rows, budgets, ["keep_all"] + policies, os.path.join(args.out, "accuracy_vs_budget.png"),
                            frames=args.frames, chance=CHANCE)
    print(f"\nwrote {args.out}/results.md, results.json and accuracy_vs_budget.png")


if __name__ == "__main__":
    run_cli(main)
