"""The tiny procedural video world: the embedded default that needs no download.

``scenes`` renders ground-truth clips, ``codec`` maps RGB frames to 16-channel Wan-shaped latents and
back, ``metrics`` scores long-range consistency exactly, ``train`` trains the bidirectional teacher
and the causal student, ``assets`` locates the committed weights.
"""

from .codec import decode_frames, encode_frames
from .scenes import WorldConfig, render_clip, style_context

__all__ = ["WorldConfig", "render_clip", "style_context", "encode_frames", "decode_frames"]
