"""The tiny world: deterministic, its codec exact, its truth metric separates memory from forgetting."""

import pytest
import torch

from pafu_core.world.codec import decode_frames, encode_frames
from pafu_lab.world.metrics import (CHANCE, appearances, change_accuracy, object_mask, cell_colors, psnr,
                                     return_accuracy, return_scores, schedule_accuracy, ssim, watched_return_scores,
                                     watched_returns)
from pafu_core.world.scenes import DEFAULT_WORLD, OBJECT_COLORS, render_clip, style_context, visible_schedule

W = DEFAULT_WORLD


def test_clips_are_deterministic_and_follow_the_schedule():
    a, b = render_clip(3, 40), render_clip(3, 40)
    assert torch.equal(a.frames, b.frames)
    assert not torch.equal(a.frames, render_clip(4, 40).frames)
    assert a.visible.tolist() == visible_schedule(40, 0).tolist()
    assert appearances(a.frames) == [(0, 3), (15, 18), (30, 33)]
    # objects sit at fixed cells; every appearance changes every colour after its first frame, and the
    # return shows the colour of the latest appearance
    shown = object_mask(cell_colors(a.frames))
    assert shown[0].sum() == W.num_objects and torch.equal(shown[0], shown[15])
    assert torch.all(a.colors[1] != a.colors[0]) and torch.equal(a.colors[15], a.colors[2])
    assert torch.all(a.colors[16] != a.colors[15]) and torch.all(a.colors[3:15] == -1)


def test_only_a_few_tokens_carry_memory():
    clip = render_clip(5, 36)
    cells = cell_colors(clip.frames)
    spread = cells.amax(-1) - cells.amin(-1)
    objects = object_mask(cells)
    assert objects.sum(-1).max() == W.num_objects < W.cells // 4
    assert spread[~objects].max() < 0.2 < 1.5 < spread[objects].min()


def test_codec_is_exact_and_wan_shaped():
    clip = render_clip(1, 6)
    z = encode_frames(clip.frames)
    assert z.shape == (16, 6, 8, 8)
    assert torch.allclose(decode_frames(z), clip.frames, atol=1e-5)
    batch = encode_frames(torch.stack([clip.frames, clip.frames]))
    assert batch.shape == (2, 16, 6, 8, 8)


def paint(frames, clip, start, colors):
    out = frames.clone()
    c = W.cell
    for k, p in enumerate(clip.positions.tolist()):
        r, col = divmod(p, W.grid)
        out[start:start + 1, :, r * c:(r + 1) * c, col * c:(col + 1) * c] = OBJECT_COLORS[colors[k]].view(1, 3, 1, 1)
    return out


def test_truth_scores_one_stale_and_forgetful_copies_do_not():
    gen = torch.Generator().manual_seed(0)
    truth, stale, forgetful = [], [], []
    for seed in range(12):
        clip = render_clip(seed, 180)
        truth.append(return_accuracy(clip.frames))
        old = clip.frames.clone()          # every return shows the first appearance's colours
        fresh = clip.frames.clone()        # every return shows random colours
        for b0, _ in appearances(clip.frames)[1:]:
            old = paint(old, clip, b0, clip.colors[0].tolist())
            fresh = paint(fresh, clip, b0, torch.randint(len(OBJECT_COLORS), (W.num_objects,), generator=gen).tolist())
        stale.append(return_accuracy(old))
        forgetful.append(return_accuracy(fresh))
    mean = lambda xs: sum(xs) / len(xs)
    assert min(truth) == 1.0
    assert mean(stale) < 0.25                         # a stale copy is no better than a guess (chance 1/6)
    assert abs(mean(forgetful) - CHANCE) < 0.1        # guessing scores near chance
    flat = torch.zeros(180, 3, 16, 16)
    assert return_accuracy(flat) == 0.0               # no objects ever: nothing remembered
    assert return_accuracy(flat[:10]) != return_accuracy(flat[:10])   # too short to score: NaN


def test_change_and_rhythm_scores():
    clip = render_clip(2, 180)
    assert change_accuracy(clip.frames) == 1.0 and schedule_accuracy(clip.frames) == 1.0
    frozen = clip.frames.clone()
    for a0, a1 in appearances(clip.frames):
        frozen[a0 + 1:a1] = frozen[a0:a0 + 1]
    assert change_accuracy(frozen) == 0.0
    shifted = clip.frames[7:]                # a clock that started late is judged on memory, not phase
    assert return_accuracy(shifted) == 1.0 and schedule_accuracy(shifted) == 1.0
    assert psnr(clip.frames, clip.frames) == float("inf") and abs(ssim(clip.frames, clip.frames) - 1) < 1e-6


def test_style_contexts_are_fixed_and_distinct():
    assert torch.equal(style_context(2), style_context(2))
    assert not torch.allclose(style_context(2), style_context(3))
    assert style_context(0).shape == (1, W.context_tokens, 4096)


def test_training_runs_and_marks_the_student_causal_ar(tmp_path):
    """A couple of real training steps (autograd through the whole stack); the student's file carries the
    metadata that makes ComfyUI 0.27's UNETLoader build a CausalWanModel."""
    import json

    from safetensors import safe_open

    from pafu_lab.world.train import train
    teacher, student = str(tmp_path / "t.safetensors"), str(tmp_path / "s.safetensors")
    meta = train("teacher", steps=2, batch=1, lr=1e-3, seed=0, device="cpu", out=teacher, log_every=1)
    assert meta["final_loss"] == meta["final_loss"]           # finite
    train("student", steps=2, batch=1, lr=1e-3, seed=0, device="cpu", out=student, init=teacher, log_every=1)
    with safe_open(student, "pt") as fh:
        assert json.loads(fh.metadata()["config"]) == {"transformer": {"causal_ar": True}}
    with safe_open(teacher, "pt") as fh:
        assert "config" not in fh.metadata()
    from pafu_core.world.scenes import RECALL          # per-frame conditioning trains end to end too
    meta = train("student", steps=1, batch=1, lr=1e-3, seed=0, device="cpu", out=student, init=teacher, log_every=1,
                 world=RECALL, frames=24)
    assert meta["world"]["name"] == "recall" and meta["frames"] == 24 and meta["final_loss"] == meta["final_loss"]


def test_teacher_forcing_with_one_prompt_per_frame_equals_one_prompt_for_all(runner):
    """The training pass's per-frame text path: every frame given the same prompt is the one-prompt pass."""
    from pafu_lab.world.train import teacher_forcing_forward, teacher_forcing_mask
    gen = torch.Generator().manual_seed(0)
    clean, noisy = torch.randn(1, 16, 6, 8, 8, generator=gen), torch.randn(1, 16, 6, 8, 8, generator=gen)
    ctx = torch.randn(1, 5, 4096, generator=gen)
    mask = teacher_forcing_mask(6, 3, 16, gen, "full")
    t = torch.full((1, 6), 500.0)
    with torch.no_grad():
        one = teacher_forcing_forward(runner, clean, noisy, t, ctx, 0, mask)
        per_frame = teacher_forcing_forward(runner, clean, noisy, t, ctx.unsqueeze(1).expand(-1, 6, -1, -1), 0, mask)
    assert torch.allclose(one, per_frame, atol=1e-5)


def test_world_oracle_keeps_the_latest_appearance_of_the_objects_then_the_newest_tokens():
    """It reads the world's labels of the frames held before the entering chunk, never pixels: a saturated
    cell that is no object (here: painted into the frames) does not fool it."""
    from types import SimpleNamespace

    from pafu_lab.world.oracles import WorldOracle, object_labels
    clip = render_clip(5, 60, style=1)
    labels = object_labels(clip)
    assert labels.sum() == 4 * W.visible_frames * W.num_objects and labels[0, clip.positions].all()
    decoy = next(c for c in range(W.cells) if c not in clip.positions.tolist())
    r, c = divmod(decoy, W.grid)
    clip.frames[30:33, :, r * W.cell:(r + 1) * W.cell, c * W.cell:(c + 1) * W.cell] = OBJECT_COLORS[0].view(3, 1, 1)
    assert not object_labels(clip)[30:33, decoy].any()                         # labels, not pixels
    tokens = torch.arange(48 * 16)                      # the cache holds frames 0..47; 45..47 are entering
    view = SimpleNamespace(frame_index=(tokens // 16).view(1, 1, -1), place=(tokens % 16).view(1, 1, -1),
                           newest_frame=47, num_entering=3 * 16, tokens_per_frame=16,
                           device="cpu")
    scores = WorldOracle(labels[None]).score(view)[0, 0]
    kept = scores.topk(9).indices
    assert sorted((int(i) // 16, int(i) % 16) for i in kept) == \
        sorted((f, int(p)) for f in (30, 31, 32) for p in clip.positions)     # the third appearance, whole
    rest = scores.clone()
    rest[kept] = float("-inf")
    assert int(rest.argmax()) // 16 == 47                                       # then the newest frame


def test_objects_drawn_where_the_world_has_none_count_against():
    """The primary score subtracts invented objects: a prediction that brings every object back right but
    also paints objects in empty cells scores below its recall, and a return is all-right only without them."""
    clip = render_clip(3, 60)
    truth = clip.frames
    empty = [c for c in range(W.cells) if c not in clip.positions.tolist()][:2]
    invented = truth.clone()
    c = W.cell
    first_return = appearances(truth)[1][0]
    for cell in empty:
        r, col = divmod(cell, W.grid)
        invented[first_return, :, r * c:(r + 1) * c, col * c:(col + 1) * c] = OBJECT_COLORS[0].view(3, 1, 1)
    exact = watched_return_scores(truth, truth)
    assert exact == (1.0, 1.0, 0.0, 1.0)
    found = watched_returns(invented, truth)
    assert (found[0].right, found[0].wanted, found[0].false) == (W.num_objects, W.num_objects, 2)
    assert not found[0].all_right and all(r.all_right for r in found[1:])
    scores = watched_return_scores(invented, truth)
    wanted = sum(r.wanted for r in found)
    assert scores.recall == 1.0 and scores.false_rate == 2 / wanted
    assert scores.primary == pytest.approx(1.0 - 2 / wanted) and scores.all_right == pytest.approx(1 - 1 / len(found))
    # free videos: an object at a return in a cell that showed none before is invented too
    assert return_scores(invented).false_rate == 2 / wanted


# ---- the RECALL world: decoys, passers, groups taking turns, drawn hides, the schedule as conditioning ----

def test_recall_world_groups_take_turns_beside_decoys_on_cells_no_object_uses():
    from pafu_core.world.scenes import RECALL
    clip = render_clip(7, 200, cfg=RECALL)
    assert torch.equal(clip.frames, render_clip(7, 200, cfg=RECALL).frames)
    vis = clip.visible
    starts = (vis & ~torch.cat([torch.zeros(1, dtype=torch.bool), vis[:-1]])).nonzero().flatten().tolist()
    gaps = [b - a - RECALL.visible_frames for a, b in zip(starts, starts[1:])]
    lo, hi = RECALL.hidden_range
    assert min(gaps) >= lo and max(gaps) <= hi and len(set(gaps)) > 3            # hides drawn per opening
    assert len({s % 3 for s in starts}) > 1                  # returns fall anywhere in a 3-frame chunk
    shown = clip.colors >= 0                                                       # [F, objects]
    for k, s in enumerate(starts):
        group = torch.arange(RECALL.num_objects) % RECALL.groups == k % RECALL.groups
        assert torch.equal(shown[s], group)                                       # one group per opening
    objects = set(clip.positions.tolist())
    cells = object_mask(cell_colors(clip.frames))
    for t in range(200):
        decoys = set(clip.decoys[t].nonzero().flatten().tolist())
        assert not decoys & objects
        assert len(decoys) == (RECALL.decoys if vis[t] else RECALL.passers)
        assert set(cells[t].nonzero().flatten().tolist()) == decoys | set(clip.positions[shown[t]].tolist())
    # decoys look like objects: palette colours, stepping at the same frame of an opening
    d0 = clip.decoys[starts[1]].nonzero().flatten()
    colours = cell_colors(clip.frames)
    assert not torch.allclose(colours[starts[1], d0], colours[starts[1] + 1, d0])


def test_recall_world_says_the_schedule_per_frame_in_its_conditioning():
    """Per latent frame: the style's tokens and one token for 'closed' or 'open, group k'."""
    from pafu_core.world.scenes import CLOSED, RECALL, schedule_token
    clip = render_clip(2, 50, style=3, cfg=RECALL)
    ctx = clip.context
    assert ctx.shape == (1, 50, RECALL.context_tokens + 1, RECALL.text_dim)
    assert torch.equal(ctx[0, :, :RECALL.context_tokens], style_context(3).expand(50, -1, -1))
    shows = (clip.colors >= 0).any(dim=1)
    for t in range(50):
        group = int(clip.showing[t])
        assert (group == CLOSED) == (not clip.visible[t])
        if group != CLOSED:                       # the token names the group whose objects show
            assert bool(shows[t]) and (clip.colors[t, torch.arange(RECALL.num_objects) % 2 == group] >= 0).all()
        assert torch.equal(ctx[0, t, -1], schedule_token(group)[0, 0])
    assert len({schedule_token(g).sum().item() for g in (CLOSED, 0, 1)}) == 3
    assert render_clip(2, 50, style=3).context.shape == (1, RECALL.context_tokens, RECALL.text_dim)   # peekaboo


def test_recall_returns_count_due_objects_and_invented_ones_where_no_decoy_can_be():
    """At an opening, only the objects of the group due that have shown before are wanted; an object drawn
    in a clean cell (no decoy ever lands there) or in the other group's cells counts as false; one drawn in
    the decoy area does not (no model can know where the next decoys land)."""
    from pafu_core.world.scenes import RECALL
    from pafu_lab.world.metrics import clip_return_scores, clip_returns
    clip = render_clip(11, 120, cfg=RECALL)
    exact = clip_returns(clip.frames, clip)
    assert exact and all(r.right == r.wanted == RECALL.num_objects // RECALL.groups and r.false == 0 for r in exact)
    assert clip_return_scores(clip.frames, clip).primary == 1.0
    r0 = exact[0].frame
    objects = torch.zeros(RECALL.cells, dtype=torch.bool)
    objects[clip.positions] = True
    clean = ~objects & ~clip.decoy_area
    assert clip.decoy_area.sum() == RECALL.decoy_area and clean.sum() == RECALL.cells - RECALL.num_objects - RECALL.decoy_area
    not_due = objects & ~object_mask(cell_colors(clip.frames))[r0]
    free_area = clip.decoy_area & ~clip.decoys[r0]

    def drawn_at(cell):
        out = clip.frames.clone()
        r, c = divmod(int(cell), RECALL.grid)
        k = RECALL.cell
        out[r0, :, r * k:(r + 1) * k, c * k:(c + 1) * k] = OBJECT_COLORS[2].view(3, 1, 1)
        return clip_returns(out, clip)[0]

    for cells, false in ((clean, 1), (not_due, 1), (free_area, 0)):
        got = drawn_at(cells.nonzero()[0])
        assert (got.right, got.false) == (exact[0].right, false)


def test_tell_rule_marks_a_cell_only_after_seeing_its_object_come_back():
    """Causal: the cells of a group become known at that group's first return, never earlier, and decoys or
    passers, which never come back with their colour, are never marked (on this seed)."""
    from pafu_core.world.scenes import RECALL
    from pafu_lab.world.rules import returned_cells
    clip = render_clip(4, 150, cfg=RECALL)
    marked = returned_cells(clip.frames, clip.visible, RECALL)
    vis = clip.visible
    starts = (vis & ~torch.cat([torch.zeros(1, dtype=torch.bool), vis[:-1]])).nonzero().flatten().tolist()
    group_a = clip.positions[torch.arange(RECALL.num_objects) % 2 == 0]
    assert not marked[starts[2] - 1, group_a].any() and marked[starts[2], group_a].all()
    assert set(marked[-1].nonzero().flatten().tolist()) == set(clip.positions.tolist())


def test_world_oracle_keeps_every_groups_latest_appearance():
    """RECALL: the group due next showed two openings back; the oracle keeps each object's latest appearance,
    not only the latest opening's."""
    from types import SimpleNamespace

    from pafu_core.world.scenes import RECALL
    from pafu_lab.world.oracles import WorldOracle, object_labels
    clip = render_clip(6, 80, cfg=RECALL)
    vis = clip.visible
    starts = (vis & ~torch.cat([torch.zeros(1, dtype=torch.bool), vis[:-1]])).nonzero().flatten().tolist()
    now = starts[3] + 2                             # inside the fourth opening; the cache holds frames 0..now
    tokens = torch.arange((now + 1) * 16)
    view = SimpleNamespace(frame_index=(tokens // 16).view(1, 1, -1), place=(tokens % 16).view(1, 1, -1),
                           newest_frame=now, num_entering=3 * 16, tokens_per_frame=16, device="cpu")
    scores = WorldOracle(object_labels(clip, RECALL)[None]).score(view)[0, 0]
    kept = {(int(i) // 16, int(i) % 16) for i in (scores >= 1e6).nonzero().flatten()}
    known = now + 1 - 3
    want = set()
    for k in range(RECALL.num_objects):
        frames = (clip.colors[:known, k] >= 0).nonzero().flatten().tolist()
        onset = max(f for f in frames if f == 0 or clip.colors[f - 1, k] < 0)
        want |= {(f, int(clip.positions[k])) for f in frames if f >= onset}
    assert kept == want and {f for f, _ in kept} & set(range(starts[1], starts[1] + 3))   # the older group too


def test_openings_oracle_keeps_each_groups_latest_opening_whole_its_last_frame_first():
    """It keeps the empty cells of an opening too (what the cell showed when that group last showed: nothing),
    first the last frame of each group's latest opening off the decoy area, then the rest of those openings."""
    from types import SimpleNamespace

    from pafu_core.world.scenes import RECALL
    from pafu_lab.world.oracles import OpeningsOracle
    clip = render_clip(6, 80, cfg=RECALL)
    vis = clip.visible
    starts = (vis & ~torch.cat([torch.zeros(1, dtype=torch.bool), vis[:-1]])).nonzero().flatten().tolist()
    now = starts[3] + 2                             # inside the fourth opening; frames up to starts[3] - 1 known
    tokens = torch.arange((now + 1) * 16)
    view = SimpleNamespace(frame_index=(tokens // 16).view(1, 1, -1), place=(tokens % 16).view(1, 1, -1),
                           newest_frame=now, num_entering=3 * 16, tokens_per_frame=16, device="cpu")
    scores = OpeningsOracle(clip.showing[None], clip.decoy_area[None]).score(view)[0, 0]
    frame, place = tokens // 16, tokens % 16
    openings = {f for s in starts[1:3] for f in range(s, s + RECALL.visible_frames)}     # the second and third
    kept = scores >= 1e6
    assert {int(f) for f in frame[kept]} == openings and int(kept.sum()) == 16 * len(openings)   # whole frames
    first = scores >= 2e6
    lasts = {starts[1] + RECALL.visible_frames - 1, starts[2] + RECALL.visible_frames - 1}
    assert {int(f) for f in frame[first]} == lasts
    assert not clip.decoy_area[place[first]].any() and int(first.sum()) == 2 * int((~clip.decoy_area).sum())
    rest = scores.clone()
    rest[kept] = float("-inf")
    assert int(frame[rest.argmax()]) == now                                     # then the newest


def test_committed_recall_models_were_trained_on_todays_recall_world():
    """The research weights and the world's code must not drift apart: the student's metadata records the
    world it learned, and that is today's RECALL preset (a heuristic table needs no head); the head was
    distilled for this student (its backbone fingerprint) with the recipe docs/results.md reports: the age as
    an input, 144-frame clips, half-superseded targets (its score at 252 frames is measured there too)."""
    import dataclasses
    import json

    from safetensors import safe_open

    from pafu_core.world.scenes import RECALL
    from pafu_lab.world.evaluate import load_world_models, world_models

    path, _ = world_models(RECALL)
    with safe_open(path, "pt") as fh:
        trained = json.loads(fh.metadata()["pafu_world"])["world"]
    today = json.loads(json.dumps(dataclasses.asdict(RECALL)))
    assert {k: trained.get(k) for k in today} == today
    student, head = load_world_models(world=RECALL, with_head=False)
    assert head is None and student.num_layers == 4
    student, head = load_world_models(world=RECALL)           # refuses a head that does not fit the student
    assert head.config.age_form == "input" and head.config.recency == 0.0
    with safe_open(world_models(RECALL)[1], "pt") as fh:
        training = json.loads(fh.metadata()["pafu"])["training"]
    assert training["data"]["rollout_frames"] == 144
    assert training["sse"]["supersede"] and training["sse"]["supersede_share"] == 0.5


def _paint(frames, frame_ids, cell, color, cfg=W):
    r, c = divmod(int(cell), cfg.grid)
    k = cfg.cell
    for f in frame_ids:
        frames[f, :, r * k:(r + 1) * k, c * k:(c + 1) * k] = color.view(3, 1, 1)


def test_free_generation_is_scored_against_the_truth_its_start_frame_fixes():
    """From the world's first frame, every later return is fixed by the world's rules: the world itself scores
    1 on the score, self-consistency and timeline. A video that keeps one object's colour as *it* last showed
    it, but not as the world's rule says, is self-consistent and wrong against the truth (drift, not a memory
    error); one that opens a frame late loses that frame of the timeline."""
    from pafu_lab.world.metrics import clip_return_scores, clip_returns, self_consistency, timeline_fidelity
    clip = render_clip(3, 60)
    truth = clip.frames
    assert clip.visible[0] and clip_return_scores(truth, clip, start_frames=1) == (1.0, 1.0, 0.0, 1.0)
    assert self_consistency(truth, clip, start_frames=1) == 1.0 and timeline_fidelity(truth, clip, 1) == 1.0

    drift = truth.clone()
    starts = [a for a, _ in appearances(truth)]
    b0, c0 = starts[1], starts[2]
    stays = OBJECT_COLORS[(int(clip.colors[b0, 0]) + 3) % len(OBJECT_COLORS)]
    for f in range(b0, len(truth)):                                  # from the first return on, one object keeps
        if clip.visible[f]:                                          # its own (wrong) colour
            _paint(drift, [f], clip.positions[0], stays)
    found = clip_returns(drift, clip, start_frames=1)
    assert [r.right for r in found] == [W.num_objects - 1] * len(found) and len(found) == len(starts) - 1
    consistent = 1 - 1 / (W.num_objects * len(found))               # it broke with its own past at b0 only
    assert self_consistency(drift, clip, start_frames=1) == pytest.approx(consistent)

    late = truth.clone()
    late[c0] = truth[c0 - 1]                                         # the curtain opens one frame late
    assert timeline_fidelity(late, clip, 1) == pytest.approx(1 - 1 / 59)


def test_free_generation_scores_only_the_groups_its_start_frame_shows():
    """In the RECALL world the first frame shows one group: the other's cells and colours are the model's to
    invent, so its openings are not scored against the truth; the shown group's returns are."""
    from pafu_core.world.scenes import RECALL
    from pafu_lab.world.metrics import clip_returns
    clip = render_clip(11, 120, cfg=RECALL)
    assert clip.visible[0]
    first_group = int(clip.showing[0])
    scored = clip_returns(clip.frames, clip, start_frames=1)
    assert scored and {int(clip.showing[r.frame]) for r in scored} == {first_group}
    assert all(r.right == r.wanted == RECALL.num_objects // RECALL.groups and r.false == 0 for r in scored)
    assert len(scored) < len(clip_returns(clip.frames, clip))


def test_the_students_loss_weighs_every_object_cell_of_an_open_frame():
    """In an open frame of the RECALL world the cells of the group not shown weigh as much as the objects
    shown (drawing the wrong group costs what missing the right one does); on the peekaboo world, where every
    object shows in every open frame, the weights are the objects' cells alone."""
    from pafu_core.world.scenes import RECALL
    from pafu_lab.world.train import DECOY_WEIGHT, OBJECT_WEIGHT, salient_weights
    from pafu_lab.world.metrics import world_labels
    clip = render_clip(11, 60, cfg=RECALL)
    cells = salient_weights(clip)[0][:, ::2, ::2].flatten(1)             # [F, cells]: one value per cell
    labels = world_labels(clip)
    f = int(clip.visible.nonzero()[0])
    hidden = labels.any(dim=0) & ~labels[f]
    assert hidden.any() and (cells[f, hidden] == OBJECT_WEIGHT).all() and (cells[f, labels[f]] == OBJECT_WEIGHT).all()
    closed = int((~clip.visible).nonzero()[0])
    assert (cells[closed, labels.any(dim=0)] == 1).all()
    assert set(cells[f].unique().tolist()) <= {1.0, DECOY_WEIGHT, OBJECT_WEIGHT}
    peek = render_clip(3, 40)
    expected = 1 + (OBJECT_WEIGHT - 1) * world_labels(peek).float()
    assert torch.equal(salient_weights(peek)[0][:, ::2, ::2].flatten(1), expected)


def test_weighing_every_open_cell_spares_only_where_decoys_land():
    """``open_weight="cells"``: in an open frame every cell where no decoy can land weighs like an object (an
    object invented on the backdrop costs what a missed one does); the decoy area and closed frames keep the
    default weights, and an unknown choice is refused."""
    from pafu_core.world.scenes import RECALL
    from pafu_lab.world.train import OBJECT_WEIGHT, salient_weights
    clip = render_clip(11, 60, cfg=RECALL)
    default = salient_weights(clip)[0][:, ::2, ::2].flatten(1)
    cells = salient_weights(clip, "cells")[0][:, ::2, ::2].flatten(1)
    open_ = clip.visible
    assert (cells[open_][:, ~clip.decoy_area] == OBJECT_WEIGHT).all()
    assert torch.equal(cells[open_][:, clip.decoy_area], default[open_][:, clip.decoy_area])
    assert torch.equal(cells[~open_], default[~open_])
    assert (default[open_][:, ~clip.decoy_area] == 1).any()          # the default leaves backdrop cells at 1
    with pytest.raises(ValueError, match="open_weight"):
        salient_weights(clip, "everything")


def test_weighing_object_cells_in_every_frame_charges_a_drawn_object_while_closed():
    """``open_weight="object_cells"``: every object's cell weighs like an object in closed frames too (showing an
    object behind the closed curtain costs what missing one costs when it opens); elsewhere the default holds."""
    from pafu_core.world.scenes import RECALL
    from pafu_lab.world.train import OBJECT_WEIGHT, salient_weights
    clip = render_clip(11, 60, cfg=RECALL)
    default = salient_weights(clip)[0][:, ::2, ::2].flatten(1)
    always = salient_weights(clip, "object_cells")[0][:, ::2, ::2].flatten(1)
    objects = torch.zeros(RECALL.cells, dtype=torch.bool)
    objects[clip.positions] = True
    assert (always[:, objects] == OBJECT_WEIGHT).all()
    assert (default[~clip.visible][:, objects] == 1).all()         # the default weighs them as the backdrop
    assert torch.equal(always[:, ~objects], default[:, ~objects])


def test_free_generation_timeline_leaves_out_the_openings_of_a_group_the_start_does_not_show():
    """A video that draws the group its first frame does not show on cells of its own, in the world's timing,
    keeps the world's timeline wherever the start fixes it: a perfect 1 (the whole-clip count would miss every
    one of those openings); drawing a known object behind the closed curtain still costs its frame."""
    from pafu_core.world.scenes import RECALL
    from pafu_lab.world.metrics import cell_colors, timeline_fidelity, world_labels
    clip = render_clip(11, 120, cfg=RECALL)
    labels = world_labels(clip)
    known = labels[0]
    assert known.any() and clip.visible[0]
    free = [c for c in range(RECALL.cells) if not labels[:, c].any() and not clip.decoy_area[c]]
    closed = int((~clip.visible).nonzero()[0])
    backdrop = cell_colors(clip.frames, RECALL)[closed, int(known.nonzero()[0])]
    invented = clip.frames.clone()
    other = clip.visible & ~(labels & known).any(-1)                  # the other group's openings
    for f in other.nonzero().flatten().tolist():
        for cell in labels[f].nonzero().flatten().tolist():
            _paint(invented, [f], cell, backdrop, RECALL)             # off the world's cells ...
        _paint(invented, [f], free[0], OBJECT_COLORS[0], RECALL)      # ... onto one of its own
    assert other.any()
    assert timeline_fidelity(invented, clip, 1) == 1.0
    behind = invented.clone()
    _paint(behind, [closed], int(known.nonzero()[0]), OBJECT_COLORS[1], RECALL)
    scored = int((~clip.visible).sum() + (clip.visible & ~other).sum()) - 1
    assert timeline_fidelity(behind, clip, 1) == pytest.approx(1 - 1 / scored)


def test_a_grown_student_computes_what_it_grew_from_until_it_trains(tmp_path):
    """More capacity from trained weights: appended blocks start as identities (same output to float rounding),
    still train (their output projections get gradients), and a grown run's file loads with its new depth."""
    from pafu_core.wan import load_wan_checkpoint
    from pafu_lab.world.train import _fresh_student, grow_layers, train
    small = _fresh_student(3).eval()
    big = grow_layers(small, 6, seed=1).eval()
    assert big.config.num_layers == 6 and len(big.blocks) == 6
    gen = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 16, 3, 8, 8, generator=gen), torch.randn(1, 5, 4096, generator=gen)
    t = torch.full((1,), 400.0)
    with torch.no_grad():
        assert torch.allclose(big(x, t, ctx), small(x, t, ctx), atol=1e-5)
    big.train()
    big(x, t, ctx).square().mean().backward()
    assert big.blocks[5].ffn[2].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="fewer than the 4 blocks"):
        grow_layers(small, 3)
    init, out = str(tmp_path / "s.safetensors"), str(tmp_path / "g.safetensors")
    train("student", steps=1, batch=1, lr=1e-3, seed=0, device="cpu", out=init, log_every=1)
    meta = train("student", steps=1, batch=1, lr=1e-3, seed=0, device="cpu", out=out, init=init, log_every=1, layers=5)
    assert meta["layers"] == 5 and load_wan_checkpoint(out).config.num_layers == 5
