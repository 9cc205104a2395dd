"""The distillation tool: it learns, resumes exactly, and runs under torchrun (gloo, 2 CPU processes)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from pafu_core.distill import DistillConfig, _parse, distill, spearman, topk_recall
from pafu_core.salience import load_head

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(tiny_random=True, rollouts=8, heldout=3, rollout_frames=12)


def test_metrics_on_known_orderings():
    x = torch.arange(10.0)
    assert spearman(x, x) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert topk_recall(x, x, 0.3) == 1.0
    assert topk_recall(-x, x, 0.3) == 0.0


def test_short_distillation_beats_untrained_head_and_key_norm(tmp_path):
    out = tmp_path / "head.safetensors"
    head, m = distill(DistillConfig(**SMALL, steps=200, eval_budget=0.5, out=str(out)))
    trained, untrained, key_norm = m["pafu_head"], m["untrained_head"], m["key_norm"]
    for base in (untrained, key_norm):
        assert trained["spearman"] > base["spearman"] + 0.15, m
        assert trained["topk_recall"] > base["topk_recall"] + 0.1, m
    loaded = load_head(out)
    assert loaded.config.training["eval"]["pafu_head"]["spearman"] == pytest.approx(trained["spearman"])
    assert loaded.config.training["steps"] == 200
    assert "psnr_vs_keep_all_pafu" in m["fidelity"]


def test_resume_continues_exactly(tmp_path):
    straight, _ = distill(DistillConfig(**SMALL, steps=40, out="", eval_budget=0))
    ckpt = str(tmp_path / "ckpt")
    distill(DistillConfig(**SMALL, steps=40, out="", eval_budget=0, ckpt_dir=ckpt, ckpt_every=20))
    state = torch.load(os.path.join(ckpt, "distill_state.pt"), weights_only=True)
    assert state["step"] == 40
    # a run stopped at step 20, then resumed to 40, ends where the straight run did
    import shutil
    shutil.rmtree(ckpt)
    distill(DistillConfig(**SMALL, steps=40, out="", eval_budget=0, ckpt_dir=ckpt, stop_at=20))
    assert torch.load(os.path.join(ckpt, "distill_state.pt"), weights_only=True)["step"] == 20
    resumed, _ = distill(DistillConfig(**SMALL, steps=40, out="", eval_budget=0, ckpt_dir=ckpt, resume=True))
    for name in ("w1", "b1", "w2", "b2"):
        assert torch.equal(getattr(straight, name), getattr(resumed, name)), name


def test_cli_reads_config_file_and_flags(tmp_path):
    cfg_file = tmp_path / "distill.json"
    cfg_file.write_text(json.dumps({"steps": 7, "input_features": ["keys", "hidden"], "tiny_random": True}))
    cfg = _parse(["--config", str(cfg_file), "--lr", "0.01", "--sse-weights", "0,1,2"])
    assert cfg.steps == 7 and cfg.lr == 0.01 and cfg.tiny_random
    assert cfg.input_features == ("keys", "hidden") and cfg.sse_weights == (0.0, 1.0, 2.0)
    with pytest.raises(SystemExit):
        _parse(["--config", str(cfg_file), "--bogus", "1"])


def test_torchrun_ddp_with_two_gloo_processes(tmp_path):
    out = tmp_path / "ddp_head.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "pafu_core.distill", "--tiny-random", "--rollouts", "7", "--heldout", "3",
           "--rollout-frames", "6", "--steps", "20", "--eval-budget", "0", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "pafu_head" in proc.stdout
    head = load_head(out)
    assert head.config.training["world_size"] == 2
    assert head.config.training["data"]["train_clips"] == 4     # 2 ranks x 2 clips each
