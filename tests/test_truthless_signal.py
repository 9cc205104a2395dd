"""The truth-free signal's check reads bench_quality's results and ranks as it should."""

import json
import math

import pytest

from benchmarks.bench_truthless_signal import main, report
from pafu_core.cli import UserError


def results(tmp_path, psnr_of):
    videos = [dict(policy="keep_all", budget=None, video=v, score=0.5, psnr=math.nan) for v in range(3)]
    for v in range(3):
        for i, policy in enumerate(("fifo", "standout", "pafu", "random")):
            for budget in (0.25, 0.125):
                score = i + budget + 0.1 * v
                videos.append(dict(policy=policy, budget=budget, video=v, score=score, psnr=psnr_of(score)))
    videos.append(dict(policy="fifo@realigned", budget=0.25, video=0, score=9.0, psnr=math.inf))   # left out
    path = tmp_path / "results.json"
    path.write_text(json.dumps(dict(header="test batch", verdicts={}, videos=videos)))
    return str(path)


def test_a_signal_that_orders_as_the_truth_scores_plus_one_and_its_reverse_minus_one(tmp_path):
    same = report(results(tmp_path, lambda s: 20 + s))
    assert "25%: Spearman across 4 policies +1.000" in same and "every budget together: Spearman across 8 rows +1.000" in same
    assert "mean Spearman +1.000" in same and "highest PSNR random" in same
    reverse = report(results(tmp_path, lambda s: 20 - s))
    assert "12.5%: Spearman across 4 policies -1.000" in reverse and "highest PSNR fifo" in reverse


def test_refuses_a_file_that_is_not_a_quality_results_file(tmp_path, capsys):
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a bench_quality.py results.json"):
        report(str(tmp_path / "x.json"))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.json")])
