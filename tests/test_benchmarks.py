"""The quality benchmark's verdicts: paired differences and gap closure from the rows it scored."""

from types import SimpleNamespace

from benchmarks.bench_quality import verdicts


def rows(policy, budget, accuracies):
    return [SimpleNamespace(policy=policy, budget=budget, row=i, accuracy=a) for i, a in enumerate(accuracies)]


def test_verdicts_pair_against_the_baselines_present_and_measure_the_gap():
    scored = rows("fifo", 0.25, [0.0, 0.1, 0.2]) + rows("sink_window", 0.25, [0.2, 0.3, 0.4]) \
        + rows("oracle_world", 0.25, [0.8, 0.9, 1.0]) + rows("pafu", 0.25, [0.5, 0.6, 0.7])
    text, summary = verdicts(scored, [0.25], ["pafu"])
    m, lo, hi = summary["0.25:pafu"]["minus_fifo"]
    assert abs(m - 0.5) < 1e-9 and abs(hi - lo) < 1e-9       # the same difference on every video
    assert abs(summary["0.25:pafu"]["minus_sink_window"][0] - 0.3) < 1e-9
    assert abs(summary["0.25:pafu"]["gap_closed"] - 0.5) < 1e-9   # (0.6 - 0.3) / (0.9 - 0.3)
    assert "closes 50% of the gap" in text


def test_verdicts_of_a_subset_of_policies_skip_what_was_not_scored():
    text, summary = verdicts(rows("fifo", 0.25, [0.0, 0.1]) + rows("pafu", 0.25, [0.4, 0.6]), [0.25], ["pafu"])
    assert set(summary["0.25:pafu"]) == {"minus_fifo"}
    assert "sink_window" not in text and "gap" not in text
