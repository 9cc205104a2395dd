"""Peekaboo world: a few small objects hide behind a curtain for longer than a sliding window, then
come back as they were last seen.

A frame is a 4x4 grid of cells (one latent token each). Every ``period`` frames the world shows
``num_objects`` objects, each one saturated cell at a fixed place, for ``visible_frames`` frames, then
hides them for ``hidden_frames`` frames. Within every appearance (at ``change_at``) each object steps
to the next colour of the palette, so the state an object returns with is the one of its *latest*
appearance: the first frame, an older appearance or a guess are all wrong. Only the first frame is
random (where the objects are and their colours); everything after it follows from memory.

The rest of the frame carries no memory: a grey, slightly tinted backdrop whose level steps up every
``clock_step`` frames through the cycle (a clock the newest frames show, so *when* the objects
return needs no memory); optional random grey sparkles (off by default). So what must be remembered is a small part of the frame:
a few tokens of the latest appearance. Everything follows from a seed; the text conditioning names
only the backdrop's tint (the style), never the objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WorldConfig:
    size: int = 16                 # frame height = width in pixels
    grid: int = 4                  # cells per side (one latent token per cell)
    num_objects: int = 3
    visible_frames: int = 3
    hidden_frames: int = 12        # longer than a 25% window (9 frames) of the training clip
    change_at: int = 1             # visible frame at which every object takes a new colour
    clock_step: int = 3            # frames per level of the backdrop's clock
    sparkles: int = 0              # random grey pixels per frame (0: a plain backdrop)
    num_styles: int = 8
    clip_frames: int = 36          # training clip length: the reference window for budget fractions
    context_tokens: int = 4
    text_dim: int = 4096

    @property
    def period(self) -> int:
        return self.visible_frames + self.hidden_frames

    @property
    def cell(self) -> int:
        return self.size // self.grid

    @property
    def cells(self) -> int:
        return self.grid * self.grid


DEFAULT_WORLD = WorldConfig()

#: the objects' colours, RGB in [-1, 1]: six saturated hues, far apart from each other and from grey
OBJECT_COLORS = torch.tensor([
    [0.9, -0.8, -0.8], [0.9, 0.9, -0.8], [-0.8, 0.9, -0.8],
    [-0.8, 0.9, 0.9], [-0.8, -0.8, 0.9], [0.9, -0.8, 0.9],
])

STYLE_NAMES = ("red", "orange", "lime", "green", "teal", "blue", "violet", "magenta")


def style_tint(style: int, cfg: WorldConfig = DEFAULT_WORLD) -> torch.Tensor:
    """[3] a faint RGB tint of the backdrop (low saturation: never mistaken for an object)."""
    hue = torch.tensor(style / cfg.num_styles)
    k = torch.stack([(5 + hue * 6) % 6, (3 + hue * 6) % 6, (1 + hue * 6) % 6])
    rgb = 1 - torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return 0.12 * (rgb - rgb.mean())


def style_context(style: int, cfg: WorldConfig = DEFAULT_WORLD) -> torch.Tensor:
    """Fixed text-conditioning embedding of a style: [1, context_tokens, text_dim]."""
    if not 0 <= style < cfg.num_styles:
        raise ValueError(f"style must be in [0, {cfg.num_styles}), got {style}")
    gen = torch.Generator().manual_seed(77_000 + style)
    return torch.randn(1, cfg.context_tokens, cfg.text_dim, generator=gen)


def backdrop_level(phase: torch.Tensor | int, cfg: WorldConfig = DEFAULT_WORLD) -> torch.Tensor:
    """Grey level of the backdrop at a phase of the cycle: the world's clock, one level per step, the
    levels far apart (0.45) so that a few-step model reads the step without doubt."""
    steps = -(-cfg.period // cfg.clock_step)
    step = torch.as_tensor(phase, dtype=torch.float32) // cfg.clock_step
    return -0.9 + 1.8 * step / max(1, steps - 1)


@dataclass
class Clip:
    frames: torch.Tensor       # [F, 3, size, size] in [-1, 1]
    colors: torch.Tensor       # [F, num_objects] long: palette index per object (-1 while hidden)
    positions: torch.Tensor    # [num_objects] long: cell index (row * grid + column) of each object
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
    n_colors = len(OBJECT_COLORS)
    positions = torch.randperm(cfg.cells, generator=gen)[:cfg.num_objects]
    state = torch.randint(n_colors, (cfg.num_objects,), generator=gen)
    tint = style_tint(style, cfg)
    visible = visible_schedule(frames, phase, cfg)
    out = torch.empty(frames, 3, cfg.size, cfg.size)
    colors = torch.full((frames, cfg.num_objects), -1, dtype=torch.long)
    rows, cols = positions // cfg.grid, positions % cfg.grid
    c = cfg.cell
    for f in range(frames):
        pos = (f + phase) % cfg.period
        frame = (backdrop_level(pos, cfg) + tint).view(3, 1, 1).expand(3, cfg.size, cfg.size).clone()
        ys = torch.randint(cfg.size, (cfg.sparkles,), generator=gen)
        xs = torch.randint(cfg.size, (cfg.sparkles,), generator=gen)
        frame[:, ys, xs] = (torch.rand(cfg.sparkles, generator=gen) * 2 - 1).expand(3, -1)
        if visible[f]:
            if pos == cfg.change_at:       # every object steps to the next colour of the palette
                state = (state + 1) % n_colors
            colors[f] = state
            for k in range(cfg.num_objects):
                frame[:, rows[k] * c:(rows[k] + 1) * c, cols[k] * c:(cols[k] + 1) * c] = \
                    OBJECT_COLORS[state[k]].view(3, 1, 1)
        out[f] = frame
    return Clip(out, colors, positions, visible, style, phase)
