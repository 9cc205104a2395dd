"""The tiny procedural video world: the embedded default that needs no download.

Runtime half (what the tiny-world nodes need): ``scenes`` renders ground-truth clips and their
conditioning, ``codec`` maps RGB frames to 16-channel Wan-shaped latents and back, ``assets`` locates
the shipped student and head. Training, evaluation, truth metrics and oracles are research:
``pafu_lab.world``.
"""

from .codec import decode_frames, encode_frames
from .scenes import WorldConfig, render_clip, style_context

__all__ = ["WorldConfig", "render_clip", "style_context", "encode_frames", "decode_frames"]
