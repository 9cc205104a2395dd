"""PaFu Prompt Timeline: the prompt changes over the video (the sampler's positive holds from frame 0)."""

from __future__ import annotations

from comfy_api.latest import io

from ..pafu_core.timeline import parse_frames
from .types import PafuTimeline


class PaFuPromptTimeline(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuPromptTimeline",
            display_name="PaFu Prompt Timeline",
            category="PaFu-KV",
            description="Schedules prompt changes for the PaFu AR Chunk Sampler: its positive prompt holds from "
                        "latent frame 0, each prompt here from its change frame on, at any latent frame (a chunk "
                        "that straddles a change attends frame by frame).",
            inputs=[
                io.String.Input("change_frames", default="24",
                                tooltip="Latent frames where the prompt changes, comma-separated, one per "
                                        "connected prompt below, increasing (e.g. 24, 48)."),
                io.Conditioning.Input("prompt_2", tooltip="The prompt from the first change frame on."),
                io.Conditioning.Input("prompt_3", optional=True, tooltip="The prompt from the second change frame on."),
                io.Conditioning.Input("prompt_4", optional=True, tooltip="The prompt from the third change frame on."),
            ],
            outputs=[PafuTimeline.Output("timeline", display_name="timeline",
                                         tooltip="Connect to the sampler's timeline input.")],
        )

    @classmethod
    def execute(cls, change_frames, prompt_2, prompt_3=None, prompt_4=None) -> io.NodeOutput:
        frames = parse_frames(change_frames)
        prompts = [p for p in (prompt_2, prompt_3, prompt_4) if p is not None]
        if len(frames) != len(prompts):
            raise ValueError(f"change_frames lists {len(frames)} frame{'s' * (len(frames) != 1)} but "
                             f"{len(prompts)} {'prompts are' if len(prompts) != 1 else 'prompt is'} connected: give one change "
                             f"frame per prompt")
        return io.NodeOutput([(f, p[0][0]) for f, p in zip(frames, prompts)])
