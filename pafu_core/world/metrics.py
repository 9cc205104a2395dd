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
    """Where the world's own schedule brings the scene back (ground truth timing)."""
    vis = visible_schedule(frames, phase, cfg)
    return [f for f in range(1, frames) if vis[f] and not vis[f - 1]]


#: a frame "shows a scene" when its cells' colours spread more than any dark frame of the world's
#: ground truth does (200 clips: dark frames at most 0.05, scene frames at least 0.16)
SCENE_SPREAD = 0.06


def shows_scene(frames: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD) -> torch.Tensor:
    """[F] bool: the frame looks like a scene (varied cells), not a dark frame."""
    return cell_colors(frames, cfg).flatten(1, 2).std(dim=1).mean(dim=-1) > SCENE_SPREAD


def scene_segments(frames: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD) -> list[tuple[int, int]]:
    """[(start, end)) runs of at least two consecutive scene frames, in the video's own timing."""
    scene = shows_scene(frames, cfg).tolist() + [False]
    out, start = [], None
    for f, s in enumerate(scene):
        if s and start is None:
            start = f
        elif not s and start is not None:
            if f - start >= 2:
                out.append((start, f))
            start = None
    return out


def return_consistency(frames: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD, tol: float = MATCH_TOLERANCE) -> float:
    """Each time the scene comes back after the dark gap, the share of its cells that have the
    colour they had at the end of the previous appearance (measured in the video's own timing, so a
    model whose clock is a few frames off is judged on memory, not on phase). A video long enough for
    the scene to return but in which it does not return scores 0. The ground truth scores about
    1 - changes/cells (0.8 with chance repeats); a model that forgot the scene scores near chance."""
    if frames.shape[0] < cfg.period + cfg.visible_frames:
        return float("nan")
    segments = scene_segments(frames, cfg)
    if len(segments) < 2:
        return 0.0
    cells = cell_colors(frames, cfg)
    scores = [((cells[b0] - cells[a1 - 1]).norm(dim=-1) < tol).float().mean()
              for (_, a1), (b0, _) in zip(segments, segments[1:])]
    return float(torch.stack(scores).mean())


def schedule_accuracy(frames: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD) -> float:
    """Share of the gaps between consecutive appearances of the scene that match the world's period
    (within one frame): does the model keep the world's rhythm?"""
    starts = [a for a, _ in scene_segments(frames, cfg)]
    if len(starts) < 2:
        return 0.0 if frames.shape[0] >= cfg.period + cfg.visible_frames else float("nan")
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
