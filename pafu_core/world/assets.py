"""The tiny world's shipped weights: the causal student and its salience head (the teacher is research:
``pafu_lab.assets``)."""

import os

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
#: the causal student; its safetensors metadata marks it causal-AR, so ComfyUI 0.27's UNETLoader
#: builds it as a CausalWanModel
STUDENT = os.path.join(ASSETS, "diffusion_models", "pafu_tiny_world_student.safetensors")
HEAD = os.path.join(ASSETS, "heads", "pafu_tiny_world.safetensors")
