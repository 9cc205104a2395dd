"""The tiny world: deterministic, its codec exact, its scores separate memory from forgetting."""

import torch

from pafu_core.world.codec import decode_frames, encode_frames
from pafu_core.world.metrics import psnr, return_consistency, reveal_starts, schedule_accuracy, ssim
from pafu_core.world.scenes import DEFAULT_WORLD, render_clip, style_context, visible_schedule


def test_clips_are_deterministic_and_follow_the_schedule():
    a, b = render_clip(3, 40), render_clip(3, 40)
    assert torch.equal(a.frames, b.frames)
    assert not torch.equal(a.frames, render_clip(4, 40).frames)
    assert a.visible.tolist() == visible_schedule(40, 0).tolist()
    assert reveal_starts(40) == [18, 36]
    # four cells change at every return, the rest persist
    changed = (a.cells[18] - a.cells[2]).abs().sum(-1) > 0
    assert 0 < int(changed.sum()) <= DEFAULT_WORLD.changes_per_reveal


def test_codec_is_exact_and_wan_shaped():
    clip = render_clip(1, 6)
    z = encode_frames(clip.frames)
    assert z.shape == (16, 6, 8, 8)
    assert torch.allclose(decode_frames(z), clip.frames, atol=1e-5)
    batch = encode_frames(torch.stack([clip.frames, clip.frames]))
    assert batch.shape == (2, 16, 6, 8, 8)


def test_scores_separate_memory_from_forgetting():
    truth = render_clip(0, 180).frames
    assert return_consistency(truth) > 0.7
    assert schedule_accuracy(truth) == 1.0
    forgetful = truth.clone()
    for start in reveal_starts(180):
        forgetful[start:start + 3] = render_clip(1000 + start, 3, style=render_clip(0, 1).style).frames
    assert return_consistency(forgetful) < 0.35
    assert return_consistency(torch.zeros_like(truth)) == 0.0        # flat frames remember nothing
    shifted = truth[7:]                        # a model whose clock is off is judged on memory, not phase
    assert return_consistency(shifted) > 0.7 and schedule_accuracy(shifted) == 1.0
    assert psnr(truth, truth) == float("inf") and abs(ssim(truth, truth) - 1) < 1e-6


def test_style_contexts_are_fixed_and_distinct():
    assert torch.equal(style_context(2), style_context(2))
    assert not torch.allclose(style_context(2), style_context(3))
    assert style_context(0).shape == (1, DEFAULT_WORLD.context_tokens, 4096)
