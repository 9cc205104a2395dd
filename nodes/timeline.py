"""PaFu Prompt Timeline: the prompt changes over the video (the sampler's positive holds from frame 0), for the
all-in-one sampler or, through the PaFu Timeline Guider, for core's own AR sampler."""

from __future__ import annotations

from typing import NamedTuple

import comfy.samplers
from comfy_api.latest import io

from ..pafu_core.native_prompts import block_segment, check_blocks, refresh_cross_attention
from ..pafu_core.timeline import parse_frames, with_changes
from .types import PafuTimeline


class TimelineChanges(NamedTuple):
    """The PAFU_TIMELINE payload: the prompt changes and whether the sampler re-caches at each."""
    changes: list          # [(latent frame, CONDITIONING)]
    recache: bool = False


class PaFuPromptTimeline(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuPromptTimeline",
            display_name="PaFu Prompt Timeline",
            category="PaFu-KV",
            description="Schedules prompt changes: the positive prompt holds from latent frame 0, each prompt here "
                        "from its change frame on. The PaFu AR Chunk Sampler takes changes at any latent frame (a "
                        "chunk that straddles a change attends frame by frame); core's AR sampler, through the PaFu "
                        "Timeline Guider, at block boundaries.",
            inputs=[
                io.String.Input("change_frames", default="24",
                                tooltip="Latent frames where the prompt changes, comma-separated, one per "
                                        "connected prompt below, increasing (e.g. 24, 48)."),
                io.Conditioning.Input("prompt_2", tooltip="The prompt from the first change frame on."),
                io.Conditioning.Input("prompt_3", optional=True, tooltip="The prompt from the second change frame on."),
                io.Conditioning.Input("prompt_4", optional=True, tooltip="The prompt from the third change frame on."),
                io.Boolean.Input("recache", default=False, optional=True,
                                 tooltip="PaFu AR Chunk Sampler only: at each change, compute the keys and values "
                                         "the cache keeps again under the new prompt (one pass over the kept "
                                         "chunks; LongLive's re-caching). Off: the past keeps the old prompt's."),
            ],
            outputs=[PafuTimeline.Output("timeline", display_name="timeline",
                                         tooltip="Connect to the PaFu AR Chunk Sampler or the PaFu Timeline Guider.")],
        )

    @classmethod
    def execute(cls, change_frames, prompt_2, prompt_3=None, prompt_4=None, recache=False) -> io.NodeOutput:
        frames = parse_frames(change_frames)
        prompts = [p for p in (prompt_2, prompt_3, prompt_4) if p is not None]
        if len(frames) != len(prompts):
            raise ValueError(f"change_frames lists {len(frames)} frame{'s' * (len(frames) != 1)} but "
                             f"{len(prompts)} {'prompts are' if len(prompts) != 1 else 'prompt is'} connected: give one change "
                             f"frame per prompt")
        return io.NodeOutput(TimelineChanges(list(zip(frames, prompts)), bool(recache)))


class TimelineGuider(comfy.samplers.CFGGuider):
    """Conditions each block of core's ``sample_ar_video`` on its segment of the timeline and refreshes core's
    cross-attention caches where the prompt changes (``pafu_core/native_prompts.py``)."""

    def set_timeline(self, positive, timeline: TimelineChanges, negative=None):
        if timeline.recache:
            raise ValueError("re-caching at a prompt change needs the PaFu AR Chunk Sampler: core's AR sampler "
                             "cannot recompute its cache; switch the timeline's recache off for this guider")
        changes = timeline.changes
        self.timeline = with_changes(positive[0][0], [(f, c[0][0]) for f, c in changes])
        conds = {"positive": positive, **{f"prompt_{i}": c for i, (_, c) in enumerate(changes, start=1)}}
        if negative is not None:
            conds["negative"] = negative
        self.inner_set_conds(conds)

    def sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
        block = getattr(sampler, "extra_options", {}).get("num_frame_per_block")
        if latent_image.ndim == 5 and block:                   # core's AR sampler: refuse a bad change before work
            start = self.model_options.get("transformer_options", {}).get("ar_config", {}).get("initial_latent")
            check_blocks(self.timeline, latent_image.shape[2], int(block),
                         first=0 if start is None else start.shape[2])
        return super().sample(noise, latent_image, sampler, sigmas, *args, **kwargs)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        ar_state = model_options.get("transformer_options", {}).get("ar_state")
        if ar_state is None:
            raise ValueError("the PaFu Timeline Guider conditions the blocks of core's autoregressive sampler: use "
                             "it with SamplerARVideo on a causal-AR Wan (ComfyUI 0.27+); for other samplers use a "
                             "CFG Guider, or the PaFu AR Chunk Sampler with its timeline input")
        if not {"start_frame", "crossattn_caches"} <= set(ar_state):
            raise ValueError("this ComfyUI's AR sampler state has no start_frame or crossattn_caches (built against "
                             f"0.27, which has both; found {sorted(ar_state)}): the PaFu Timeline Guider cannot "
                             "follow it. Use the PaFu AR Chunk Sampler's timeline input instead")
        segment = block_segment(self.timeline, int(ar_state["start_frame"]), x.shape[2])
        refresh_cross_attention(ar_state["crossattn_caches"], segment)
        positive = self.conds["positive" if segment == 0 else f"prompt_{segment}"]
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"), positive,
                                                self.cfg, model_options=model_options, seed=seed)


class PaFuTimelineGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuTimelineGuider",
            display_name="PaFu Timeline Guider",
            category="PaFu-KV",
            description="A prompt timeline on ComfyUI's own autoregressive sampler: each block of SamplerARVideo is "
                        "conditioned on the prompt of its frames, and core's cross-attention cache (filled at the "
                        "first block) is recomputed where the prompt changes. Changes must fall on block "
                        "boundaries. Connect to SamplerCustomAdvanced's guider.",
            inputs=[
                io.Model.Input("model", tooltip="A causal-AR Wan MODEL (with or without the PaFu KV Cache Patch)."),
                io.Conditioning.Input("positive", tooltip="The prompt from latent frame 0."),
                PafuTimeline.Input("timeline", tooltip="The prompt changes, from PaFu Prompt Timeline."),
                io.Conditioning.Input("negative", optional=True, tooltip="Needed only with cfg above 1."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="1 for distilled AR models (Self-Forcing, CausVid): one pass per step."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, timeline, negative=None, cfg=1.0) -> io.NodeOutput:
        if negative is None and cfg != 1.0:
            raise ValueError(f"cfg {cfg} needs a negative prompt: connect one, or set cfg to 1")
        guider = TimelineGuider(model)
        guider.set_timeline(positive, timeline, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)
