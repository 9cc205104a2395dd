"""Distilling a head inside real ComfyUI: the tiny world's model -> PaFu Distill Salience Head -> the sampler
uses the new head; a cancel in the middle of training and a re-queue resume from the step it stopped at."""

from __future__ import annotations

import glob
import os
import time

import torch

from .conftest import ci_line
from .prompts import error_message

NAME = "ring_distilled"


def distill_prompt(steps: int, rollouts: int = 6, clip_frames: int = 12, name: str = NAME, budget: float = 0.5,
                   model_class: str = "PaFuTinyWorldModel", watch: int = 0) -> dict:
    """The tiny world's four styles as prompts; with ``watch``, each prompt also gets that many of its videos."""
    prompt = {
        "model": {"class_type": model_class, "inputs": {}},
        "shift": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["model", 0], "shift": 5.0}},
        "list": {"class_type": "PaFuPromptList", "inputs": {}},
        "distill": {"class_type": "PaFuDistillSalienceHead", "inputs": {
            "model": ["shift", 0], "prompts": ["list", 0], "latent": ["scene_0", 1], "budget": budget, "name": name,
            "rollouts": rollouts, "clip_frames": clip_frames, "steps": steps, "chunk_frames": 3,
            "timesteps": "1000,750,500,250", "seed": 0}},
        "budget": {"class_type": "PaFuKVCacheBudget", "inputs": {
            "policy": "pafu", "budget": 0.25, "budget_unit": "fraction", "sink_frames": 0, "reference_frames": 36}},
        "sampler": {"class_type": "PaFuARChunkSampler", "inputs": {
            "model": ["shift", 0], "positive": ["scene_0", 0], "latent": ["scene_0", 1], "cache": ["budget", 0],
            "head": ["distill", 0], "seed": 1, "chunk_frames": 3, "timesteps": "1000,750,500,250",
            "context_timestep": 0.0}},
        "decode": {"class_type": "PaFuTinyWorldDecode", "inputs": {"latent": ["sampler", 0], "scale": 1}},
        "preview": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    }
    for i, style in enumerate(("blue", "red", "green", "violet")):
        prompt[f"scene_{i}"] = {"class_type": "PaFuTinyWorldScene", "inputs": {
            "style": style, "latent_frames": clip_frames, "batch_size": max(1, watch), "world_seed": 700 + 100 * i}}
        prompt["list"]["inputs"][f"prompt_{i + 1}"] = [f"scene_{i}", 0]
        if watch:
            prompt["list"]["inputs"][f"videos_{i + 1}"] = [f"scene_{i}", 2]
    return prompt


def work_dirs(comfy) -> list[str]:
    return glob.glob(os.path.join(comfy.base, "user", "pafu_distill", "*"))


def summary_of(entry: dict) -> str:
    return "\n".join(entry["outputs"]["distill"]["text"])


def test_a_head_distilled_in_comfyui_resumes_after_a_cancel_and_serves_the_sampler(comfy, heads_dir):
    prompt = distill_prompt(steps=1500)
    queued = comfy.post("/prompt", {"prompt": prompt})
    assert "prompt_id" in queued, queued
    t0 = time.time()
    state = None
    while time.time() - t0 < 600:             # cancel once training has checkpointed, mid-way
        found = [os.path.join(d, "distill_state.pt") for d in work_dirs(comfy)]
        if found and os.path.exists(found[0]):
            state = found[0]
            break
        time.sleep(0.2)
    assert state, "training never started"
    comfy.post("/interrupt", {})
    entry = comfy.wait_history(queued["prompt_id"])
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, entry["status"]
    left = sorted(os.listdir(os.path.dirname(state)))
    assert not [f for f in left if f.endswith(".tmp")], left
    assert left.count("distill_state.pt") == 1 and len([f for f in left if f.startswith("example_")]) == 6, left
    stopped_at = int(torch.load(state, map_location="cpu", weights_only=True)["step"])
    assert 0 < stopped_at < 3000
    assert not os.path.exists(os.path.join(heads_dir, f"{NAME}.safetensors"))

    entry = comfy.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry) or entry["status"]
    summary = summary_of(entry)
    assert f"resumed: rollouts from 6, targets from 6, training from {stopped_at}" in summary, summary
    assert sorted(f for f in os.listdir(heads_dir) if f.startswith(NAME)) == [f"{NAME}.md", f"{NAME}.safetensors"]
    assert not work_dirs(comfy), work_dirs(comfy)                 # a finished run leaves no work folder
    listed = comfy.get("/object_info/PaFuSalienceHeadLoader")["PaFuSalienceHeadLoader"]["input"]["required"]
    spec = listed["head_name"]
    options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]
    assert f"{NAME}.safetensors" in options                       # listed without a restart
    assert entry["outputs"]["preview"]["images"], "the sampler did not run with the new head"
    ci_line(f"distilled in ComfyUI: cancelled at training step {stopped_at}, resumed there; {summary.splitlines()[1]}")


def test_bad_distill_inputs_are_one_sentence_before_any_work(comfy):
    for change, needle in [
        (dict(name="../escape"), "so the file stays in models/pafu_heads"),
        (dict(budget=0.1), "less than one 3-frame chunk"),
    ]:
        prompt = distill_prompt(steps=5)
        prompt["distill"]["inputs"].update(change)
        entry = comfy.run_prompt(prompt)
        assert entry["status"]["status_str"] == "error"
        assert needle in error_message(entry), error_message(entry)
    assert not work_dirs(comfy)


def test_a_head_learns_from_the_prompts_videos_and_mixed_lists_are_refused(comfy, heads_dir):
    entry = comfy.run_prompt(distill_prompt(steps=20, rollouts=0, watch=2, name="ring_watched"))
    assert entry["status"]["status_str"] == "success", error_message(entry) or entry["status"]
    summary = summary_of(entry)
    assert "learned from 8 watched videos of the prompts" in summary.splitlines()[0], summary
    card = open(os.path.join(heads_dir, "ring_watched.md")).read()
    assert "| rollouts | 8 |" in card and "| heldout | 2 |" in card, card
    assert not work_dirs(comfy)
    for change, needle in [
        (lambda p: p["list"]["inputs"].pop("videos_3"), "prompts 3 have no videos while others do"),
        (lambda p: p["distill"]["inputs"].update(rollouts=6), "set rollouts to 0 when the prompts carry videos"),
        (lambda p: p["list"]["inputs"].pop("prompt_2"), "videos_2 is connected but prompt_2 is not"),
    ]:
        prompt = distill_prompt(steps=5, rollouts=0, watch=2, name="ring_refused")
        change(prompt)
        entry = comfy.run_prompt(prompt)
        assert entry["status"]["status_str"] == "error"
        assert needle in error_message(entry), error_message(entry)
    assert not work_dirs(comfy) and not os.path.exists(os.path.join(heads_dir, "ring_refused.safetensors"))


def test_a_model_that_is_not_causal_ar_wan_is_refused_before_any_work(pack):
    import types

    import pytest
    module, nodes = pack
    WanModel = type("WanModel", (), {})                     # a bidirectional Wan, as core's class is named
    model = types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=WanModel()))
    with pytest.raises(ValueError, match=r"needs a causal-AR Wan 2.1 model .* this MODEL is WanModel: a "
                                         r"bidirectional Wan cannot roll out chunk by chunk$"):
        nodes["PaFuDistillSalienceHead"].execute(model=model, prompts=[], latent={}, budget=0.25, name="x")
