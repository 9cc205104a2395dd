"""Training in the situation of inference: the masks are what the cache held, the loss reads the past through
them, and a run stopped early then resumed is the run that never stopped."""

import pytest
import torch
from safetensors.torch import load_file

from pafu_core.adapter import WanChunkRunner
from pafu_core.policies import make_policy
from pafu_core.schedule import SamplerConfig
from pafu_core.world.scenes import CLOSED, RECALL, schedule_token
from pafu_lab.world.situation import (chunk_of_frames, draw_situation, policy_rollout, rule_frames,
                                     situation_budget, situation_masks, unknowable_cells)
from pafu_lab.world.train import (Situation, _fresh_student, own_rollout_targets, slipped_schedule, student_loss,
                                  teacher_forcing_mask, train, whole_chunk_tail, world_batch)

SAMPLER = SamplerConfig()


@pytest.fixture(scope="module")
def student():
    return WanChunkRunner(_fresh_student(0).eval(), dtype=torch.float32)


def batch(frames: int, rows: int = 2):
    return world_batch(0, rows, 3, RECALL, frames, with_clips=True)


def test_a_keep_all_rollout_gives_the_full_teacher_forcing_view(student):
    lat, ctx, _, _ = batch(9)
    kept = policy_rollout(student, make_policy("keep_all"), None, ctx, lat, SAMPLER)
    tpf = student.tokens_per_frame(*lat.shape[-2:])
    masks = situation_masks(kept, tpf)
    full = teacher_forcing_mask(9, SAMPLER.chunk_frames, tpf, torch.Generator(), "full")
    assert masks.shape == (2, len(student.model.blocks), *full.shape)
    assert torch.equal(masks, full.expand_as(masks))


def test_a_fifo_rollout_holds_the_newest_frames_within_its_budget(student):
    lat, ctx, _, _ = batch(18)
    tpf = student.tokens_per_frame(*lat.shape[-2:])
    chunk = SAMPLER.chunk_frames * tpf
    budget = situation_budget("fifo", 0.125, RECALL.clip_frames)
    kept = policy_rollout(student, make_policy("fifo"), budget, ctx, lat, SAMPLER)
    capacity = budget.tokens(tpf, chunk_tokens=chunk)
    counts = kept.held.sum(-1)                                             # [C, L, B]
    for c in range(kept.held.shape[0]):
        held = kept.held[c]
        n = int(counts[c].max())
        assert torch.equal(counts[c], torch.full_like(counts[c], n))       # every layer and row alike
        assert n == min(c * chunk, capacity)                               # all of the past, then the budget
        frame = torch.arange(held.shape[-1]) // tpf
        dropped = ~held[..., :c * chunk]
        if dropped.any():                                                  # whole older frames go first
            newest_dropped = torch.where(dropped, frame[:c * chunk], -1).amax(-1)
            oldest_held = torch.where(held, frame, 10**6).amin(-1)
            assert (newest_dropped <= oldest_held).all()
        assert not held[..., c * chunk:].any()                             # never the chunk itself or a later one
    assert int(counts[-1].max()) < (kept.held.shape[0] - 1) * chunk        # the budget did evict


@pytest.mark.parametrize("tail", [None, 6])
def test_the_loss_through_keep_all_masks_is_the_full_views_loss(student, tail):
    """The situation's masks replace the view of the past and nothing else (same noise, same offset); a
    budgeted cache's masks change the loss."""
    lat, ctx, weights, _ = batch(9)
    tpf = student.tokens_per_frame(*lat.shape[-2:])
    full = situation_masks(policy_rollout(student, make_policy("keep_all"), None, ctx, lat, SAMPLER), tpf)
    fifo = situation_masks(policy_rollout(student, make_policy("fifo"), situation_budget("fifo", 0.125, 36), ctx,
                                          lat, SAMPLER), tpf)

    def loss(mode, masks=None):
        with torch.no_grad():
            return student_loss(student, lat, ctx, weights, torch.Generator().manual_seed(5), "cpu", SAMPLER, mode,
                                masks=masks, tail=tail)

    assert torch.allclose(loss("subset", masks=full), loss("full"), rtol=1e-5, atol=1e-7)
    # the fresh student is a near-identity stack, so attention moves its loss only a little; far beyond rounding
    assert (loss("full", masks=fifo) - loss("full")).abs() > 1e-5


def test_budgets_are_drawn_from_the_runs_range_and_a_bad_range_is_refused():
    drawn = [draw_situation(step, 7, ("fifo",), (0.125, 0.25))[1] for step in range(50)]
    assert all(0.125 <= b <= 0.25 for b in drawn) and max(drawn) - min(drawn) > 0.05
    assert draw_situation(3, 7) != draw_situation(4, 7) and draw_situation(3, 7) == draw_situation(3, 7)
    with pytest.raises(ValueError, match="0.5,0.25"):
        Situation(1, ("fifo",), budgets=(0.5, 0.25))


def test_a_run_stopped_early_and_resumed_is_the_run_that_never_stopped(tmp_path):
    common = dict(kind="student", steps=3, batch=1, lr=1e-3, seed=0, device="cpu", world=RECALL, frames=9,
                  log_every=1, situation=Situation(1, ("fifo", "random"), budgets=(0.125, 0.25)))
    whole = train(out=str(tmp_path / "whole.safetensors"), checkpoint=str(tmp_path / "whole.ckpt"), **common)
    ckpt = str(tmp_path / "cut.ckpt")
    cut = train(out=str(tmp_path / "cut.safetensors"), checkpoint=ckpt, max_minutes=1e-9, **common)
    assert cut["step"] == 1 and whole["step"] == 3
    done = train(out=str(tmp_path / "cut.safetensors"), checkpoint=ckpt, resume=ckpt, **common)
    assert [r["to_step"] for r in done["runs"]] == [1, 3]
    assert [list(h) for h in done["history"]] == [list(h) for h in whole["history"]]
    a, b = load_file(str(tmp_path / "whole.safetensors")), load_file(str(tmp_path / "cut.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = dict(common, situation=Situation(1, ("fifo", "random"), budgets=(0.125, 0.5)))
    with pytest.raises(ValueError, match="other situation"):
        train(out=str(tmp_path / "x.safetensors"), resume=ckpt, **other)


def test_a_free_rollout_starts_from_the_given_frames_and_its_masks_follow_its_own_chunks(student):
    """Free: the start frame is a chunk of its own and is returned as given; the rest is generated; the keep-all
    masks are the block-causal view over those chunks (frame 0, then frames 1-3, 4-6, 7-9)."""
    lat, ctx, _, _ = batch(10)
    noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(1))
    kept = policy_rollout(student, make_policy("keep_all"), None, ctx, lat, SAMPLER, free_from=1, noise=noise)
    assert torch.equal(kept.latents[:, :, :1], lat[:, :, :1])
    assert not torch.allclose(kept.latents[:, :, 1:], lat[:, :, 1:], atol=0.1)     # generated, not watched
    assert kept.chunk_of_frame.tolist() == [0, 1, 1, 1, 2, 2, 2, 3, 3, 3] == chunk_of_frames(10, 3, 1).tolist()
    assert kept.held.shape[0] == 4
    tpf = student.tokens_per_frame(*lat.shape[-2:])
    block = kept.chunk_of_frame.repeat_interleave(tpf)
    bq, bk = block[:, None], block[None, :]
    n = len(block)
    want = torch.cat([torch.cat([bk <= bq, torch.zeros(n, n, dtype=torch.bool)], 1),
                      torch.cat([bk < bq, bk == bq], 1)])
    masks = situation_masks(kept, tpf)
    assert torch.equal(masks, want.expand_as(masks))
    with pytest.raises(ValueError, match="needs situation steps"):
        Situation(0, ("fifo",), free_every=2)


def test_trained_frames_begin_where_a_chunk_does():
    after_start = chunk_of_frames(10, 3, 1)                  # 0 | 1 2 3 | 4 5 6 | 7 8 9
    assert [whole_chunk_tail(t, after_start) for t in (10, 9, 7, 6, 4, 3, 2)] == [10, 9, 6, 6, 3, 3, 0]
    assert whole_chunk_tail(6, chunk_of_frames(9, 3)) == 6


def _paint_cell(frame, cell, color):
    k, grid = RECALL.cell, RECALL.grid
    frame[:, (cell // grid) * k:(cell // grid + 1) * k, (cell % grid) * k:(cell % grid + 1) * k] = color.view(3, 1, 1)


def test_an_object_the_rollouts_past_does_not_fix_weighs_nothing():
    """Drawn as the world drew it, only first appearances after the start are unknowable; an object drawn
    missing, or in another colour, at its latest showing makes its next appearance unknowable, and nothing else."""
    from pafu_core.world.scenes import OBJECT_COLORS
    _, _, _, clips = world_batch(0, 4, 3, RECALL, 90, with_clips=True)
    clip = next(c for c in clips if c.visible[0])            # starts open: the start shows the first group
    shown = clip.colors >= 0                                   # [F, J]
    assert shown.any(0).all()
    first = shown.float().argmax(0)                            # first frame each object shows in
    want = torch.zeros(len(shown), RECALL.cells, dtype=torch.bool)
    for j in range(shown.shape[1]):
        if first[j] >= 1:
            ends = first[j] + shown[first[j]:, j].float().argmin()
            want[first[j]:ends, clip.positions[j]] = True
    assert torch.equal(unknowable_cells(clip, clip.frames, 1), want)
    assert want.any() and not want[0].any()

    j = int(first.argmax())                                    # an object first shown after the start ...
    begin = int(first[j])
    end = begin + int(shown[begin:, j].float().argmin())       # ... the frame after its first appearance
    back = end + int(shown[end:, j].float().argmax())          # its return
    back_end = back + int(shown[back:, j].float().argmin())
    assert end < back < back_end
    cell = int(clip.positions[j])
    for color in (torch.zeros(3), OBJECT_COLORS[(int(clip.colors[end - 1, j]) + 3) % len(OBJECT_COLORS)]):
        frames = clip.frames.clone()
        _paint_cell(frames[end - 1], cell, color)              # missing, then another colour
        got = unknowable_cells(clip, frames, 1)
        expected = want.clone()
        expected[back:back_end, cell] = True
        assert torch.equal(got, expected)


def test_rule_targets_return_an_object_as_the_rollout_last_drew_it():
    """Drawn in another palette colour at its latest showing, an object returns in that colour, the world's change
    within the appearance on top, and weighs again; drawn missing, it stays unknown and its target the world's."""
    from pafu_core.world.codec import decode_frames, encode_frames
    from pafu_core.world.scenes import OBJECT_COLORS
    from pafu_lab.world.metrics import cell_colors
    n = len(OBJECT_COLORS)
    _, _, _, clips = world_batch(0, 4, 3, RECALL, 90, with_clips=True)
    clip = next(c for c in clips if c.visible[0])
    shown = clip.colors >= 0
    target, unknown = rule_frames(clip, clip.frames, 1)
    assert torch.equal(target, clip.frames) and torch.equal(unknown, unknowable_cells(clip, clip.frames, 1))

    j = int(shown[0].float().argmax())                         # an object the start shows ...
    end = int(shown[:, j].float().argmin())                    # ... the frame after its first appearance
    back = end + int(shown[end:, j].float().argmax())          # its return
    back_end = back + int(shown[back:, j].float().argmin())
    cell = int(clip.positions[j])
    drawn = (int(clip.colors[end - 1, j]) + 3) % n
    frames = clip.frames.clone()
    _paint_cell(frames[end - 1], cell, OBJECT_COLORS[drawn])
    target, unknown = rule_frames(clip, frames, 1)
    assert torch.equal(unknown, unknowable_cells(clip, clip.frames, 1))        # it weighs, as a right one does
    got = cell_colors(target, RECALL)[back:back_end, cell]
    want = OBJECT_COLORS[(clip.colors[back:back_end, j] - clip.colors[end - 1, j] + drawn) % n]
    assert torch.allclose(got, want)
    assert int(clip.colors[back_end - 1, j]) != int(clip.colors[back, j])      # the world changed it within
    others = torch.ones(len(clip.frames), dtype=torch.bool)
    others[back:back_end] = False
    assert torch.equal(target[others], clip.frames[others])                    # nothing else moves

    frames = clip.frames.clone()
    _paint_cell(frames[end - 1], cell, torch.zeros(3))                         # drawn missing
    target, unknown = rule_frames(clip, frames, 1)
    assert torch.equal(target, clip.frames) and unknown[back:back_end, cell].all()

    rows = torch.stack([encode_frames(clip.frames), encode_frames(frames)])
    targets, unknown_lat = own_rollout_targets(rows, [clip, clip], 1, rule_targets=True)
    assert targets.shape == rows.shape and unknown_lat.shape == (2, 1, *rows.shape[2:])
    assert torch.allclose(decode_frames(targets[0]), clip.frames, atol=1e-5)
    assert unknown_lat[1].sum() > unknown_lat[0].sum() and torch.equal(own_rollout_targets(rows, [clip, clip], 1)[1], unknown_lat)


def test_a_slipped_schedule_misreads_a_share_of_the_frames_each_as_another_state():
    """Every slipped frame reads a schedule token the world never gave it (the curtain's other state or the
    other group), about ``share`` of the frames slip, the style tokens stay, and the slips follow the generator."""
    _, ctx, _, clips = batch(108, rows=4)
    tokens = torch.cat([schedule_token(g, RECALL) for g in range(CLOSED, RECALL.groups)], dim=1)[0]   # [G+1, D]
    slipped = slipped_schedule(clips, 0.25, torch.Generator().manual_seed(1))
    assert slipped.shape == ctx.shape and torch.equal(slipped[:, :, :-1], ctx[:, :, :-1])
    read = (slipped[:, :, -1, None] - tokens).norm(dim=-1).argmin(-1) - 1        # [B, F] the value each frame reads
    given = torch.stack([c.showing for c in clips])
    moved = read != given
    assert 0.18 < moved.float().mean() < 0.32
    assert torch.equal(moved, (slipped[:, :, -1] != ctx[:, :, -1]).any(-1))     # a frame either slips or is as given
    assert {int(v) for v in read[moved].unique()} == {CLOSED, 0, 1}
    assert torch.equal(slipped, slipped_schedule(clips, 0.25, torch.Generator().manual_seed(1)))
    assert torch.equal(slipped_schedule(clips, 0.0, torch.Generator()), ctx)


def test_the_clean_copies_read_the_slipped_schedule_and_the_trained_frames_their_own(student):
    """``ctx_past`` equal to ``ctx`` is the plain loss; a slipped one changes it. Misreading the trained frames'
    own schedule instead (``ctx`` slipped everywhere) is another loss again: the noisy copies keep theirs."""
    lat, ctx, weights, clips = batch(9)
    slipped = slipped_schedule(clips, 0.5, torch.Generator().manual_seed(2))

    def loss(**kw):
        with torch.no_grad():
            return student_loss(student, lat, kw.pop("ctx", ctx), weights, torch.Generator().manual_seed(5), "cpu",
                                SAMPLER, "full", **kw)

    plain = loss()
    assert torch.allclose(loss(ctx_past=ctx), plain, rtol=1e-6, atol=1e-8)
    past_only = loss(ctx_past=slipped)
    assert (past_only - plain).abs() > 1e-7
    assert (loss(ctx=slipped) - past_only).abs() > 1e-7
