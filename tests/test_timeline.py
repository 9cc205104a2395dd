"""The prompt timeline: checked in latent frames, and honoured chunk by chunk by the sampler."""

import pytest
import torch

from pafu_core.cache import CacheBudget
from pafu_core.policies import make_policy
from pafu_core.sampler import SamplerConfig, sample_video
from pafu_core.timeline import PromptTimeline

A = torch.randn(1, 7, 4096, generator=torch.Generator().manual_seed(3))
B = torch.randn(1, 5, 4096, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("starts, prompts, message", [
    ((), (), "one start frame per prompt"),
    ((0, 6), (A,), "one start frame per prompt"),
    ((3,), (A,), "must start at latent frame 0"),
    ((0, 6, 6), (A, B, A), "must increase"),
    ((0, 2.5), (A, B), "whole latent frames"),
])
def test_a_malformed_timeline_is_refused(starts, prompts, message):
    with pytest.raises(ValueError, match=message):
        PromptTimeline(starts, prompts)


def test_changes_must_lie_inside_the_video_and_on_chunk_boundaries():
    with pytest.raises(ValueError, match="latent frame 12 lies past the video's last latent frame \\(11\\)"):
        PromptTimeline((0, 12), (A, B)).check(num_frames=12, chunk_frames=3)
    with pytest.raises(ValueError, match="frame 7 falls inside a chunk of 3 frames; move it to frame 6 or 9"):
        PromptTimeline((0, 7), (A, B)).check(num_frames=12, chunk_frames=3)
    PromptTimeline((0, 7), (A, B)).check(num_frames=12, chunk_frames=1)     # frame-wise chunks: any frame
    assert [PromptTimeline((0, 6), (A, B)).segment_of(f) for f in (0, 5, 6, 11)] == [0, 0, 1, 1]


def run(runner, context, **kw):
    return sample_video(runner, context, num_frames=12, height=8, width=8, policy=make_policy("fifo"),
                        budget=CacheBudget(6), config=SamplerConfig(chunk_frames=3, seed=5), **kw).latents


def test_the_sampler_changes_prompt_at_the_given_frame(runner):
    """Before the change the video is the first prompt's, frame for frame; from the change on it follows
    the second prompt (the cross-attention K/V were recomputed) while the cache still holds the past."""
    only_a, only_b = run(runner, A), run(runner, B)
    both = run(runner, PromptTimeline((0, 6), (A, B)))
    assert torch.equal(both[:, :, :6], only_a[:, :, :6])
    assert not torch.allclose(both[:, :, 6:], only_a[:, :, 6:], atol=1e-3)
    assert not torch.allclose(both[:, :, 6:], only_b[:, :, 6:], atol=1e-3)     # the past was A's, not B's
    # a "change" to the same prompt recomputes the same K/V: nothing moves
    assert torch.equal(run(runner, PromptTimeline((0, 6), (A, A))), only_a)


def test_guided_runs_keep_their_negative_across_changes(runner):
    neg = torch.zeros(1, 3, 4096)
    kw = dict(negative=neg, cfg=2.0)
    both = run(runner, PromptTimeline((0, 6), (A, B)), **kw)
    assert torch.equal(both[:, :, :6], run(runner, A, **kw)[:, :, :6])
    assert torch.isfinite(both).all()


def test_a_change_inside_a_chunk_is_refused_before_any_work(runner):
    with pytest.raises(ValueError, match="falls inside a chunk of 3 frames"):
        run(runner, PromptTimeline((0, 4), (A, B)))


def test_a_start_frame_is_written_first_kept_as_a_sink_and_returned_as_given(runner):
    """Image-to-video: the start latent enters the cache before anything is generated, stays whatever the
    policy says (a sink), and the video begins with it; what follows depends on it."""
    first = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    other = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(10))
    res = sample_video(runner, A, num_frames=13, height=8, width=8, policy=make_policy("fifo"),
                       budget=CacheBudget(4), config=SamplerConfig(chunk_frames=3, seed=5), start=first)
    assert torch.equal(res.latents[:, :, :1], first)
    assert [(c.frame_start, c.frames) for c in res.report.chunks] == [(0, 1), (1, 3), (4, 3), (7, 3), (10, 3)]
    kept = res.report.final_kept.view(runner.num_layers, 13, 16)
    assert kept[:, 0].all() and not kept[:, 1:5].any()             # the start stayed, FIFO let the rest go
    again = sample_video(runner, A, num_frames=13, height=8, width=8, policy=make_policy("fifo"),
                         budget=CacheBudget(4), config=SamplerConfig(chunk_frames=3, seed=5), start=other)
    assert not torch.allclose(again.latents[:, :, 1:], res.latents[:, :, 1:], atol=1e-3)
    with pytest.raises(ValueError, match="the start latent has shape"):
        run(runner, A, start=torch.zeros(1, 16, 1, 4, 4))
    with pytest.raises(ValueError, match="give 1 to 11"):
        run(runner, A, start=torch.zeros(1, 16, 12, 8, 8))
    with pytest.raises(ValueError, match=r"chunks start after the 1 start frames\); move it to frame 4 or 7"):
        run(runner, PromptTimeline((0, 6), (A, B)), start=first)
