"""The embedded tiny world as nodes: its causal Wan model, its scenes, and its 'VAE' decode.

The model is built by ComfyUI's own loader (its shapes fit ComfyUI's Wan 2.1 detection), so the
PaFu AR Chunk Sampler takes exactly the path it takes with a real Wan checkpoint.
"""

from __future__ import annotations

import comfy.latent_formats
import comfy.model_management
import comfy.sd
import comfy.utils
import torch
from comfy_api.latest import io

from ..pafu_core.world import assets
from ..pafu_core.world.codec import decode_frames
from ..pafu_core.world.scenes import DEFAULT_WORLD, STYLE_NAMES, style_context


class PaFuTinyWorldModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuTinyWorldModel",
            display_name="PaFu Tiny World Model",
            category="PaFu-KV/tiny world",
            description="The pack's own tiny causal Wan 2.1 model (trained on the procedural blink world; "
                        "no download). Use shift 5 (ModelSamplingSD3) as for Self-Forcing.",
            inputs=[],
            outputs=[io.Model.Output("model", display_name="model")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        sd = comfy.utils.load_torch_file(assets.STUDENT, safe_load=True)
        model = comfy.sd.load_diffusion_model_state_dict(sd)
        if model is None:
            raise RuntimeError(f"ComfyUI could not detect a model in {assets.STUDENT}")
        return io.NodeOutput(model)


class PaFuTinyWorldScene(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuTinyWorldScene",
            display_name="PaFu Tiny World Scene",
            category="PaFu-KV/tiny world",
            description="Conditioning (the palette of the scene) and an empty latent of the tiny world's shape.",
            inputs=[
                io.Combo.Input("style", options=list(STYLE_NAMES), default=STYLE_NAMES[0],
                               tooltip="Palette family of the scene; the cells themselves come from the noise."),
                io.Int.Input("latent_frames", default=10 * DEFAULT_WORLD.clip_frames, min=1, max=4096,
                             tooltip="Video length in latent frames (one per video frame here); the model "
                                     f"was trained on {DEFAULT_WORLD.clip_frames}."),
                io.Int.Input("batch_size", default=1, min=1, max=16, tooltip="Videos generated at once."),
            ],
            outputs=[io.Conditioning.Output("positive", display_name="positive"), io.Latent.Output("latent", display_name="latent")],
        )

    @classmethod
    def execute(cls, style, latent_frames, batch_size=1) -> io.NodeOutput:
        ctx = style_context(STYLE_NAMES.index(style))
        side = DEFAULT_WORLD.size // 2
        latent = torch.zeros(batch_size, 16, latent_frames, side, side,
                             device=comfy.model_management.intermediate_device())
        return io.NodeOutput([[ctx, {}]], {"samples": latent})


class PaFuTinyWorldDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuTinyWorldDecode",
            display_name="PaFu Tiny World Decode",
            category="PaFu-KV/tiny world",
            description="Turns tiny-world latents into frames (its fixed invertible 'VAE'), upscaled for viewing.",
            inputs=[
                io.Latent.Input("latent", tooltip="Latent from the PaFu AR Chunk Sampler (tiny world model)."),
                io.Int.Input("scale", default=8, min=1, max=32, tooltip="Nearest-neighbour upscale of the 16x16 frames."),
            ],
            outputs=[io.Image.Output("frames", display_name="frames")],
        )

    @classmethod
    def execute(cls, latent, scale=8) -> io.NodeOutput:
        samples = latent["samples"]
        if samples.ndim != 5 or samples.shape[1] != 16:
            raise ValueError(f"expected a tiny-world video latent [batch, 16, frames, 8, 8], got {tuple(samples.shape)}")
        z = comfy.latent_formats.Wan21().process_in(samples.float())     # stored -> model space
        frames = decode_frames(z).flatten(0, 1)                            # [B*F, 3, 16, 16]
        frames = frames.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
        return io.NodeOutput(((frames + 1) / 2).permute(0, 2, 3, 1).contiguous())
