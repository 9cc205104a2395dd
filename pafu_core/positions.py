"""Temporal positions of what the cache keeps: the true ones, or re-aligned as Deep Forcing's deep sink does.

Wan's 3-axis RoPE splits each head into a temporal band and two spatial bands, and attention under RoPE
depends only on the offset between a query's and a key's phase. With ``positions = "true"`` every token keeps
the phase of its frame in the video, so far into a long video a sink frame sits hundreds of frames from the
chunk being generated: a distance the model never saw in training.

``positions = "realigned"``, precisely. Seen from the chunk being generated, the frames of which the cache
keeps at least one token (in any layer and any batch row: one numbering for the whole cache) are numbered by
their order in the video, 0, 1, ..., K - 1: the sink frames first (they are the video's first frames), then
the kept recent frames; the chunk's frames follow at K, K + 1, ... A frame has one temporal phase for all its
kept tokens, however many of them survive. Spatial phases never change. Since frames only ever leave the
cache, a frame's number only falls, and only when a frame before it has left every layer: a sink frame keeps
its phase for ever. With nothing evicted yet, the numbering is the true one.

How: keys are cached after RoPE, at the phase they were written at; the cache remembers each slot's phase.
When a chunk opens, the temporal band of every kept key whose number changed is rotated by the change
(``rotate_pairs`` by delta x the band's frequencies; in place, layer by layer; 8-bit keys are dequantised,
rotated and quantised again), and the chunk is roped at phase K by the model's own RoPE (K is passed as its
start frame). Cost: one pass over the kept keys' temporal band per chunk, and one host read (K).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: what a cache can do with positions
POSITIONS = ("true", "realigned")
#: the choices of the budget node's ``positions``: "auto" is the policy's own recipe (``Policy.positions``)
POSITION_CHOICES = ("auto",) + POSITIONS


def check_positions(positions: str, choices: tuple[str, ...] = POSITIONS) -> str:
    if positions not in choices:
        raise ValueError(f"positions must be one of {', '.join(choices)}, got {positions!r}")
    return positions


@dataclass(frozen=True)
class TemporalBand:
    """The temporal band of a head's RoPE: its first ``pairs`` rotary pairs, frequencies theta^(-2i / (2 pairs))."""

    pairs: int
    theta: float = 10000.0

    def __post_init__(self):
        if self.pairs < 1:
            raise ValueError("positions = realigned moves the temporal phase of cached keys, and this model's RoPE "
                             "has no temporal band (0 rotary pairs on the time axis); use positions = true")

    def rotation(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [..., pairs] fp32 of a phase change of ``delta`` frames [...]."""
        i = torch.arange(self.pairs, device=delta.device, dtype=torch.float64)
        omega = self.theta ** (-2.0 * i / (2 * self.pairs))
        angle = (delta.to(torch.float64)[..., None] * omega).to(torch.float32)
        return torch.cos(angle), torch.sin(angle)


def realigned_numbers(frames: torch.Tensor, total_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``frames`` [...] long, the frame of every kept slot -> (each slot's frame number in the realigned order
    [...] long, K: how many frames are numbered, a 0-d device tensor)."""
    present = torch.zeros(total_frames, dtype=torch.bool, device=frames.device)
    present[frames.flatten()] = True
    rank = torch.cumsum(present, 0) - 1
    return rank[frames], present.sum()
