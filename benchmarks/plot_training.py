"""The training curves of a chain of runs, drawn from the weights' own metadata (prints numbers too).

    python benchmarks/plot_training.py pafu_lab/assets/recall/runs/A2.safetensors \
        pafu_lab/assets/recall/runs/B2.safetensors --out docs/recall_training_curves.png

Every run of ``python -m pafu_lab.world.train`` writes its loss history (the mean loss of every
``log_every`` steps), its minutes and its recipe into the weights it saves. The runs are given in chain
order (each one's ``--init`` the one before); each curve starts where the one before it ended, so the
chart reads as one training. A run whose ``--init`` is another given file (by its name) starts where that one
ended instead: branches from one run (D2 and E2 from C2) start together. ``LABEL=path`` names a curve.
Losses of runs on different clips (42 frames, 108 frames through a tail) are not the same quantity, nor
losses under other weights (``--open-weight``): the chart labels each run with both, and the table prints
what each run trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.cli import existing_file, run_cli  # noqa: E402


def run_record(path: str) -> dict:
    """The recipe and loss history that ``pafu_lab.world.train`` stored in ``path``."""
    from safetensors import safe_open
    with safe_open(path, "pt") as fh:
        raw = (fh.metadata() or {}).get("pafu_world")
    if raw is None:
        raise ValueError(f"{path} holds no training record (pafu_world metadata): give weights that "
                         "python -m pafu_lab.world.train wrote")
    record = json.loads(raw)
    if not record.get("history"):
        raise ValueError(f"{path} was trained before runs kept their loss history: it has no curve to draw")
    return record


def minutes(record: dict) -> float:
    """The run's training minutes, over every resumed segment."""
    return round(sum(r["minutes"] for r in record.get("runs", [])), 1)


def labelled_file(text: str) -> tuple[str, str]:
    """``LABEL=path`` or ``path`` (labelled by its name) -> (label, path); the file must exist."""
    label, _, path = text.rpartition("=")
    path = existing_file(path)
    return label or os.path.splitext(os.path.basename(path))[0], path


def start_steps(runs: list[tuple[str, dict, str]], started_from: dict[str, str] | None = None) -> list[int]:
    """The chained step each run's curve starts at: where its ``--init`` ended when that is a given file (or
    the run ``started_from`` names for it), else where the run before it ended."""
    started_from = started_from or {}
    ends, offset, out = {}, 0, []
    for label, rec, path in runs:
        offset = ends.get(started_from.get(label, rec.get("init")), offset)
        out.append(offset)
        offset += rec["step"]
        ends[os.path.basename(path)] = ends[label] = offset
    return out


def started_from_pair(text: str) -> tuple[str, str]:
    """``RUN=INIT`` (both run labels) -> (RUN, INIT)."""
    run, sep, init = text.partition("=")
    if not (sep and run and init):
        raise argparse.ArgumentTypeError(f"expected RUN=INIT (two run labels), got {text!r}")
    return run, init


def render(runs: list[tuple[str, dict, str]], out: str, started_from: dict[str, str] | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=100)
    for (name, rec, _), offset in zip(runs, start_steps(runs, started_from)):
        steps, losses = zip(*rec["history"])
        ax.plot([offset + s for s in steps], losses, label=f"{name}: {rec['frames']} frames"
                + (f", tail {rec['tail']}" if rec.get("tail") else "")
                + (f", weights: {rec['open_weight']}" if rec.get("open_weight") else "") + f", {minutes(rec)} min")
        ax.axvline(offset + rec["step"], color="0.8", lw=0.8)
    ax.set_xlabel("step (chained)")
    ax.set_ylabel("training loss (mean of each logged window)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("RECALL student in the situation of inference")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", nargs="+", type=labelled_file,
                   help="the runs' weights ([LABEL=]path), in chain order: each after the run it started from")
    p.add_argument("--started-from", type=started_from_pair, action="append", default=[], metavar="RUN=INIT",
                   help="the run RUN started from the given run INIT, whatever name its recorded --init had then "
                        "(a file since renamed: D2=C2 where C2 was trained as pafu_recall_student.safetensors)")
    p.add_argument("--out", default="out/training_curves.png")
    args = p.parse_args(argv)
    runs = [(label, run_record(path), path) for label, path in args.weights]
    started_from = dict(args.started_from)
    unknown = sorted((set(started_from) | set(started_from.values())) - {label for label, _ in args.weights})
    if unknown:
        p.error(f"--started-from names runs not given: {', '.join(unknown)}")
    print("| run | init | frames | tail | steps | batch | lr | seed | minutes | first loss | final loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, rec, _ in runs:
        print(f"| {name} | {started_from.get(name, rec.get('init'))} | {rec['frames']} | {rec.get('tail') or '-'} | {rec['step']} | "
              f"{rec['batch']} | {rec['lr']} | {rec['seed']} | {minutes(rec)} | "
              f"{rec['history'][0][1]:.4f} | {rec['history'][-1][1]:.4f} |")
    render(runs, args.out, started_from)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
