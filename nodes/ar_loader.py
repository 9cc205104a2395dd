"""PaFu AR Checkpoint Loader: Self-Forcing / CausVid / Causal-Forcing / LongLive training checkpoints.

ComfyUI 0.8.0's UNET loader does not strip the ``generator_ema.`` / ``model.`` prefixes those files
use; this node does, then builds the MODEL with ComfyUI's own ``load_diffusion_model_state_dict``.
"""

from __future__ import annotations

import comfy.sd
import folder_paths
import torch
from comfy_api.latest import io

from ..pafu_core.wan import check_wan_state_dict, read_state_dict, strip_checkpoint_prefixes

#: set on a MODEL's BaseModel by the pack's loaders of causal-AR checkpoints: its file name (the distill node
#: accepts such a model, and names the file in the head's card)
CAUSAL_AR_FILE = "pafu_causal_ar_file"
DTYPES = {"default": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class PaFuARCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuARCheckpointLoader",
            display_name="PaFu AR Checkpoint Loader",
            category="PaFu-KV",
            description="Loads an autoregressive Wan 2.1 checkpoint (e.g. self_forcing_dmd.pt) from "
                        "models/diffusion_models, stripping training prefixes (EMA weights preferred).",
            inputs=[
                io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list("diffusion_models"),
                               tooltip="File in models/diffusion_models (.pt is read with weights_only=True)."),
                io.Combo.Input("weight_dtype", options=list(DTYPES), default="default",
                               tooltip="Weight dtype; default lets ComfyUI choose for your device."),
            ],
            outputs=[io.Model.Output("model", display_name="model")],
        )

    @classmethod
    def execute(cls, ckpt_name, weight_dtype="default") -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("diffusion_models", ckpt_name)
        sd = strip_checkpoint_prefixes(read_state_dict(path))
        check_wan_state_dict(sd, ckpt_name)        # readable refusals before ComfyUI's detection sees it
        options = {"dtype": DTYPES[weight_dtype]} if DTYPES[weight_dtype] is not None else {}
        model = comfy.sd.load_diffusion_model_state_dict(sd, model_options=options)
        if model is None:
            raise ValueError(f"ComfyUI could not build a model from {ckpt_name}")
        setattr(model.model, CAUSAL_AR_FILE, ckpt_name)
        return io.NodeOutput(model)
