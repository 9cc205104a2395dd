"""Research weights: the tiny world's bidirectional teacher (distillation targets and ablations only;
never shipped to ComfyUI)."""

import os

TEACHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tiny_world_teacher.safetensors")
