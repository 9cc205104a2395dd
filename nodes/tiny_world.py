"""The embedded tiny world as nodes: its causal Wan model, its scenes, a start frame, its 'VAE' decode.

The model is built by ComfyUI's own loader (its shapes fit ComfyUI's Wan 2.1 detection; on 0.27+
its metadata makes it a CausalWanModel), so both the PaFu AR Chunk Sampler and core's AR sampler
take exactly the path they take with a real Wan checkpoint.
"""

from __future__ import annotations

import os

import comfy.latent_formats
import comfy.model_management
import comfy.sd
import comfy.utils
import torch
from comfy_api.latest import io

from ..pafu_core.world import assets
from ..pafu_core.world.codec import LATENT_CHANNELS, decode_frames, encode_frames
from ..pafu_core.world.scenes import DEFAULT_WORLD, STYLE_NAMES, render_clip, style_context
from .ar_loader import CAUSAL_AR_FILE


class PaFuTinyWorldModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuTinyWorldModel",
            display_name="PaFu Tiny World Model",
            category="PaFu-KV/tiny world",
            description="The pack's own tiny causal Wan 2.1 model (trained on the procedural peekaboo world; "
                        "no download). Its flow shift is 5, as for Self-Forcing. Core's UNETLoader lists the same "
                        f"file ({os.path.basename(assets.STUDENT)}).",
            inputs=[],
            outputs=[io.Model.Output("model", display_name="model")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        sd, metadata = comfy.utils.load_torch_file(assets.STUDENT, safe_load=True, return_metadata=True)
        model = comfy.sd.load_diffusion_model_state_dict(sd, metadata=metadata)
        if model is None:
            raise RuntimeError(f"ComfyUI could not detect a model in {assets.STUDENT}")
        setattr(model.model, CAUSAL_AR_FILE, os.path.basename(assets.STUDENT))
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
                io.Int.Input("world_seed", default=0, min=0, max=2**31 - 1, optional=True,
                             tooltip="The world's own video (output 'world'): where its objects sit and their "
                                     "colours. Video i of the batch uses world_seed + i."),
            ],
            outputs=[io.Conditioning.Output("positive", display_name="positive"),
                     io.Latent.Output("latent", display_name="latent"),
                     io.Latent.Output("world", display_name="world",
                                      tooltip="The world's real video of this scene: give it to the sampler's "
                                              "'watch' input (the model predicts each chunk, then sees it).")],
        )

    @classmethod
    def execute(cls, style, latent_frames, batch_size=1, world_seed=0) -> io.NodeOutput:
        style_id = STYLE_NAMES.index(style)
        ctx = style_context(style_id)
        side = DEFAULT_WORLD.size // 2
        device = comfy.model_management.intermediate_device()
        latent = torch.zeros(batch_size, LATENT_CHANNELS, latent_frames, side, side, device=device)
        world = torch.stack([encode_frames(render_clip(world_seed + i, latent_frames, style=style_id).frames)
                             for i in range(batch_size)])
        world = comfy.latent_formats.Wan21().process_out(world).to(device)              # stored space
        return io.NodeOutput([[ctx, {}]], {"samples": latent}, {"samples": world})


class PaFuTinyWorldStart(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuTinyWorldStart",
            display_name="PaFu Tiny World Start Frame",
            category="PaFu-KV/tiny world",
            description="Image-to-video on the tiny world: renders a frame of the world with its objects in view "
                        "and seeds core's AR sampler with it (transformer_options ar_config initial_latent), as "
                        "ARVideoI2V does with a VAE-encoded image. The video continues from that frame.",
            inputs=[
                io.Model.Input("model", tooltip="The tiny world's causal MODEL (UNETLoader on ComfyUI 0.27+)."),
                io.Combo.Input("style", options=list(STYLE_NAMES), default=STYLE_NAMES[5],
                               tooltip="Backdrop tint of the scene."),
                io.Int.Input("world_seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Which objects (places and colours) the start frame shows."),
                io.Int.Input("latent_frames", default=10 * DEFAULT_WORLD.clip_frames, min=2, max=4096,
                             tooltip="Video length in latent frames, the start frame included."),
                io.Int.Input("batch_size", default=1, min=1, max=16, tooltip="Videos generated at once."),
            ],
            outputs=[io.Model.Output("model", display_name="model"),
                     io.Conditioning.Output("positive", display_name="positive"),
                     io.Latent.Output("latent", display_name="latent"),
                     io.Image.Output("start", display_name="start", tooltip="The start frame (16x16).")],
        )

    @classmethod
    def execute(cls, model, style, world_seed, latent_frames, batch_size=1) -> io.NodeOutput:
        style_id = STYLE_NAMES.index(style)
        clip = render_clip(world_seed, 1, style=style_id)
        start = comfy.latent_formats.Wan21().process_out(encode_frames(clip.frames).unsqueeze(0))  # stored space
        patched = model.clone()
        options = patched.model_options.setdefault("transformer_options", {})
        options.setdefault("ar_config", {})["initial_latent"] = start
        side = DEFAULT_WORLD.size // 2
        latent = torch.zeros(batch_size, LATENT_CHANNELS, latent_frames, side, side,
                             device=comfy.model_management.intermediate_device())
        image = ((clip.frames + 1) / 2).permute(0, 2, 3, 1).contiguous()
        return io.NodeOutput(patched, [[style_context(style_id), {}]], {"samples": latent}, image)


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
            raise ValueError(f"expected a tiny-world video latent [batch, 16 channels, frames, height, width], "
                             f"got shape {tuple(samples.shape)}")
        z = comfy.latent_formats.Wan21().process_in(samples.float())     # stored -> model space
        frames = decode_frames(z).flatten(0, 1)                            # [B*F, 3, 16, 16]
        frames = frames.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
        return io.NodeOutput(((frames + 1) / 2).permute(0, 2, 3, 1).contiguous())
