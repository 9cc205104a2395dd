"""PaFu Distill Salience Head and PaFu Prompt List: make a head for the MODEL in the graph.

Glue only: the recipe, the resumable job, the evaluation and the card live in ``pafu_core.distill``, imported
when the node runs (loading the pack stays light). ComfyUI supplies the model, its text encodings, the
progress bar (stage names and time left as the node's text), the interrupt and the models folder.
"""

from __future__ import annotations

import logging
import os
import time

import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..pafu_core.schedule import parse_timesteps
from . import paths
from .ar_loader import CAUSAL_AR_FILE
from .sampler import flow_shift, wan_runner
from .types import PafuHead

PafuPrompts = io.Custom("PAFU_PROMPTS")      # list of {"context": [1, L, D], "videos": [N, C, F, H, W] or None}
PROMPT_SLOTS = 8
NEEDS_CAUSAL_AR = ("the PaFu Distill Salience Head needs a causal-AR Wan 2.1 model (CausalWanModel from UNETLoader "
                   "on ComfyUI 0.27+, the PaFu AR Checkpoint Loader, or the PaFu Tiny World Model); this MODEL is {}: "
                   "a bidirectional Wan cannot roll out chunk by chunk")


def causal_ar_file(model) -> str:
    """The checkpoint file of a causal-AR Wan MODEL (or "unknown file"), or the one-sentence refusal."""
    diffusion = getattr(model.model, "diffusion_model", None)
    marked = getattr(model.model, CAUSAL_AR_FILE, None)
    if marked is None and type(diffusion).__name__ != "CausalWanModel":
        raise ValueError(NEEDS_CAUSAL_AR.format(type(diffusion if diffusion is not None else model.model).__name__))
    init = getattr(model, "cached_patcher_init", None)        # core loaders record the file they read
    path = init[1][0] if init and init[1] and isinstance(init[1][0], str) else None
    return os.path.basename(marked or path or "unknown file")


class PaFuPromptList(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuPromptList",
            display_name="PaFu Prompt List",
            category="PaFu-KV/distill",
            description="Several prompts (CLIP Text Encode outputs) as one list, for distilling a salience head, "
                        "each with real videos of it if you have them (VAE Encode): the model then watches those "
                        "videos instead of rolling the prompt out, which makes a better head. The last quarter of the "
                        "list is held out to judge the head.",
            inputs=[io.Conditioning.Input("prompt_1", tooltip="A text encoding (CLIP Text Encode).")] +
                   [io.Conditioning.Input(f"prompt_{i}", optional=True, tooltip="Another text encoding (optional).")
                    for i in range(2, PROMPT_SLOTS + 1)] +
                   [io.Latent.Input(f"videos_{i}", optional=True,
                                    tooltip=f"Video latents of prompt {i} (optional; a batch, one clip each).")
                    for i in range(1, PROMPT_SLOTS + 1)],
            outputs=[PafuPrompts.Output("prompts", display_name="prompts")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        slots = [i for i in range(1, PROMPT_SLOTS + 1) if inputs.get(f"prompt_{i}")]
        stray = [i for i in range(1, PROMPT_SLOTS + 1) if inputs.get(f"videos_{i}") and i not in slots]
        if stray:
            raise ValueError(f"videos_{stray[0]} is connected but prompt_{stray[0]} is not: connect the prompt the "
                             "videos show")
        videos = [inputs.get(f"videos_{i}") for i in slots]
        return io.NodeOutput([{"context": inputs[f"prompt_{i}"][0][0][:1].float().cpu(),
                               "videos": v["samples"].float().cpu() if v else None} for i, v in zip(slots, videos)])


class PaFuDistillSalienceHead(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuDistillSalienceHead",
            display_name="PaFu Distill Salience Head",
            category="PaFu-KV/distill",
            description="Distils a salience head for this MODEL from the prompts' videos, or from its own rollouts of "
                        "prompts without videos (clips -> targets -> training -> evaluation), writes models/pafu_heads/<name>.safetensors and a "
                        "model card <name>.md, and outputs the head. Cancel and queue again: it resumes.",
            inputs=[
                io.Model.Input("model", tooltip="A causal-AR Wan 2.1 model (the one the head will serve)."),
                PafuPrompts.Input("prompts", tooltip="PaFu Prompt List: the prompts (with their videos, if given)."),
                io.Latent.Input("latent", tooltip="A video latent of the size the head will serve (only its height "
                                                  "and width are read)."),
                io.Float.Input("budget", default=0.25, min=0.01, max=1.0, step=0.01,
                               tooltip="The cache budget the head will serve, as a fraction of the clip; the "
                                       "evaluation compares policies there."),
                io.String.Input("name", default="my_head", tooltip="File name in models/pafu_heads."),
                io.Int.Input("rollouts", default=0, min=0, max=4096,
                             tooltip="Clips rolled out (0: 48 for a tiny model, 64 for Wan; keep 0 with videos: each is one clip)."),
                io.Int.Input("clip_frames", default=0, min=0, max=256,
                             tooltip="Latent frames per clip (0: 72 for a tiny model, 21 for Wan)."),
                io.Int.Input("steps", default=0, min=0, max=100000,
                             tooltip="Training steps per stage (0: 1200 for a tiny model, 1000 for Wan)."),
                io.Int.Input("chunk_frames", default=3, min=1, max=64, tooltip="Latent frames per chunk."),
                io.String.Input("timesteps", default="1000,750,500,250", tooltip="Denoising timesteps per chunk."),
                # no randomize-after-queue: the same seed is what lets a re-queue find its run and resume
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seeds the rollouts and training (keep it to resume a cancelled run)."),
            ],
            outputs=[PafuHead.Output("head", display_name="head"),
                     io.Image.Output("fidelity", display_name="fidelity",
                                     tooltip="PSNR to keep-all per frame on held-out prompts, per policy."),
                     io.String.Output("summary", display_name="summary")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, prompts, latent, budget, name, rollouts=0, clip_frames=0, steps=0, chunk_frames=3,
                timesteps="1000,750,500,250", seed=0) -> io.NodeOutput:
        from ..pafu_core.distill.card import head_stem, publish, summary_text
        from ..pafu_core.distill.job import (
            DistillJob,
            check_gpu_memory,
            model_fingerprint,
        )
        from ..pafu_core.distill.recipe import node_recipe
        from ..pafu_core.distill.videos import check_videos, watched_counts
        from ..pafu_core.plots import render_fidelity

        model_file = causal_ar_file(model)
        stem = head_stem(name)
        runner = wan_runner(model)
        device = model.load_device
        contexts = [p["context"] for p in prompts]
        process = model.model.process_latent_in                # stored -> model space, as the sampler's watch
        videos = [process(p["videos"]) if p["videos"] is not None else None for p in prompts]
        size = tuple(latent["samples"].shape[-2:])
        recipe = dict(dim=runner.dim, text_dim=runner.text_dim, contexts=contexts, latent_size=size, budget=budget,
                      rollouts=rollouts, clip_frames=clip_frames, steps=steps, chunk_frames=chunk_frames,
                      timesteps=parse_timesteps(timesteps), shift=flow_shift(model), seed=seed, device=str(device),
                      dtype=str(runner.dtype).removeprefix("torch."))
        cfg = node_recipe(**recipe)
        check_videos(videos, cfg.rollout_frames, size, runner.in_dim)
        if videos and all(v is not None for v in videos):
            cfg = node_recipe(**recipe, watched=watched_counts(videos))
        else:
            videos = None
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        comfy.model_management.load_models_gpu([model])
        if torch.device(device).type == "cuda":
            check_gpu_memory(runner, cfg, torch.cuda.mem_get_info(device)[0])
        job = DistillJob(runner, contexts, cfg, os.path.join(folder_paths.get_user_directory(), "pafu_distill"),
                         progress=StageProgress(node_id), interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                         videos=videos)
        tick = time.perf_counter()
        try:
            outcome = job.run()
        except comfy.model_management.InterruptProcessingException:
            logging.info("PaFu Distill Salience Head cancelled; queue it again to resume from %s", job.dir)
            raise
        head_path, _ = publish(outcome, job, paths.heads_dir(), stem, model_file, model_fingerprint(runner.model),
                               time.perf_counter() - tick)
        chart = render_fidelity(outcome.metrics.get("psnr_per_frame", {}), cfg.eval_budget)
        summary = summary_text(outcome, job, head_path)
        return io.NodeOutput(outcome.head, torch.from_numpy(chart.copy()).float().div(255).unsqueeze(0), summary,
                             ui={"text": (summary,)})


class StageProgress:
    """ComfyUI's progress bar over each stage, the stage's name and time left as the node's text."""

    def __init__(self, node_id):
        self.node_id, self.bar, self.stage = node_id, None, None

    def __call__(self, stage: str, done: int, total: int, seconds_left: float) -> None:
        if stage != self.stage:
            self.stage, self.bar = stage, comfy.utils.ProgressBar(total, node_id=self.node_id)
        self.bar.update_absolute(done, total)
        left = f", about {seconds_left / 60:.1f} min left" if seconds_left == seconds_left and done < total else ""
        send_text(f"{stage} {done}/{total}{left}", self.node_id)


def send_text(text: str, node_id) -> None:
    """The node's progress text in the frontend, where this ComfyUI has it (0.8.0 and 0.27.0 do)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    send = getattr(getattr(PromptServer, "instance", None), "send_progress_text", None)
    if send is not None and node_id is not None:
        send(text, node_id)
