"""Model folders the pack registers with ComfyUI, and the weights it ships."""

import os

import folder_paths

from ..pafu_core.world import assets

BUNDLED_HEADS_DIR = os.path.dirname(assets.HEAD)
#: the tiny world's causal student, listed by core's UNETLoader too (zero-download templates)
BUNDLED_MODELS_DIR = os.path.dirname(assets.STUDENT)
HEADS = "pafu_heads"


def heads_dir() -> str:
    return os.path.join(folder_paths.models_dir, HEADS)


def register() -> None:
    """``models/pafu_heads`` for user heads (and Hub downloads); the pack's own head is listed too, and
    its tiny-world student joins the diffusion models."""
    folder_paths.add_model_folder_path(HEADS, heads_dir(), is_default=True)
    folder_paths.add_model_folder_path(HEADS, BUNDLED_HEADS_DIR)
    folder_paths.folder_names_and_paths[HEADS][1].add(".safetensors")
    folder_paths.add_model_folder_path("diffusion_models", BUNDLED_MODELS_DIR)


def head_files() -> list[str]:
    return folder_paths.get_filename_list(HEADS)
