"""A prompt timeline on ComfyUI core's own autoregressive path (0.27+).

Core's ``sample_ar_video`` conditions a whole block on one context, and its causal Wan computes the
cross-attention keys and values at the first block only (``crossattn_caches[i]["is_init"]``), ignoring the
context afterwards. So a timeline there needs two things per block: the prompt of the block's frames (a
change must fall on a block boundary), and, when that prompt differs from the one the cross-attention caches
were filled with, those caches marked stale so the next pass recomputes them. Each cache dict remembers the
segment it holds (``SEGMENT_KEY``; core ignores extra keys), so the rule holds across runs and guiders.
"""

from __future__ import annotations

from .timeline import PromptTimeline

SEGMENT_KEY = "pafu_segment"


def block_segment(timeline: PromptTimeline, start_frame: int, frames: int) -> int:
    """The segment that conditions the block of latent frames [start_frame, start_frame + frames)."""
    first, last = timeline.segment_of(start_frame), timeline.segment_of(start_frame + frames - 1)
    if first != last:
        raise ValueError(f"the prompt changes at latent frame {timeline.starts[last]}, inside the block of latent "
                         f"frames {start_frame}-{start_frame + frames - 1}: core's AR sampler conditions a whole "
                         "block on one prompt, so put each change on a block boundary (a multiple of "
                         "num_frame_per_block after any start frames), or use the PaFu AR Chunk Sampler, which "
                         "changes prompts on any latent frame")
    return first


def refresh_cross_attention(crossattn_caches, segment: int) -> bool:
    """Marks every layer's cross-attention cache stale if it holds another segment's keys and values (core
    then recomputes them from this pass's context). Returns whether it did."""
    stale = any(cache.get(SEGMENT_KEY, segment) != segment for cache in crossattn_caches)
    for cache in crossattn_caches:
        if stale:
            cache["is_init"] = False
        cache[SEGMENT_KEY] = segment
    return stale


def check_blocks(timeline: PromptTimeline, num_frames: int, block_frames: int, first: int = 0) -> None:
    """Before any work: every change inside the video, after the ``first`` start frames, on a block boundary."""
    timeline.check(num_frames, first=first)
    for start in timeline.starts[1:]:
        f0 = first + (start - first) // block_frames * block_frames
        block_segment(timeline, f0, min(block_frames, num_frames - f0))
