"""Blink world: a scene that is shown, hidden for longer than a sliding window, and shown again.

Each video is a cycle of ``visible_frames`` frames of a scene (a 4x4 grid of coloured cells drawn
from the style's palette) followed by ``dark_frames`` frames of darkness. A dark frame's grey level
is a clock (it rises every frame, so the latest frame says when the scene returns) and carries a few
random sparkles (transient content nobody needs later). Every time the scene returns,
``changes_per_reveal`` cells have taken new colours, so the *latest* view of the scene is the truth,
not the first one.

So when the scene returns, a good cache still holds tokens of the last reveal: a FIFO window
shorter than the dark gap holds only darkness, sink frames hold a stale scene. Everything is
deterministic from a seed; the text conditioning names only the palette (style), never the cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WorldConfig:
    size: int = 16                 # frame height = width in pixels
    grid: int = 4                  # cells per side (one latent token per cell)
    visible_frames: int = 3
    dark_frames: int = 15
    changes_per_reveal: int = 4
    sparkles: int = 3
    num_styles: int = 8
    colors_per_style: int = 6
    clip_frames: int = 36          # training clip length: the reference window for budget fractions
    context_tokens: int = 4
    text_dim: int = 4096

    @property
    def period(self) -> int:
        return self.visible_frames + self.dark_frames

    @property
    def cell(self) -> int:
        return self.size // self.grid


DEFAULT_WORLD = WorldConfig()


def palettes(cfg: WorldConfig = DEFAULT_WORLD) -> torch.Tensor:
    """[styles, colors, 3] in [-1, 1]: each style a family of saturated colours around one hue."""
    gen = torch.Generator().manual_seed(1234)
    hues = torch.arange(cfg.num_styles) / cfg.num_styles
    out = torch.empty(cfg.num_styles, cfg.colors_per_style, 3)
    for s in range(cfg.num_styles):
        h = (hues[s] + 0.25 * (torch.rand(cfg.colors_per_style, generator=gen) - 0.5)) % 1.0
        v = 0.55 + 0.45 * torch.rand(cfg.colors_per_style, generator=gen)
        sat = 0.5 + 0.5 * torch.rand(cfg.colors_per_style, generator=gen)
        out[s] = _hsv_to_rgb(h, sat, v) * 2 - 1
    return out


def _hsv_to_rgb(h, s, v):
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


STYLE_NAMES = ("red", "orange", "lime", "green", "teal", "blue", "violet", "magenta")


def style_context(style: int, cfg: WorldConfig = DEFAULT_WORLD) -> torch.Tensor:
    """Fixed text-conditioning embedding of a style: [1, context_tokens, text_dim]."""
    if not 0 <= style < cfg.num_styles:
        raise ValueError(f"style must be in [0, {cfg.num_styles}), got {style}")
    gen = torch.Generator().manual_seed(77_000 + style)
    return torch.randn(1, cfg.context_tokens, cfg.text_dim, generator=gen)


@dataclass
class Clip:
    frames: torch.Tensor       # [F, 3, size, size] in [-1, 1]
    cells: torch.Tensor        # [F, grid, grid, 3] scene state (valid on visible frames)
    visible: torch.Tensor      # [F] bool
    style: int
    phase: int                 # position in the cycle of frame 0


def visible_schedule(frames: int, phase: int, cfg: WorldConfig = DEFAULT_WORLD) -> torch.Tensor:
    return ((torch.arange(frames) + phase) % cfg.period) < cfg.visible_frames


def render_clip(seed: int, frames: int, style: int | None = None, phase: int = 0,
                cfg: WorldConfig = DEFAULT_WORLD) -> Clip:
    """Render ``frames`` frames of one video; everything follows from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    if style is None:
        style = int(torch.randint(cfg.num_styles, (1,), generator=gen))
    pal = palettes(cfg)[style]
    g, c = cfg.grid, cfg.cell
    state = pal[torch.randint(cfg.colors_per_style, (g, g), generator=gen)]       # [g, g, 3]
    visible = visible_schedule(frames, phase, cfg)
    out = torch.empty(frames, 3, cfg.size, cfg.size)
    cells = torch.zeros(frames, g, g, 3)
    for f in range(frames):
        pos = (f + phase) % cfg.period
        if visible[f]:
            if pos == 0 and f > 0:          # the scene returns changed
                idx = torch.randperm(g * g, generator=gen)[:cfg.changes_per_reveal]
                new = pal[torch.randint(cfg.colors_per_style, (len(idx),), generator=gen)]
                state = state.view(g * g, 3).clone()
                state[idx] = new
                state = state.view(g, g, 3)
            cells[f] = state
            out[f] = state.permute(2, 0, 1).repeat_interleave(c, 1).repeat_interleave(c, 2)
        else:
            k = pos - cfg.visible_frames                        # 0 .. dark_frames-1
            level = -1.0 + 1.2 * (k + 1) / cfg.dark_frames       # the clock
            frame = torch.full((3, cfg.size, cfg.size), level)
            ys = torch.randint(cfg.size, (cfg.sparkles,), generator=gen)
            xs = torch.randint(cfg.size, (cfg.sparkles,), generator=gen)
            frame[:, ys, xs] = torch.rand(3, cfg.sparkles, generator=gen) * 2 - 1
            out[f] = frame
    return Clip(out, cells, visible, style, phase)
