"""The resumable distillation job the ComfyUI node runs: a cancel keeps what was done, a re-run resumes
exactly (same head as an uninterrupted run), a finished run can be discarded, bad recipes are refused."""

import os

import pytest
import torch

from pafu_core.distill.job import (DistillJob, check_gpu_memory, job_key, model_fingerprint, needed_gpu_bytes,
                                   split_prompts)
from pafu_core.distill.recipe import DistillConfig

RECIPE = DistillConfig(rollouts=3, heldout=1, rollout_frames=12, latent_size=(4, 4), targets="future_student",
                       rescore=True, age_form="monotone", steps=4, rescore_steps=4, ckpt_every=100, hidden=8,
                       eval_budget=0.5, eval_frames=9)


class Cancel(Exception):
    pass


def prompts(n=2, width=4096):
    return [torch.randn(1, 5, width, generator=torch.Generator().manual_seed(40 + i)) for i in range(n)]


def cancel_at(stage_to_stop: str, at: int, seen: list):
    state = {"stage": None, "done": 0}

    def progress(stage, done, total, left):
        state.update(stage=stage, done=done)
        seen.append((stage, done, total))

    def interrupt():
        if state["stage"] == stage_to_stop and state["done"] >= at:
            raise Cancel()
    return progress, interrupt


def test_a_cancelled_job_resumes_where_it_stopped_and_ends_with_the_uninterrupted_head(runner, tmp_path):
    whole = DistillJob(runner, prompts(), RECIPE, str(tmp_path / "a")).run()

    seen: list = []
    progress, interrupt = cancel_at("training", 3, seen)
    with torch.inference_mode():              # as ComfyUI runs a node
        with pytest.raises(Cancel):
            DistillJob(runner, prompts(), RECIPE, str(tmp_path / "b"), progress, interrupt).run()
        job = DistillJob(runner, prompts(), RECIPE, str(tmp_path / "b"), progress)
        files = sorted(os.listdir(job.dir))
        assert files == ["clip_0000.pt", "clip_0001.pt", "clip_0002.pt", "distill_state.pt",
                         "example_0000.pt", "example_0001.pt", "example_0002.pt"], files   # no temp file
        again = job.run()
    assert again.resumed_from == {"rollouts": 3, "targets": 3, "training": 3}
    assert [s for s, *_ in seen if s == "rollouts"] and ("training", 8, 8) in seen
    for name, tensor in whole.head.state_dict().items():
        assert torch.equal(tensor, again.head.state_dict()[name]), name
    assert set(again.metrics["psnr_vs_keep_all"]) == {"pafu", "standout", "deep_forcing", "fifo"}
    assert len(again.metrics["psnr_per_frame"]["fifo"]) == 9
    assert -1 <= again.metrics["pafu_head"]["spearman"] <= 1
    job.discard()
    assert not os.path.exists(job.dir)


def test_a_cancel_during_rollouts_keeps_the_finished_clips(runner, tmp_path):
    progress, interrupt = cancel_at("rollouts", 2, [])
    with pytest.raises(Cancel):
        DistillJob(runner, prompts(), RECIPE, str(tmp_path), progress, interrupt).run()
    job = DistillJob(runner, prompts(), RECIPE, str(tmp_path))
    assert sorted(os.listdir(job.dir)) == ["clip_0000.pt", "clip_0001.pt"]


def test_the_job_key_follows_the_model_the_prompts_and_the_recipe_but_not_where_files_go(runner, tiny_model):
    fp = model_fingerprint(tiny_model)
    key = job_key(fp, prompts(), RECIPE)
    assert key == job_key(fp, prompts(), DistillConfig(**{**RECIPE.__dict__, "out": "elsewhere.safetensors"}))
    assert key != job_key(fp, prompts(3), RECIPE)
    assert key != job_key(fp, prompts(), DistillConfig(**{**RECIPE.__dict__, "steps": 5}))
    other = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    p = next(iter(tiny_model.parameters()))
    with torch.no_grad():
        p.add_(1e-3)
        try:
            assert model_fingerprint(tiny_model) != fp
        finally:
            tiny_model.load_state_dict(other)
    assert model_fingerprint(tiny_model) == fp


def test_prompts_split_into_training_and_held_out():
    train, held = split_prompts(prompts(5))
    assert len(train) == 4 and len(held) == 1 and torch.equal(held[0], prompts(5)[4])
    one = prompts(1)
    assert split_prompts(one) == (one, one)


def test_a_recipe_that_cannot_fit_the_card_is_refused_in_one_sentence_naming_the_setting(runner):
    need = needed_gpu_bytes(runner, RECIPE)
    check_gpu_memory(runner, RECIPE, free_bytes=need)
    with pytest.raises(ValueError, match=r"needs about .* GiB .* lower rollout_frames$"):
        check_gpu_memory(runner, RECIPE, free_bytes=need - 1)
    longer = DistillConfig(**{**RECIPE.__dict__, "rollout_frames": 60})
    assert needed_gpu_bytes(runner, longer) > need


def test_too_few_rollouts_or_too_short_clips_are_refused_before_any_work(runner, tmp_path):
    with pytest.raises(ValueError, match="must exceed heldout"):
        DistillJob(runner, prompts(), DistillConfig(rollouts=2, heldout=2), str(tmp_path))
    with pytest.raises(ValueError, match="too short to train re-scoring.*raise rollout_frames$"):
        DistillJob(runner, prompts(), DistillConfig(**{**RECIPE.__dict__, "rollout_frames": 6}), str(tmp_path))
    assert not os.listdir(tmp_path)


# ---- the node's recipe, the head's name, what a finished run leaves -----------------------------------

def node_recipe_for(runner, **kw):
    from pafu_core.distill.recipe import node_recipe
    args = dict(dim=runner.dim, text_dim=runner.text_dim, contexts=prompts(), latent_size=(4, 4), budget=0.25)
    return node_recipe(**{**args, **kw})


def test_the_node_recipe_defaults_by_model_size_and_keeps_what_the_user_set(runner):
    from pafu_core.distill.recipe import node_recipe
    tiny = node_recipe_for(runner)
    assert (tiny.rollouts, tiny.rollout_frames, tiny.steps, tiny.feature_tokens) == (48, 72, 1200, 0)
    assert tiny.targets == "future_student" and tiny.rescore and (tiny.age_form, tiny.recency) == ("input", 0.0)
    wan = node_recipe(dim=1536, text_dim=4096, contexts=prompts(), latent_size=(60, 104), budget=0.25)
    assert (wan.rollouts, wan.rollout_frames, wan.feature_tokens, wan.age_form) == (64, 21, 4096, "monotone")
    watching = node_recipe_for(runner, watched=(56, 14))          # every video one clip; tiny: recency 0.05
    assert (watching.rollouts, watching.heldout, watching.recency) == (56, 14, 0.05)
    wan_watching = node_recipe(dim=1536, text_dim=4096, contexts=prompts(), latent_size=(60, 104), budget=0.25,
                               watched=(40, 8))
    assert (wan_watching.rollouts, wan_watching.heldout, wan_watching.recency) == (40, 8, 0.0)
    mine = node_recipe_for(runner, rollouts=6, clip_frames=12, steps=20, seed=3)
    assert (mine.rollouts, mine.heldout, mine.rollout_frames, mine.steps, mine.rescore_steps, mine.seed) == \
        (6, 1, 12, 20, 20, 3)


@pytest.mark.parametrize("change, message", [
    (dict(contexts=[]), r"^the prompt list is empty: connect at least one prompt to the PaFu Prompt List$"),
    (dict(contexts=prompts(1) + prompts(1, width=768)), r"^the prompts have mixed text widths \(768, 4096\)"),
    (dict(contexts=prompts(1, width=768)), r"^the prompts must be \[1, tokens, 4096\] for this model, got"),
    (dict(budget=0.03), r"holds 2.16 latent frames, less than one 3-frame chunk: raise the budget or clip_frames$"),
    (dict(budget=0.0), r"^budget must be a fraction of the clip in \(0, 1\]"),
    (dict(watched=(8, 2), rollouts=5), r"^set rollouts to 0 when the prompts carry videos: each of the 8 videos is "
                                       r"one clip$"),
    (dict(watched=(2, 2)), r"^the videos make 2 clips and 2 of them are held out .*: give more videos$"),
])
def test_bad_node_inputs_are_one_sentence_before_any_work(runner, change, message):
    with pytest.raises(ValueError, match=message):
        node_recipe_for(runner, **change)


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 101, "C:\\evil", ".."])
def test_a_head_name_that_could_leave_the_heads_folder_is_refused(name):
    from pafu_core.distill.card import head_stem
    with pytest.raises(ValueError, match=r"so the file stays in models/pafu_heads$"):
        head_stem(name)


def test_a_finished_run_leaves_a_loadable_head_and_its_card_and_no_work_folder(runner, tmp_path):
    from pafu_core.distill.card import head_stem, publish, summary_text
    from pafu_core.salience import load_head
    assert head_stem(" my_head.safetensors ") == "my_head"
    job = DistillJob(runner, prompts(), RECIPE, str(tmp_path / "work"))
    outcome = job.run()
    head_path, card_path = publish(outcome, job, str(tmp_path / "heads"), "my_head", "student.safetensors",
                                   model_fingerprint(runner.model), 12.0)
    assert sorted(os.listdir(tmp_path / "heads")) == ["my_head.md", "my_head.safetensors"]
    assert not os.path.exists(job.dir)
    head = load_head(head_path)
    head.check_backbone(runner)
    training = head.config.training
    assert training["student_fingerprint"] == model_fingerprint(runner.model)
    assert training["recipe"]["rollouts"] == 3 and "psnr_vs_keep_all" in training["eval"]
    card = open(card_path).read()
    for needle in ("student.safetensors", model_fingerprint(runner.model), "| rollouts | 3 |", "huggingface-cli upload",
                   "| deep_forcing |", "Spearman", "Clips: 3 of the model's own rollouts", "rollout_noise 0 * 7919"):
        assert needle in card, needle
    text = summary_text(outcome, job, head_path)
    assert text.startswith(f"wrote {head_path}") and "resumed" not in text
    assert "learned from 3 of the model's own rollouts" in text.splitlines()[0]


# ---- watching videos instead of rolling out -----------------------------------------------------------

def videos(n=2, frames=14, seed=0):
    return torch.randn(n, 16, frames, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_watched_clips_are_the_videos_held_out_prompts_first():
    from pafu_core.distill.videos import watched_clips, watched_counts
    ctx, vids = prompts(4), [videos(2, seed=i) for i in range(4)]
    clips, held = watched_clips(ctx, vids, frames=12)
    assert (len(clips), held) == (8, 2) == watched_counts(vids)              # the last quarter: prompt 4's two
    assert torch.equal(clips[0].latents[0], vids[3][0, :, :12]) and torch.equal(clips[0].context, ctx[3])
    assert torch.equal(clips[2].latents[0], vids[0][0, :, :12]) and torch.equal(clips[2].context, ctx[0])
    one, held_one = watched_clips(prompts(1), [videos(8)], frames=12)         # one prompt: a quarter of its videos
    assert (len(one), held_one) == (8, 2)


@pytest.mark.parametrize("given, message", [
    ([videos(), None], r"^prompts 2 have no videos while others do: give every prompt its videos, or none"),
    ([videos()[:, :8]], r"^the videos of prompt 1 are latents of shape \(2, 8, 14, 4, 4\); the model needs "
                        r"\[N, 16, F, 4, 4\]"),
    ([torch.randn(2, 16, 14, 4, 6)], r"^the videos of prompt 1 are latents of shape"),
    ([videos(frames=9)], r"^the videos of prompt 1 have 9 latent frames, fewer than the 12-frame clips: lower "
                         r"clip_frames or give longer videos$"),
])
def test_videos_the_run_cannot_watch_are_one_sentence(given, message):
    from pafu_core.distill.videos import check_videos
    with pytest.raises(ValueError, match=message):
        check_videos(given, frames=12, latent_size=(4, 4), channels=16)


def test_a_watched_job_learns_from_the_videos_and_its_key_follows_them(runner, tmp_path):
    from pafu_core.distill.videos import watched_counts
    vids = [videos(2, seed=1), videos(2, seed=2)]
    clips, held = watched_counts(vids)
    cfg = DistillConfig(**{**RECIPE.__dict__, "rollouts": clips, "heldout": held})
    job = DistillJob(runner, prompts(), cfg, str(tmp_path), videos=vids)
    assert [c.latents.shape for c in job.rollouts()] == [(1, 16, 12, 4, 4)] * 4
    assert torch.equal(job.rollouts()[0].latents[0], vids[1][0, :, :12])      # the held-out prompt's video first
    assert not [f for f in os.listdir(job.dir) if f.startswith("clip_")] if os.path.exists(job.dir) else True
    outcome = job.run()
    assert outcome.resumed_from["rollouts"] == 0 and outcome.metrics["pafu_head"]["spearman"] == \
        outcome.metrics["pafu_head"]["spearman"]                            # computed (not NaN)
    assert not [f for f in os.listdir(job.dir) if f.startswith("clip_")]   # nothing generated, nothing saved
    from pafu_core.distill.card import model_card, summary_text
    card = model_card("watched", outcome, job, "student.safetensors", "f", 1.0)
    assert "Clips: 4 watched videos of the prompts" in card and "rollout_noise" not in card
    assert "learned from 4 watched videos" in summary_text(outcome, job, "h.safetensors")
    other = DistillJob(runner, prompts(), cfg, str(tmp_path), videos=[videos(2, seed=1), videos(2, seed=3)])
    assert other.key != job.key != DistillJob(runner, prompts(), RECIPE, str(tmp_path)).key
    with pytest.raises(ValueError, match=r"the recipe counts 3 clips \(1 held out\) and the videos make 4 \(2 held "
                                         r"out\): build it with node_recipe\(watched=...\)$"):
        DistillJob(runner, prompts(), RECIPE, str(tmp_path), videos=vids)
