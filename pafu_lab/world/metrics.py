"""Scores that the world's rules make exact, read off decoded frames in the video's own timing.

Primary, per object at every return of the objects: an object back in its cell with the colour of
its *latest* appearance counts for, an object drawn where the world has none counts against
(``ReturnScores.primary`` = per-object accuracy minus false-object rate). ``watched_*`` scores a
prediction made while the model watches the world, against the world's own frame; ``return_*`` a
free video against its own past. The ground truth scores 1.0; a model that forgot scores near chance
(1/6), or 0 when it forgets the objects altogether; one that copies an older appearance scores near 0,
because every appearance changes the colours; one that invents objects scores below its recall.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from pafu_core.world.scenes import DEFAULT_WORLD, OBJECT_COLORS, WorldConfig

#: a cell shows an object when its mean colour's channel spread exceeds this (objects: 1.7,
#: the backdrop: at most 0.12)
OBJECT_SPREAD = 0.8
#: two object colours are "the same" within this RGB distance (palette colours are >= 1.7 apart)
MATCH_TOLERANCE = 0.6
CHANCE = 1 / len(OBJECT_COLORS)


def cell_colors(frames: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD) -> torch.Tensor:
    """[F, 3, H, W] -> [F, cells, 3] mean colour of each cell (row-major)."""
    return F.avg_pool2d(frames, cfg.cell).flatten(2).transpose(1, 2)


def cells_to_grid(per_cell: torch.Tensor, cfg: WorldConfig, scale: int) -> torch.Tensor:
    """[F, cells, ...] -> [F, grid * scale, grid * scale, ...]: each cell's value over its ``scale`` x ``scale``
    square (``cfg.cell`` for frames' pixels, 2 for latents'); undoes ``cell_colors``' pooling."""
    grid = per_cell.unflatten(1, (cfg.grid, cfg.grid))
    return grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)


def object_mask(colors: torch.Tensor) -> torch.Tensor:
    """[F, cells, 3] -> [F, cells] bool: the cell shows an object (a saturated colour)."""
    return (colors.amax(-1) - colors.amin(-1)) > OBJECT_SPREAD


def appearances(frames: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD) -> list[tuple[int, int]]:
    """[(start, end)) runs of at least two consecutive frames that show objects."""
    shown = object_mask(cell_colors(frames, cfg)).any(-1).tolist() + [False]
    out, start = [], None
    for f, s in enumerate(shown):
        if s and start is None:
            start = f
        elif not s and start is not None:
            if f - start >= 2:
                out.append((start, f))
            start = None
    return out


def _long_enough(frames: torch.Tensor, cfg: WorldConfig) -> bool:
    return frames.shape[0] >= cfg.period + 1


class Return(NamedTuple):
    """One return of the objects, scored per object: ``right`` objects back in their cell with the
    right colour out of ``wanted``; ``false`` cells showing an object where there should be none."""
    frame: int
    right: int
    wanted: int
    false: int

    @property
    def all_right(self) -> bool:
        return self.right == self.wanted and self.false == 0


class ReturnScores(NamedTuple):
    """A video's returns summed: ``primary`` = (right - false) / wanted, i.e. per-object accuracy minus
    the false-object rate (1 = every object right and nothing invented; below 0 when the video invents
    more objects than it brings back right); ``recall`` = right / wanted; ``false_rate`` = false / wanted;
    ``all_right`` = share of returns with every object right and nothing drawn where the world is empty."""
    primary: float
    recall: float
    false_rate: float
    all_right: float

    @classmethod
    def of(cls, found: list[Return]) -> "ReturnScores":
        wanted = sum(r.wanted for r in found)
        if not found or not wanted:
            nan = float("nan")
            return cls(nan, nan, nan, nan)
        right, false = sum(r.right for r in found), sum(r.false for r in found)
        return cls((right - false) / wanted, right / wanted, false / wanted,
                   sum(r.all_right for r in found) / len(found))


NO_SCORES = ReturnScores(float("nan"), float("nan"), float("nan"), float("nan"))


def returns(frames: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD,
            tol: float = MATCH_TOLERANCE) -> list[Return]:
    """Every return of a free video against its own past: for every object shown at the last frame of an
    appearance, is the same cell, at the first frame of the next appearance, an object of the same
    colour? A cell showing an object at the return that showed none before counts as false."""
    colors = cell_colors(frames, cfg)
    objects = object_mask(colors)
    segs = appearances(frames, cfg)
    out = []
    for (_, a1), (b0, _) in zip(segs, segs[1:]):
        before = objects[a1 - 1]
        same = objects[b0] & ((colors[b0] - colors[a1 - 1]).norm(dim=-1) < tol)
        out.append(Return(b0, int((before & same).sum()), int(before.sum()), int((objects[b0] & ~before).sum())))
    return out


def return_scores(frames: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD, tol: float = MATCH_TOLERANCE) -> ReturnScores:
    """``returns`` summed (see ``ReturnScores``); NaN for a video too short for a return, and a primary
    score of 0 when the objects never come back."""
    if not _long_enough(frames, cfg):
        return NO_SCORES
    found = returns(frames, cfg, tol)
    return ReturnScores.of(found) if found else ReturnScores(0.0, 0.0, 0.0, 0.0)


def return_accuracy(frames: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD, tol: float = MATCH_TOLERANCE) -> float:
    """The primary score of a free video's returns against its own past (see ``return_scores``)."""
    return return_scores(frames, cfg, tol).primary


def watched_returns(frames: torch.Tensor, truth: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD,
                    tol: float = MATCH_TOLERANCE) -> list[Return]:
    """Every return of a video predicted while watching ``truth`` (the cache holds the real frames):
    right = a world object shown in its cell with its true colour (the colour of its latest
    appearance); false = a cell that shows an object where the world shows none."""
    true_colors, got_colors = cell_colors(truth, cfg), cell_colors(frames, cfg)
    true_objects, got_objects = object_mask(true_colors), object_mask(got_colors)
    out = []
    for b0, _ in appearances(truth, cfg)[1:]:
        want = true_objects[b0]
        hit = want & got_objects[b0] & ((got_colors[b0] - true_colors[b0]).norm(dim=-1) < tol)
        out.append(Return(b0, int(hit.sum()), int(want.sum()), int((got_objects[b0] & ~want).sum())))
    return out


def world_labels(clip) -> torch.Tensor:
    """[F, cells] bool: which cells hold one of the world's objects in each frame, from the world's own labels
    (its objects' cells and visibility), never from pixels: nothing that merely looks like an object counts."""
    labels = torch.zeros(clip.colors.shape[0], clip.cfg.cells, dtype=torch.bool)
    labels[:, clip.positions] = clip.colors >= 0
    return labels


def decoy_cells(clip) -> torch.Tensor:
    """[cells] bool: where the clip's decoys may land (none in a world without decoys): no model can know
    where the next opening's decoys will be, so scores and losses treat these cells apart."""
    if clip.decoy_area is not None:
        return clip.decoy_area
    return torch.zeros(clip.cfg.cells, dtype=torch.bool)


def _openings(visible: torch.Tensor) -> list[int]:
    return (visible & ~torch.cat([torch.zeros(1, dtype=torch.bool), visible[:-1]])).nonzero().flatten().tolist()


def clip_returns(frames: torch.Tensor, clip, tol: float = MATCH_TOLERANCE, start_frames: int = 0) -> list[Return]:
    """Every return in a video made beside ``clip``, by the world's labels: at the first frame of each
    opening, every object shown that has shown before is wanted (right = its cell shows its true colour, the
    one of its latest appearance); false = a cell showing an object where the world shows nothing (an object
    of a group not due, a passer brought back, anything invented), counted where no decoy can land: no model
    can know where the next opening's decoys will be.

    A video generated freely from the world's first ``start_frames`` frames can know only the objects those
    frames show (the world's rules then fix their cells and colours): only openings whose objects all showed
    there are scored (an object first shown later is the model's own invention, as valid as the world's)."""
    cfg = clip.cfg
    true_colors, got_colors = cell_colors(clip.frames, cfg), cell_colors(frames, cfg)
    world_shows, got = object_mask(true_colors), object_mask(got_colors)
    labels = world_labels(clip)
    area = decoy_cells(clip)
    starts = [b0 for b0 in _openings(clip.visible) if b0 >= start_frames]
    seen = labels[:start_frames].any(dim=0)          # nothing known before the first opening when watched
    out = []
    for i, b0 in enumerate(starts):
        want = labels[b0] & seen
        if want.any() and not (start_frames and (labels[b0] & ~seen).any()):
            hit = want & got[b0] & ((got_colors[b0] - true_colors[b0]).norm(dim=-1) < tol)
            invented = got[b0] & ~world_shows[b0] & ~area
            out.append(Return(b0, int(hit.sum()), int(want.sum()), int(invented.sum())))
        if not start_frames:
            end = starts[i + 1] if i + 1 < len(starts) else len(clip.visible)
            seen |= labels[b0:end].any(dim=0)
    return out


def timeline_fidelity(frames: torch.Tensor, clip, start_frames: int = 0) -> float:
    """Share of the generated frames that are open (an object in some object cell) exactly when the world's
    schedule (the timeline) says the curtain is open.

    Generated freely from the world's first ``start_frames`` frames, only the cells of the objects those frames
    show are the world's to judge, as in ``clip_returns``: an opening of objects first shown later is left out
    (the model draws them on cells of its own invention), and a frame counts as open when a known cell shows."""
    labels = world_labels(clip)
    cells = labels[:start_frames].any(dim=0) if start_frames else labels.any(dim=0)
    shows = (object_mask(cell_colors(frames, clip.cfg)) & cells).any(dim=-1)
    scored = ~clip.visible | (labels & cells).any(dim=-1) if start_frames else torch.ones_like(clip.visible)
    right = (shows == clip.visible)[start_frames:]
    return float(right[scored[start_frames:]].float().mean())


def self_consistency(frames: torch.Tensor, clip, tol: float = MATCH_TOLERANCE, start_frames: int = 0) -> float:
    """At the returns ``clip_returns`` scores: share of returning objects that the video shows with the colour
    it itself last showed in their cell (in its own timing). Beside the score against the truth it tells a
    memory error (not what the video showed) from drift (what the video showed, but not the world)."""
    cfg = clip.cfg
    colors = cell_colors(frames, cfg)
    got = object_mask(colors)
    labels = world_labels(clip)
    consistent = wanted = 0
    for r in clip_returns(frames, clip, tol, start_frames):
        for cell in (labels[r.frame] & labels[:r.frame].any(dim=0)).nonzero().flatten().tolist():
            shown = got[:r.frame, cell].nonzero()
            if got[r.frame, cell] and len(shown):
                last = int(shown.max())                                   # the video's own last showing
                consistent += bool((colors[r.frame, cell] - colors[last, cell]).norm() < tol)
            wanted += 1
    return consistent / wanted if wanted else float("nan")


def clip_return_scores(frames: torch.Tensor, clip, tol: float = MATCH_TOLERANCE,
                       start_frames: int = 0) -> ReturnScores:
    """``clip_returns`` summed (see ``ReturnScores``); NaN when the clip has no return."""
    found = clip_returns(frames, clip, tol, start_frames)
    return ReturnScores.of(found) if found else NO_SCORES


def watched_return_scores(frames: torch.Tensor, truth: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD,
                          tol: float = MATCH_TOLERANCE) -> ReturnScores:
    """``watched_returns`` summed (see ``ReturnScores``); NaN when the world has no return."""
    if not _long_enough(truth, cfg):
        return NO_SCORES
    return ReturnScores.of(watched_returns(frames, truth, cfg, tol))


def watched_return_accuracy(frames: torch.Tensor, truth: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD,
                            tol: float = MATCH_TOLERANCE) -> float:
    """The primary score of a watched prediction (see ``watched_return_scores``)."""
    return watched_return_scores(frames, truth, cfg, tol).primary


def change_accuracy(frames: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD, tol: float = MATCH_TOLERANCE) -> float:
    """Share of objects that change colour within an appearance, as the world's rule says they do
    (a model that never changes them would make stale copies look right)."""
    colors = cell_colors(frames, cfg)
    objects = object_mask(colors)
    changed = total = 0
    for a0, a1 in appearances(frames, cfg):
        if a1 - a0 <= cfg.change_at:
            continue
        both = objects[a0] & objects[a1 - 1]
        changed += int((both & ((colors[a1 - 1] - colors[a0]).norm(dim=-1) >= tol)).sum())
        total += int(both.sum())
    return changed / total if total else float("nan")


def schedule_accuracy(frames: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD) -> float:
    """Share of the gaps between consecutive appearances that match the world's period (within one
    frame): does the model keep the world's rhythm?"""
    if cfg.hidden_range:                 # hides drawn per opening: there is no single period to keep
        return float("nan")
    starts = [a for a, _ in appearances(frames, cfg)]
    if len(starts) < 2:
        return 0.0 if _long_enough(frames, cfg) else float("nan")
    gaps = torch.tensor([b - a for a, b in zip(starts, starts[1:])])
    return float(((gaps - cfg.period).abs() <= 1).float().mean())


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 2.0) -> float:
    """PSNR for images in [-1, 1] (peak-to-peak 2)."""
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, peak: float = 2.0, window: int = 7) -> float:
    """Mean SSIM of [F, 3, H, W] frames (uniform window, standard constants)."""
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    pad = window // 2

    def blur(x):
        return F.avg_pool2d(F.pad(x, (pad,) * 4, mode="reflect"), window, stride=1)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
