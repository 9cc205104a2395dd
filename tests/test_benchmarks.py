"""The quality benchmark's verdicts: paired differences and gap closure from the rows it scored."""

from types import SimpleNamespace

import torch

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


def test_training_curves_chain_the_runs_and_refuse_weights_without_a_record(tmp_path, capsys):
    import json

    import pytest
    import torch
    from safetensors.torch import save_file

    from benchmarks.plot_training import main, run_record, start_steps

    def weights(name, record):
        path = str(tmp_path / f"{name}.safetensors")
        save_file({"w": torch.zeros(1)}, path, metadata=None if record is None else {"pafu_world": json.dumps(record)})
        return path

    first = weights("A", {"frames": 42, "tail": None, "step": 100, "batch": 8, "lr": 4e-4, "seed": 21,
                          "init": None, "runs": [{"minutes": 1.5}, {"minutes": 2.0}],
                          "history": [[50, 0.2], [100, 0.1]]})
    second = weights("B", {"frames": 108, "tail": 42, "step": 50, "batch": 4, "lr": 3e-4, "seed": 22,
                           "init": "A.safetensors", "runs": [{"minutes": 4.0}], "history": [[50, 0.3]]})
    out = tmp_path / "curves.png"
    main([first, second, "--out", str(out)])
    table = capsys.readouterr().out
    assert "| A | None | 42 | - | 100 | 8 | 0.0004 | 21 | 3.5 | 0.2000 | 0.1000 |" in table  # resumed minutes add up
    assert "| B | A.safetensors | 108 | 42 | 50 |" in table
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    third = weights("C", {"frames": 108, "tail": 42, "step": 30, "batch": 4, "lr": 2e-4, "seed": 23,
                          "init": "A.safetensors", "runs": [{"minutes": 1.0}], "history": [[30, 0.2]]})
    runs = [(n, run_record(p), p) for n, p in (("A", first), ("B", second), ("C", third))]
    assert start_steps(runs) == [0, 100, 100]                  # C branches from A as B does, not after B
    main([first, f"branch={third}", "--out", str(out)])
    assert "| branch | A.safetensors |" in capsys.readouterr().out
    renamed = weights("D", {"frames": 108, "tail": 42, "step": 20, "batch": 4, "lr": 2e-4, "seed": 24,
                            "init": "committed.safetensors", "runs": [{"minutes": 1.0}], "history": [[20, 0.2]]})
    runs.append(("D", run_record(renamed), renamed))
    assert start_steps(runs) == [0, 100, 100, 130]             # an init no file has now: after the run before
    assert start_steps(runs, {"D": "B"}) == [0, 100, 100, 150]  # told which run it was: where B ended
    main([first, second, renamed, "--started-from", "D=B", "--out", str(out)])
    assert "| D | B |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([first, "--started-from", "D=A", "--out", str(out)])
    with pytest.raises(ValueError, match="no training record"):
        run_record(weights("bare", None))
    with pytest.raises(ValueError, match="no curve"):
        run_record(weights("old", {"frames": 42}))


def test_schedule_agreement_counts_a_video_against_the_schedule_it_was_given(capsys):
    """The world's own frames agree with the world's schedule everywhere; against the curtain closed from the
    start on, exactly their open frames disagree, each a closed frame that shows an object. The script runs."""
    import pytest
    from benchmarks.diagnose_schedule import given_schedule, main, schedule_agreement
    from pafu_core.cli import UserError
    from pafu_core.world.scenes import RECALL, render_clip

    clip = render_clip(5, 60, style=0, cfg=RECALL)
    own = schedule_agreement(clip.frames, clip, given_schedule(clip, "world", 1, 5), 1)
    assert own["agree"] == own["frames"] == 59 and own["open"] == int(clip.visible[1:].sum()) > 0
    assert own["closed_shows"] == own["open_shows_none"] == 0
    closed = schedule_agreement(clip.frames, clip, given_schedule(clip, "closed", 1, 5), 1)
    assert closed["open"] == 0 and closed["closed_shows"] == own["open"] == own["frames"] - closed["agree"]
    shifted = given_schedule(clip, "shifted", 1, 5)
    assert torch.equal(shifted[:1], clip.showing[:1]) and torch.equal(shifted[6:], clip.showing[1:-5])
    main(["--videos", "1", "--frames", "12"])
    out = capsys.readouterr().out
    assert "free     keep_all     closed" in out and "watched  keep_all     world" in out
    with pytest.raises(UserError, match="tell_rule"):
        main(["--policies", "tell_rule"])
