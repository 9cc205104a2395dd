"""A prompt timeline: the conditioning changes at given latent frames, as an artist schedules prompts.

Each segment holds from its start frame until the next one starts. A chunk is generated under the
segment its first frame lies in, so every change must fall on a chunk boundary (with chunks of one
latent frame, on any frame); a change inside a chunk is refused with the nearest boundaries, never
rounded silently. At a change the sampler recomputes the cross-attention keys and values from the new
conditioning; the self-attention cache keeps what was generated under the earlier prompts.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PromptTimeline:
    starts: tuple[int, ...]                 # latent frame where each segment begins; the first is 0
    contexts: tuple[torch.Tensor, ...]      # each [B or 1, text tokens, text_dim]

    def __post_init__(self):
        if not self.starts or len(self.starts) != len(self.contexts):
            raise ValueError(f"a prompt timeline needs one start frame per prompt, got {len(self.starts)} start "
                             f"frames for {len(self.contexts)} prompts")
        if any(not isinstance(s, int) or isinstance(s, bool) for s in self.starts):
            raise ValueError(f"prompt start frames must be whole latent frames, got {list(self.starts)}")
        if self.starts[0] != 0:
            raise ValueError(f"the first prompt must start at latent frame 0, got {self.starts[0]}")
        if any(b <= a for a, b in zip(self.starts, self.starts[1:])):
            raise ValueError(f"prompt start frames must increase, got {list(self.starts)}")

    @classmethod
    def of(cls, context: "torch.Tensor | PromptTimeline") -> "PromptTimeline":
        """A timeline as it is, or one prompt for the whole video."""
        return context if isinstance(context, PromptTimeline) else cls((0,), (context,))

    def check(self, num_frames: int, chunk_frames: int, first: int = 0) -> None:
        """Every change inside the video and on a chunk boundary (chunks start at ``first``: after the given
        start frames), in the user's unit (latent frames)."""
        for start in self.starts[1:]:
            if start >= num_frames:
                raise ValueError(f"a prompt change at latent frame {start} lies past the video's last latent "
                                 f"frame ({num_frames - 1})")
            if start < first or (start - first) % chunk_frames:
                below = first + max(0, start - first) // chunk_frames * chunk_frames
                raise ValueError(f"a prompt change at latent frame {start} falls inside a chunk of {chunk_frames} "
                                 f"frames{f' (chunks start after the {first} start frames)' if first else ''}; move "
                                 f"it to frame {below} or {below + chunk_frames}, or generate chunks of 1 frame")

    def segment_of(self, frame: int) -> int:
        """Index of the segment that conditions ``frame``."""
        return bisect.bisect_right(self.starts, frame) - 1


def parse_frames(text: str) -> tuple[int, ...]:
    """'24, 48' -> (24, 48): latent frames where the prompt changes, with a readable error."""
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    try:
        frames = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"change frames must be whole latent frames separated by commas, e.g. 24, 48; "
                         f"got {text!r}") from None
    if not frames:
        raise ValueError("give at least one latent frame where the prompt changes, e.g. 24")
    if min(frames) < 1:
        raise ValueError(f"prompt changes start after frame 0 (the sampler's positive prompt holds there), "
                         f"got {list(frames)}")
    return frames


def with_changes(first: torch.Tensor, changes: list[tuple[int, torch.Tensor]]) -> PromptTimeline:
    """The first prompt from frame 0, then each (frame, prompt) change, in the order given."""
    return PromptTimeline((0,) + tuple(f for f, _ in changes), (first,) + tuple(c for _, c in changes))
