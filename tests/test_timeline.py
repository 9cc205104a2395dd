"""The prompt timeline: checked in latent frames, and honoured chunk by chunk by the sampler."""

import pytest
import torch

from pafu_core.budget import CacheBudget
from pafu_core.policies import make_policy
from pafu_core.sampler import sample_video
from pafu_core.schedule import SamplerConfig
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


def test_changes_must_lie_inside_the_video_and_after_the_start():
    with pytest.raises(ValueError, match="latent frame 12 lies past the video's last latent frame \\(11\\)"):
        PromptTimeline((0, 12), (A, B)).check(num_frames=12)
    with pytest.raises(ValueError, match="frame 1 falls inside the 2 given start frames; move it to frame 2"):
        PromptTimeline((0, 1), (A, B)).check(num_frames=12, first=2)
    PromptTimeline((0, 7), (A, B)).check(num_frames=12)                     # any latent frame
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


def test_a_change_inside_a_chunk_conditions_each_frame_on_its_own_prompt(runner):
    """Frame-wise conditioning: a chunk that straddles a change attends frame by frame, which equals
    per-frame prompts given as one [B, F, L, C] tensor; frames before the change are the first prompt's."""
    C = torch.randn(1, 7, 4096, generator=torch.Generator().manual_seed(6))
    only_a = run(runner, A)
    inside = run(runner, PromptTimeline((0, 4), (A, C)))
    assert torch.equal(inside[:, :, :3], only_a[:, :, :3])
    assert not torch.allclose(inside[:, :, 3:], only_a[:, :, 3:], atol=1e-3)
    per_frame = torch.cat([A.expand(4, -1, -1), C.expand(8, -1, -1)]).unsqueeze(0)      # [1, 12, 7, 4096]
    assert torch.allclose(run(runner, per_frame), inside, atol=1e-5)
    # per-frame attention with every frame on one prompt is the one-prompt attention
    assert torch.allclose(run(runner, A.unsqueeze(1).expand(-1, 12, -1, -1)), only_a, atol=1e-5)
    with pytest.raises(ValueError, match="the chunk from latent frame 3 changes prompt inside it.*prompts of one length"):
        run(runner, PromptTimeline((0, 4), (A, B)))
    with pytest.raises(ValueError, match="per-frame prompts cover 11 latent frames; the video has 12"):
        run(runner, per_frame[:, :11])


def test_frame_wise_cross_attention_matches_a_hand_computed_reference(runner):
    """Each frame's tokens attend to their own text only: one layer's cross-attention, computed by hand."""
    b, f, tpf, n, d = 2, 3, 4, runner.num_heads, runner.head_dim
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(b, f * tpf, n, d, generator=gen)
    k, v = torch.randn(b, f, 5, n, d, generator=gen), torch.randn(b, f, 5, n, d, generator=gen)
    got = runner.cross_attend(q, k, v, f)
    for row in range(b):
        for frame in range(f):
            qs = q[row, frame * tpf:(frame + 1) * tpf].transpose(0, 1)                   # [n, tpf, d]
            w = torch.softmax(qs @ k[row, frame].permute(1, 2, 0) / d ** 0.5, dim=-1)    # [n, tpf, 5]
            want = (w @ v[row, frame].transpose(0, 1)).transpose(0, 1).flatten(1)       # [tpf, n*d]
            assert torch.allclose(got[row, frame * tpf:(frame + 1) * tpf], want, atol=1e-5)


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
    with pytest.raises(ValueError, match=r"the chunk from latent frame 4 changes prompt inside it"):
        run(runner, PromptTimeline((0, 6), (A, B)), start=first)     # chunks start after the start frame
    run(runner, PromptTimeline((0, 7), (A, B)), start=first)
