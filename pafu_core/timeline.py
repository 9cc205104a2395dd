"""Conditioning that changes over the video, in latent frames, as an artist schedules prompts.

``PromptTimeline``: each segment holds from its start frame until the next one starts. ``FramePrompts``:
one prompt per latent frame (the tiny world's schedule, per video of the batch). A chunk whose frames
share one prompt attends to that prompt's cross-attention keys and values; a chunk whose frames differ
attends frame by frame, each frame's tokens to their own prompt (``WanChunkRunner.cross_attend``), so a
change may fall on any latent frame. The self-attention cache keeps what was generated under the
earlier prompts.
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

    def check(self, num_frames: int, first: int = 0, chunk_frames: int | None = None) -> None:
        """Every change inside the video and after the ``first`` given start frames, in latent frames; with
        ``chunk_frames``, every chunk that straddles a change has prompts of one length (before any work)."""
        for start in self.starts[1:]:
            if start >= num_frames:
                raise ValueError(f"a prompt change at latent frame {start} lies past the video's last latent "
                                 f"frame ({num_frames - 1})")
            if start < first:
                raise ValueError(f"a prompt change at latent frame {start} falls inside the {first} given start "
                                 f"frames; move it to frame {first} or later")
        if chunk_frames:
            for start in self.starts[1:]:
                f0 = first + (start - first) // chunk_frames * chunk_frames
                self._one_length(self.key(f0, min(num_frames, f0 + chunk_frames)), f0)

    def _one_length(self, segs: tuple[int, ...], f0: int) -> None:
        lengths = sorted({self.contexts[s].shape[1] for s in segs})
        if len(lengths) > 1:
            raise ValueError(f"the chunk from latent frame {f0} changes prompt inside it, so its frames attend each "
                             f"to their own prompt, which needs prompts of one length; these have {lengths} text "
                             "tokens: move the change to a chunk boundary, or use prompts of one length")

    def key(self, f0: int, f1: int) -> tuple[int, ...]:
        """Which prompts frames [f0, f1) use: one segment index, or one per frame when they differ."""
        segs = tuple(self.segment_of(f) for f in range(f0, f1))
        return segs[:1] if len(set(segs)) == 1 else segs

    def text(self, f0: int, f1: int) -> torch.Tensor:
        """[B, L, C] when one prompt covers frames [f0, f1), else [B, f1 - f0, L, C] (one per frame)."""
        segs = self.key(f0, f1)
        if len(segs) == 1:
            return self.contexts[segs[0]]
        self._one_length(segs, f0)
        parts = [self.contexts[s] for s in segs]
        rows = max(p.shape[0] for p in parts)
        return torch.stack([p.expand(rows, -1, -1) for p in parts], dim=1)

    def segment_of(self, frame: int) -> int:
        """Index of the segment that conditions ``frame``."""
        return bisect.bisect_right(self.starts, frame) - 1


@dataclass(frozen=True)
class FramePrompts:
    """One prompt per latent frame and batch row: ``context`` [B, F, L, C]."""
    context: torch.Tensor

    def __post_init__(self):
        if self.context.dim() != 4:
            raise ValueError(f"per-frame prompts are [batch, frames, tokens, width], got {tuple(self.context.shape)}")

    @property
    def contexts(self) -> tuple[torch.Tensor, ...]:
        return (self.context[:, 0],)

    def check(self, num_frames: int, first: int = 0, chunk_frames: int | None = None) -> None:
        if self.context.shape[1] != num_frames:
            raise ValueError(f"per-frame prompts cover {self.context.shape[1]} latent frames; the video has {num_frames}")

    def key(self, f0: int, f1: int) -> tuple[int, int]:
        return (f0, f1)

    def text(self, f0: int, f1: int) -> torch.Tensor:
        return self.context[:, f0:f1]


def as_prompts(context) -> "PromptTimeline | FramePrompts":
    """One conditioning [B, L, C], per-frame prompts [B, F, L, C], or a timeline, as a timeline-like."""
    if isinstance(context, (PromptTimeline, FramePrompts)):
        return context
    return FramePrompts(context) if context.dim() == 4 else PromptTimeline.of(context)


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
