"""Pictures of a rollout's cache, drawn with Pillow (no plotting library needed).

``render_curves``: cache memory and chunk time against the frame index, one line per rollout.
``render_token_heatmaps``: for every frame, which of its tokens the cache still holds at the end
(share of layers), optionally blended over the decoded frames.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from .report import CacheReport

COLORS = [(230, 85, 13), (49, 130, 189), (49, 163, 84), (117, 107, 177), (222, 45, 38), (99, 99, 99),
          (188, 189, 34)]


def _panel(draw: ImageDraw.ImageDraw, box, series, title: str, ylabel: str) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 4, y0 - 14), f"{title} ({ylabel})", fill=(0, 0, 0))
    xs = [x for _, pts, _ in series for x, _ in pts] or [0, 1]
    ys = [y for _, pts, _ in series for _, y in pts] or [0, 1]
    xmax, ymax = max(xs) or 1, max(ys) * 1.1 or 1
    for frac in (0.0, 0.5, 1.0):
        yy = y1 - frac * (y1 - y0)
        draw.line([(x0, yy), (x0 + 4, yy)], fill=(0, 0, 0))
        draw.text((x0 + 6, yy - 6), f"{frac * ymax:.3g}", fill=(80, 80, 80))
    draw.text((x1 - 60, y1 + 2), f"frame {xmax:.0f}", fill=(80, 80, 80))
    for _, pts, color in series:
        coords = [(x0 + (x / xmax) * (x1 - x0), y1 - (y / ymax) * (y1 - y0)) for x, y in pts]
        if len(coords) > 1:
            draw.line(coords, fill=color, width=2)
        for cx, cy in coords[-1:]:
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=color)


def render_curves(reports: list[CacheReport], width: int = 640, height: int = 420) -> np.ndarray:
    """[H, W, 3] uint8: K/V held (MiB) and chunk time (ms) per generated frame, one line per report."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    mem, time_ = [], []
    for i, rep in enumerate(reports):
        color = COLORS[i % len(COLORS)]
        ends = [c.frame_start + c.frames for c in rep.chunks]
        mem.append((rep.policy, [(e, c.kv_bytes / 2**20) for e, c in zip(ends, rep.chunks)], color))
        time_.append((rep.policy, [(e, c.chunk_ms) for e, c in zip(ends, rep.chunks)], color))
    half = (height - 60) // 2
    _panel(draw, (50, 24, width - 12, 24 + half - 20), mem, "K/V held by the cache", "MiB")
    _panel(draw, (50, 44 + half, width - 12, 44 + 2 * half - 20), time_, "chunk time", "ms")
    x = 50
    for name, _, color in mem:
        draw.rectangle([x, height - 14, x + 10, height - 4], fill=color)
        draw.text((x + 14, height - 16), name, fill=(0, 0, 0))
        x += 16 + 8 * len(name)
    return np.asarray(img)


def _heat(values: np.ndarray) -> np.ndarray:
    """[...] in [0, 1] -> [..., 3] in [0, 1]: dark blue (dropped everywhere) to yellow (kept by all)."""
    v = np.clip(values, 0, 1)[..., None]
    low, high = np.array([0.05, 0.05, 0.35]), np.array([1.0, 0.85, 0.1])
    return low * (1 - v) + high * v


def render_token_heatmaps(report: CacheReport, grid_hw: tuple[int, int], frames: torch.Tensor | None = None,
                          scale: int = 8, alpha: float = 0.55) -> torch.Tensor:
    """[F, H, W, 3] float in [0, 1]: per frame, the share of layers still holding each token at the
    end of the rollout. With ``frames`` ([F, H, W, 3] in [0, 1], ComfyUI IMAGE) the map is blended
    over them at their resolution; otherwise each token is a ``scale`` x ``scale`` block."""
    if report.final_kept is None:
        raise ValueError("this report has no token map (it was made before the rollout finished)")
    gh, gw = grid_hw
    kept = report.final_kept.float().mean(dim=0).view(report.total_frames, gh, gw).numpy()
    heat = torch.from_numpy(_heat(kept)).float()                         # [F, gh, gw, 3]
    if frames is None:
        return heat.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    n = min(frames.shape[0], heat.shape[0])
    if frames.shape[0] != heat.shape[0]:
        # a decoded Wan video has 4 frames per latent frame (and 1 for the first): map them back
        idx = torch.clamp((torch.arange(frames.shape[0]) + 3) // 4, max=heat.shape[0] - 1)
        heat, n = heat[idx], frames.shape[0]
    up = torch.nn.functional.interpolate(heat[:n].permute(0, 3, 1, 2), size=frames.shape[1:3], mode="nearest")
    return (1 - alpha) * frames[:n, ..., :3].float() + alpha * up.permute(0, 2, 3, 1)
