"""PaFu Salience Head Loader: a head file from models/pafu_heads, or from the Hugging Face Hub."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..pafu_core.hub import download_head
from ..pafu_core.salience import load_head
from . import paths
from .types import PafuHead


class PaFuSalienceHeadLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuSalienceHeadLoader",
            display_name="PaFu Salience Head Loader",
            category="PaFu-KV",
            description="Loads a distilled PaFu-KV salience head (safetensors). It is checked against the "
                        "video model when the sampler runs.",
            inputs=[
                io.Combo.Input("source", options=["local", "hub"], default="local",
                               tooltip="local: a file in models/pafu_heads. hub: download repo_id/filename from "
                                       "the Hugging Face Hub into models/pafu_heads (honours HF_HUB_OFFLINE)."),
                io.Combo.Input("head_name", options=paths.head_files() or ["(none found)"],
                               tooltip="Head file in models/pafu_heads (used when source is local)."),
                io.String.Input("repo_id", default="", tooltip="Hub repo, e.g. owner/name (source hub)."),
                io.String.Input("filename", default="", tooltip="File in the Hub repo, e.g. "
                                "pafu_head_self_forcing_1.3b.safetensors (source hub)."),
                io.String.Input("revision", default="", optional=True,
                                tooltip="Branch, tag or commit of the Hub repo; empty = main."),
            ],
            outputs=[PafuHead.Output("head", display_name="head")],
        )

    @classmethod
    def execute(cls, source, head_name, repo_id, filename, revision="") -> io.NodeOutput:
        if source == "hub":
            path = download_head(repo_id, filename, paths.heads_dir(), revision or None)
        else:
            path = folder_paths.get_full_path(paths.HEADS, head_name)
            if path is None or not os.path.isfile(path):
                raise ValueError(f"salience head {head_name!r} not found in models/{paths.HEADS}")
        return io.NodeOutput(load_head(path))

    @classmethod
    def fingerprint_inputs(cls, source, head_name, repo_id, filename, revision=""):
        path = folder_paths.get_full_path(paths.HEADS, head_name) if source == "local" else None
        return os.path.getmtime(path) if path and os.path.isfile(path) else f"{repo_id}/{filename}@{revision}"
