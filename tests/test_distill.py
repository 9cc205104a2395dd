"""The distillation tool: it learns, resumes exactly, and runs under torchrun (gloo, 2 CPU processes)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from pafu_core.distill.features import Example, newer_by_frame, rescore_inputs
from pafu_core.distill.ranking import spearman, topk_recall
from pafu_core.distill.recipe import DistillConfig
from pafu_lab.distill import _parse, distill
from pafu_core.salience import load_head

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(tiny_random=True, rollouts=8, heldout=3, rollout_frames=12)


def test_metrics_on_known_orderings():
    x = torch.arange(10.0)
    assert spearman(x, x) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert topk_recall(x, x, 0.3) == 1.0
    assert topk_recall(-x, x, 0.3) == 0.0


@pytest.mark.parametrize("targets,rescore,frames,margin", [("sse_teacher_clean", False, 12, 0.15),
                                                           ("future_student", True, 24, 0.08)])
def test_short_distillation_beats_untrained_head_and_key_norm(tmp_path, targets, rescore, frames, margin):
    """On a random tiny model: the re-scorer is judged at every commit on its live tokens."""
    out = tmp_path / "head.safetensors"
    head, m = distill(DistillConfig(**dict(SMALL, rollout_frames=frames), targets=targets, rescore=rescore, steps=200,
                                    rescore_steps=200, eval_budget=0.5, out=str(out)))
    trained, untrained, key_norm = m["pafu_head"], m["untrained_head"], m["key_norm"]
    for base in (untrained, key_norm):
        assert trained["spearman"] > base["spearman"] + margin, m
        assert trained["topk_recall"] > base["topk_recall"] + 0.04, m
    loaded = load_head(out)
    assert loaded.config.training["eval"]["pafu_head"]["spearman"] == pytest.approx(trained["spearman"])
    assert loaded.config.training["steps"] == 200 and loaded.rescores == rescore
    assert loaded.config.training["sse"]["source"] == ("student" if rescore else "teacher_clean")
    assert "psnr_vs_keep_all_pafu" in m["fidelity"]


def test_rescore_inputs_at_a_commit_follow_their_definitions():
    tpf, fb = 2, 2
    entry = torch.arange(16.0).view(1, 16) % 5          # 8 frames x 2 places
    ex = Example(None, None, None, {}, tpf, fb)
    e, newer, age = rescore_inputs(entry, newer_by_frame(entry, tpf), 2, ex)
    # commit of block 2 (frames 4, 5): tokens of frames 0..3; newest frame 5
    assert e.shape == (1, 8) and age.tolist() == [[5, 5, 4, 4, 3, 3, 2, 2]]
    grid = entry.view(8, 2)
    for tok in range(8):
        f, p = divmod(tok, tpf)
        assert newer[0, tok] == grid[f + 1:6, p].max()


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


def test_resume_across_the_two_stages(tmp_path):
    kw = dict(**SMALL, rescore=True, targets="future_student", steps=20, rescore_steps=20, out="", eval_budget=0)
    straight, _ = distill(DistillConfig(**kw))
    ckpt = str(tmp_path / "ckpt")
    distill(DistillConfig(**kw, ckpt_dir=ckpt, stop_at=30))      # stops inside stage 2
    resumed, _ = distill(DistillConfig(**kw, ckpt_dir=ckpt, resume=True))
    for name in ("w1", "b1", "w2", "b2", "r1", "rb1", "r2", "rb2"):
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
           "-m", "pafu_lab.distill", "--tiny-random", "--rollouts", "7", "--heldout", "3",
           "--rollout-frames", "9", "--steps", "20", "--rescore", "--rescore-steps", "10", "--targets", "future_student",
           "--eval-budget", "0", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "pafu_head" in proc.stdout
    head = load_head(out)
    assert head.config.training["world_size"] == 2 and head.rescores
    assert head.config.training["data"]["train_clips"] == 4     # 2 ranks x 2 clips each


def test_features_of_a_token_subset_stream_to_the_cpu_and_train_both_stages(tmp_path):
    """For big models only some tokens' features are kept (float16, CPU); stage 2 re-reads each clip
    with the trained head for every token's entry score."""
    head, m = distill(DistillConfig(**SMALL, targets="future_student", rescore=True, feature_tokens=60, steps=60,
                                    rescore_steps=30, eval_budget=0, out=""))
    assert head.rescores and m["pafu_head"]["spearman"] == m["pafu_head"]["spearman"]      # finite
    from pafu_lab.distill import build_examples, load_models, rollout_clips
    cfg = DistillConfig(**SMALL, targets="future_student", feature_tokens=60)
    student, teacher = load_models(cfg)
    ex = build_examples(student, teacher, rollout_clips(student, cfg, [0], False), cfg, head, "t", False)[0]
    assert ex.features.dtype == torch.float16 and ex.features.device.type == "cpu"
    assert 50 <= ex.features.shape[1] <= 70 and ex.token_ids.shape[0] == ex.features.shape[1]
    assert ex.target.shape[1] == 12 * 16                                    # targets for every token
