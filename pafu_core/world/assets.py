"""The committed weights of the tiny world (a few MB; CI and the demo never train)."""

import os

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
#: the causal student; its safetensors metadata marks it causal-AR, so ComfyUI 0.27's UNETLoader
#: builds it as a CausalWanModel
STUDENT = os.path.join(ASSETS, "diffusion_models", "pafu_tiny_world_student.safetensors")
TEACHER = os.path.join(ASSETS, "models", "tiny_world_teacher.safetensors")
HEAD = os.path.join(ASSETS, "heads", "pafu_tiny_world.safetensors")
