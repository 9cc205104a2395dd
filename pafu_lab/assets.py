"""Research weights, never shipped to ComfyUI: the tiny world's bidirectional teacher (distillation targets
and ablations), and the RECALL world's causal student and salience head (its benchmarks)."""

import os

_HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
TEACHER = os.path.join(_HERE, "tiny_world_teacher.safetensors")
RECALL_STUDENT = os.path.join(_HERE, "recall", "pafu_recall_student.safetensors")
RECALL_HEAD = os.path.join(_HERE, "recall", "pafu_recall_head.safetensors")
