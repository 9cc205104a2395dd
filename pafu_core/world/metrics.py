"""Scores that the world's rules make exact: does the scene come back as it was last seen?"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .scenes import DEFAULT_WORLD, WorldConfig, visible_schedule

#: a cell "matches" when its mean colour is within this distance (RGB in [-1, 1]; palette colours
#: of one style are further apart than this, random colours rarely closer)
MATCH_TOLERANCE = 0.3


def cell_colors(frames: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD) -> torch.Tensor:
    """[F, 3, H, W] -> [F, grid, grid, 3] mean colour of each cell."""
    return F.avg_pool2d(frames, cfg.cell).permute(0, 2, 3, 1)


def reveal_starts(frames: int, phase: int = 0, cfg: WorldConfig = DEFAULT_WORLD) -> list[int]:
    vis = visible_schedule(frames, phase, cfg)
    return [f for f in range(1, frames) if vis[f] and not vis[f - 1]]


#: a frame "shows a scene" when its cells' colours spread at least this much (dark frames are flat)
SCENE_SPREAD = 0.15


def shows_scene(frames: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD) -> torch.Tensor:
    """[F] bool: the frame looks like a scene (varied cells), not a dark frame."""
    return cell_colors(frames, cfg).flatten(1, 2).std(dim=1).mean(dim=-1) > SCENE_SPREAD


def return_consistency(frames: torch.Tensor, phase: int = 0, cfg: WorldConfig = DEFAULT_WORLD,
                       tol: float = MATCH_TOLERANCE) -> float:
    """Share of cells that, when the scene returns, have the colour they had at the end of the
    previous reveal; a return that does not show a scene at all scores 0 (so a model that outputs
    the same flat frame forever does not 'remember' anything). The ground truth scores about
    1 - changes/cells (0.8 with chance repeats); a model that forgot the scene scores near chance."""
    cells = cell_colors(frames, cfg)
    scene = shows_scene(frames, cfg)
    scores = []
    for start in reveal_starts(frames.shape[0], phase, cfg):
        last_seen = start - cfg.dark_frames - 1
        if last_seen < 0:
            continue
        dist = (cells[start] - cells[last_seen]).norm(dim=-1)
        both = bool(scene[start]) and bool(scene[last_seen])
        scores.append((dist < tol).float().mean() * both)
    return float(torch.stack(scores).mean()) if scores else float("nan")


def schedule_accuracy(frames: torch.Tensor, phase: int = 0, cfg: WorldConfig = DEFAULT_WORLD) -> float:
    """Share of frames whose kind (scene vs dark) follows the world's clock: a scene frame has
    strongly varying cells, a dark frame is nearly uniform grey."""
    truth = visible_schedule(frames.shape[0], phase, cfg)
    return float((shows_scene(frames, cfg) == truth).float().mean())


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
