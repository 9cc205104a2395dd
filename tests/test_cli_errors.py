"""Every command line of the pack turns a user's mistake into one sentence on stderr and exit status 2, with
no traceback (``--debug`` shows it), and catches the mistake before any model work (each run here takes a
few seconds: the time to import torch)."""

import os
import pickle
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
MARKER = "pafu_cli_pickle_ran.txt"


def run(*args, timeout=120):
    """``python <args>`` in the repository, with this interpreter (never whatever ``python`` is on PATH)."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))


def one_sentence(proc, *needles, absent=()) -> str:
    """Exit status 2, exactly one non-empty line on stderr (``error: ...``), no traceback; returns that line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    for needle in absent:
        assert needle not in lines[0], (needle, lines[0])
    return lines[0]


# ---- the reported mistakes ----------------------------------------------------------------------

def test_demo_budget_above_one_is_refused_as_a_fraction(tmp_path):
    one_sentence(run("-m", "pafu_lab.demo", "--budget", "25", "--out", str(tmp_path)),
                 "--budget", "25", "fraction", "36-frame")
    assert not os.listdir(tmp_path)                       # nothing was started


def test_demo_budget_below_one_chunk_names_the_flags_unit(tmp_path):
    line = one_sentence(run("-m", "pafu_lab.demo", "--budget", "0.01", "--policies", "fifo,pafu",
                            "--out", str(tmp_path)),
                        "--budget 0.01", "less than one chunk", "0.083 of the 36-frame clip", "at least 0.084",
                        absent=("tokens",))
    assert "rollouts" not in line
    # with sink_window (the default policies) the floor includes its sink frame
    one_sentence(run("-m", "pafu_lab.demo", "--budget", "0.1", "--out", str(tmp_path)),
                 "--budget 0.1", "sink_window", "at least 0.112")


def test_demo_frames_must_hold_a_return():
    one_sentence(run("-m", "pafu_lab.demo", "--frames", "20"), "--frames", "20", "at least 30")


def test_distill_config_typo():
    one_sentence(run("-m", "pafu_lab.distill", "--config", "configs/no_such_config.json"),
                 "--config configs/no_such_config.json", "no such file")


def test_distill_config_that_is_not_json():
    one_sentence(run("-m", "pafu_lab.distill", "--config", README), "--config", "not valid JSON")


def test_bench_quality_head_that_is_not_a_head():
    one_sentence(run("benchmarks/bench_quality.py", "--head", README), "README.md", "not a safetensors file")


def test_convert_a_text_file_is_not_a_checkpoint(tmp_path):
    one_sentence(run("-m", "pafu_core.convert", README, str(tmp_path / "out.safetensors")),
                 "README.md", "not a checkpoint", "text file", absent=("Python objects", "run code"))
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("kind", ["random_bytes", "empty", "safetensors_without_weights",
                                  "safetensors_without_weights_as_pt"])
def test_convert_other_non_checkpoints(tmp_path, kind):
    src = tmp_path / {"random_bytes": "x.pt", "empty": "x.pt", "safetensors_without_weights": "x.safetensors",
                      "safetensors_without_weights_as_pt": "x.pt"}[kind]
    if kind == "random_bytes":
        src.write_bytes(bytes(range(1, 256)) * 4)
    elif kind == "empty":
        src.write_bytes(b"")
    else:
        save_file({}, str(src), metadata={"note": "no tensors"})
    expected = {"random_bytes": "not a checkpoint", "empty": "the file is empty"}.get(kind, "holds no tensors")
    one_sentence(run("-m", "pafu_core.convert", str(src), str(tmp_path / "out.safetensors")),
                 src.name, expected, absent=("Python objects", "run code"))


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_convert_still_refuses_a_real_pickle_without_running_it(tmp_path):
    src = tmp_path / "evil.pt"
    src.write_bytes(pickle.dumps(Payload(str(tmp_path / MARKER)), protocol=4))
    one_sentence(run("-m", "pafu_core.convert", str(src), str(tmp_path / "out.safetensors")),
                 "evil.pt", "Python objects", "could run code")
    assert not (tmp_path / MARKER).exists(), "a pickle payload ran"
    legacy = tmp_path / "legacy.pt"                           # torch.save's pickle (non-zip) format still loads
    torch.save({"a": [1, 2]}, str(legacy), _use_new_zipfile_serialization=False)
    one_sentence(run("-m", "pafu_core.convert", str(legacy), str(tmp_path / "out.safetensors")),
                 "legacy.pt", "not a state dict", absent=("not a checkpoint",))


def test_debug_shows_the_traceback(tmp_path):
    proc = run("-m", "pafu_core.convert", README, str(tmp_path / "out.safetensors"), "--debug")
    assert proc.returncode != 0 and proc.returncode != 2, proc.returncode
    assert "Traceback" in proc.stderr and "FileFormatError" in proc.stderr, proc.stderr[-2000:]
    proc = run("-m", "pafu_lab.demo", "--budget", "0.01", "--debug")
    assert proc.returncode not in (0, 2) and "Traceback" in proc.stderr and "UserError" in proc.stderr, proc.stderr


# ---- a missing or wrong file (or value) for every other command line -----------------------------

def test_convert_missing_source(tmp_path):
    one_sentence(run("-m", "pafu_core.convert", str(tmp_path / "nope.pt"), str(tmp_path / "o.safetensors")),
                 "nope.pt", "not found")


def test_world_train_missing_and_wrong_init(tmp_path):
    out = str(tmp_path / "m.safetensors")
    one_sentence(run("-m", "pafu_lab.world.train", "student", "--out", out, "--init", str(tmp_path / "nope.pt")),
                 "--init", "no such file")
    one_sentence(run("-m", "pafu_lab.world.train", "student", "--out", out, "--init", README),
                 "README.md", "not a checkpoint")
    assert not os.path.exists(out)
    one_sentence(run("-m", "pafu_lab.world.train", "student", "--out", out, "--views", "full,sometimes"),
                 "--views", "'sometimes'", "full, window, subset")
    assert not os.path.exists(out)
    one_sentence(run("-m", "pafu_lab.world.train", "student", "--out", out, "--situation-every", "1",
                     "--situation-budgets", "0.05,0.25"), "--situation-budgets 0.05 for fifo",
                 "smaller than one chunk (48 tokens = 3 frames x 16)")
    one_sentence(run("-m", "pafu_lab.world.train", "student", "--out", out, "--situation-budgets", "0.5,0.25"),
                 "--situation-budgets 0.5,0.25", "low <= high")
    one_sentence(run("-m", "pafu_lab.world.train", "student", "--out", out, "--situation-budgets", "0.25"),
                 "LOW,HIGH")
    one_sentence(run("-m", "pafu_lab.world.train", "student", "--out", out, "--situation-free-every", "2"),
                 "--situation-free-every needs situation steps")
    one_sentence(run("-m", "pafu_lab.world.train", "student", "--out", out, "--situation-every", "1",
                     "--situation-rule-targets"), "--situation-rule-targets needs free rollouts")
    one_sentence(run("-m", "pafu_lab.world.train", "student", "--out", out, "--situation-every", "1",
                     "--situation-policies", "fifo,pafu"), "pafu policy", "needs a head (--situation-head)")
    one_sentence(run("-m", "pafu_lab.world.train", "student", "--out", out, "--world", "recall", "--schedule-slips",
                     "1.5"), "--schedule-slips must lie in [0, 1), got 1.5")
    one_sentence(run("-m", "pafu_lab.world.train", "student", "--out", out, "--schedule-slips", "0.1"),
                 "--schedule-slips", "gives no schedule as conditioning")
    one_sentence(run("-m", "pafu_lab.world.train", "student", "--out", out, "--layers", "6"),
                 "--layers grows a trained model", "--init")
    one_sentence(run("-m", "pafu_lab.world.train", "student", "--out", out, "--layers", "3", "--init",
                     "pafu_lab/assets/recall/pafu_recall_student.safetensors"), "--layers 3 is fewer than the 4 blocks")
    one_sentence(run("-m", "pafu_lab.world.train", "student", "--out", out, "--layers", "6", "--init",
                     "pafu_lab/assets/recall/pafu_recall_student.safetensors", "--situation-every", "1",
                     "--situation-policies", "pafu", "--situation-head",
                     "pafu_lab/assets/recall/pafu_recall_head.safetensors"),
                 "does not fit this model", "num_layers is 4 in the head but 6 in the model")
    assert not os.path.exists(out)


def test_bench_recache_change_outside_the_video_and_unknown_policy():
    one_sentence(run("benchmarks/bench_recache.py", "--frames", "60", "--change", "60"), "--change", "2..59")
    one_sentence(run("benchmarks/bench_recache.py", "--policies", "keep_all,lru"), "'lru'")


def test_demo_out_is_a_file():
    one_sentence(run("-m", "pafu_lab.demo", "--out", README), "--out", "is a file, not a folder")


@pytest.mark.parametrize("watched", [True, False])
def test_ablation_scores_free_generation_without_the_rows_that_need_watching(tmp_path, monkeypatch, watched):
    """Free generation (--no-watched) has no frames to write the cache with: tell_rule is left out of the
    scoring instead of failing after the distillation."""
    from benchmarks import ablation, bench_quality
    seen = []
    monkeypatch.setattr(bench_quality, "main", seen.append)
    (tmp_path / "head_base.safetensors").write_bytes(b"")                  # distilled already: skipped
    if watched:
        (tmp_path / "world_clips_28x72.safetensors").write_bytes(b"")
    ablation.main(["--variants", "base", "--out", str(tmp_path), "--world", "recall",
                   "--watched" if watched else "--no-watched"])
    policies = seen[0][seen[0].index("--policies") + 1].split(",")
    assert ("tell_rule" in policies) == watched and "oracle_world" in policies


def test_ablation_unknown_variant_and_out_is_a_file():
    one_sentence(run("benchmarks/ablation.py", "--variants", "more_data,nope"), "--variants", "'nope'")
    one_sentence(run("benchmarks/ablation.py", "--out", README), "--out", "is a file, not a folder")


def test_bench_cache_json_under_a_file_and_fraction_below_a_chunk():
    one_sentence(run("benchmarks/bench_cache.py", "--json", os.path.join(README, "rows.json")), "--json",
                 "is a file, not a folder")
    one_sentence(run("benchmarks/bench_cache.py", "--fractions", "0.1", "--policies", "fifo"),
                 "--fractions 0.1", "21-frame reference window", "at least 0.143")


def test_bench_int8_budget_below_one_chunk():
    one_sentence(run("benchmarks/bench_int8.py", "--budget", "0.01", "--policy", "fifo"), "at least 0.084")


def test_bench_policy_cost_unknown_dtype():
    one_sentence(run("benchmarks/bench_policy_cost.py", "--dtype", "float33"), "--dtype", "float33")


def test_bench_sse_bad_device_and_size():
    one_sentence(run("benchmarks/bench_sse.py", "--device", "gpu"), "--device", "'gpu'")
    one_sentence(run("benchmarks/bench_sse.py", "--tile-gb", "0"), "--tile-gb")


def test_bench_comfy_path_missing_comfyui(tmp_path):
    one_sentence(run("benchmarks/bench_comfy_path.py", "--comfyui", str(tmp_path / "ComfyUI")),
                 "--comfyui", "no such folder")
    one_sentence(run("benchmarks/bench_comfy_path.py", "--comfyui", str(tmp_path)), "not a ComfyUI checkout")


def test_bench_quality_heads_spec_and_missing_head(tmp_path):
    one_sentence(run("benchmarks/bench_quality.py", "--heads", "entry_only"), "--heads", "name=path")
    one_sentence(run("benchmarks/bench_quality.py", "--heads", f"x={tmp_path / 'nope.safetensors'}"), "no such file")
