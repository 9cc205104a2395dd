"""The prompt timeline on core's AR path, without ComfyUI: which segment a block gets, when the
cross-attention caches are marked stale, and which changes are refused before any work."""

import pytest
import torch

from pafu_core.native_prompts import SEGMENT_KEY, block_segment, check_blocks, refresh_cross_attention
from pafu_core.timeline import PromptTimeline

TIMELINE = PromptTimeline((0, 6, 9), tuple(torch.zeros(1, 4, 8) + i for i in range(3)))


def test_each_block_gets_the_segment_of_its_frames():
    assert [block_segment(TIMELINE, f, 3) for f in (0, 3, 6, 9, 12)] == [0, 0, 1, 2, 2]
    with pytest.raises(ValueError, match="changes at latent frame 6, inside the block of latent frames 5-7"):
        block_segment(TIMELINE, 5, 3)


def test_cross_attention_is_marked_stale_only_where_the_segment_changes():
    caches = [{"is_init": False} for _ in range(2)]
    assert not refresh_cross_attention(caches, 0)                 # a fresh cache is filled by the next pass
    for c in caches:
        c["is_init"] = True                                       # core filled it at the first block
    assert not refresh_cross_attention(caches, 0) and all(c["is_init"] for c in caches)
    assert refresh_cross_attention(caches, 1)
    assert all(not c["is_init"] and c[SEGMENT_KEY] == 1 for c in caches)
    caches[0]["is_init"] = caches[1]["is_init"] = True
    assert not refresh_cross_attention(caches, 1) and all(c["is_init"] for c in caches)


def test_changes_are_checked_against_blocks_and_start_frames_before_work():
    check_blocks(TIMELINE, 12, 3)
    check_blocks(PromptTimeline((0, 7), TIMELINE.contexts[:2]), 13, 3, first=1)      # 1 start frame, blocks of 3
    with pytest.raises(ValueError, match="inside the block of latent frames 6-8"):
        check_blocks(PromptTimeline((0, 7), TIMELINE.contexts[:2]), 12, 3)
    with pytest.raises(ValueError, match="past the video's last latent frame"):
        check_blocks(TIMELINE, 9, 3)
    with pytest.raises(ValueError, match="inside the 2 given start frames"):
        check_blocks(PromptTimeline((0, 1), TIMELINE.contexts[:2]), 12, 3, first=2)
