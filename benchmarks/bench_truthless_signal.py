"""Can a user trust fidelity to keep-all where no truth exists? Its ranking of policies against the truth score's.

On a user's own model the only reference is the keep-all video with the same noise, so a head is judged
by PSNR against it. On the tiny worlds the truth is known: this script reads ``bench_quality.py``'s
``results.json`` files and prints how well PSNR-vs-keep-all ranks the budgeted rows (policies x budgets)
as the truth score ranks them: Spearman across rows (per budget and all together), and per video (the
rows of one video ranked by its PSNR against the same video's scores), with a 95% interval over videos.
Rows that reproduce keep-all exactly (infinite PSNR) and keep-all itself are left out. Nothing is run.

    python benchmarks/bench_truthless_signal.py runs/quality/results.json [more results.json ...]
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.cli import Parser, UserError, existing_file, run_cli  # noqa: E402
from pafu_core.distill.ranking import spearman  # noqa: E402
from pafu_lab.world.evaluate import mean_ci  # noqa: E402


def rank_agreement(rows: list[dict]) -> float:
    """Spearman between PSNR and score over ``rows`` (dicts with both), nan with fewer than three."""
    if len(rows) < 3:
        return math.nan
    psnr = torch.tensor([r["psnr"] for r in rows], dtype=torch.float64)
    score = torch.tensor([r["score"] for r in rows], dtype=torch.float64)
    return float(spearman(psnr, score))


def usable(video_rows: list[dict]) -> list[dict]:
    """Budgeted rows with a finite PSNR (keep-all is the reference; a row identical to it says nothing)."""
    return [r for r in video_rows if r["budget"] is not None and math.isfinite(r["psnr"])]


def report(path: str) -> str:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not JSON ({exc}); pass a results.json written by bench_quality.py") from None
    if not isinstance(data, dict) or "videos" not in data or "header" not in data:
        raise UserError(f"{path} is not a bench_quality.py results.json (it has no 'videos' and 'header')")
    videos = usable(data["videos"])
    if not videos:
        raise UserError(f"{path} has no budgeted rows with a finite PSNR against keep-all")
    means = defaultdict(list)
    for r in videos:
        means[(r["budget"], r["policy"])].append(r)
    rows = [dict(budget=b, policy=p, psnr=statistics.fmean(x["psnr"] for x in group),
                 score=statistics.fmean(x["score"] for x in group)) for (b, p), group in means.items()]
    by_budget = {b: [r for r in rows if r["budget"] == b] for b in sorted({r["budget"] for r in rows}, reverse=True)}
    lines = [data["header"], f"{len(rows)} budgeted rows (policy x budget), PSNR vs keep-all against the truth score:"]
    for budget, at in by_budget.items():
        lines.append(f"  {100 * budget:g}%: Spearman across {len(at)} policies {rank_agreement(at):+.3f}")
    lines.append(f"  every budget together: Spearman across {len(rows)} rows {rank_agreement(rows):+.3f}")
    per_video = defaultdict(list)
    for r in videos:
        per_video[(r["video"], r["budget"])].append(r)
    rhos = [rho for rho in (rank_agreement(group) for group in per_video.values()) if math.isfinite(rho)]
    if rhos:
        m, lo, hi = mean_ci(rhos)
        lines.append(f"  one video at a time (what a user sees): mean Spearman {m:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}] "
                     f"over {len(rhos)} video x budget groups")
    for budget, at in by_budget.items():
        best_psnr, best_score = max(at, key=lambda r: r["psnr"]), max(at, key=lambda r: r["score"])
        lines.append(f"  {100 * budget:g}%: highest PSNR {best_psnr['policy']} (score {best_psnr['score']:+.3f}); "
                     f"highest score {best_score['policy']} ({best_score['score']:+.3f})")
    return "\n".join(lines)


def main(argv=None):
    p = Parser(prog="benchmarks/bench_truthless_signal.py", description=__doc__)
    p.add_argument("results", nargs="+", type=existing_file, help="results.json files written by bench_quality.py")
    args = p.parse_args(argv)
    print("\n\n".join(report(path) for path in args.results))


if __name__ == "__main__":
    run_cli(main)
