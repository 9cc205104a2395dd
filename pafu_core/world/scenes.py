"""The tiny worlds: small objects hide behind a curtain for longer than a sliding window, then come back
as they were last seen. Two presets, one renderer per rule set:

* ``PEEKABOO`` (the first world): every ``period`` frames all ``num_objects`` objects show for
  ``visible_frames`` frames, then hide for ``hidden_frames``; a grey backdrop whose level steps through the
  cycle is a clock, so *when* they return needs no memory. What must be remembered simply stands out:
  saturated cells over grey.
* ``RECALL`` (the default): what must be remembered does not simply stand out. Each opening of the curtain
  shows one group of objects (groups take turns, so a group's latest appearance is two openings back) and as
  many **decoys** beside them: the same palette, cell size, saturation and timing (they step colour with the
  objects), but on cells no object ever uses (a per-video decoy area), and they never come back (a decoy
  landing on a cell again has a fresh colour). No model can know where the next decoys land, so the
  scores count invented objects only where no decoy can be: the object cells and the clean cells. Hides are drawn per
  opening from ``hidden_range`` (below and above a 25% window, so returns fall anywhere in a chunk); the
  backdrop is plain. The schedule is given as conditioning per latent frame (``frame_context``: the style's
  text tokens and a token that says "closed" or "open, group k"), so *when* and *which* need no memory:
  what must be remembered is where each group's objects are and the colours they last had. The tell
  between an object and a decoy is contextual: objects recur at the cells of their earlier appearances.
  While the curtain is closed, ``passers`` cells flash for one frame each (things passing through): they
  stand out more recently than anything that will return.

A frame is a 4x4 grid of cells (one latent token each). Within every appearance (at ``change_at``) each
object steps to the next colour of the palette, so the state an object returns with is the one of its
*latest* appearance: the first frame, an older appearance or a guess are all wrong. Only the first frame
is random (where the objects are and their colours); everything after it follows from memory and the
schedule. Everything follows from a seed; the text conditioning names the backdrop's tint (the style) and,
in RECALL, whether the curtain is open, never the objects.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class WorldConfig:
    name: str = "peekaboo"
    size: int = 16                 # frame height = width in pixels
    grid: int = 4                  # cells per side (one latent token per cell)
    num_objects: int = 3
    visible_frames: int = 3
    hidden_frames: int = 12        # longer than a 25% window (9 frames) of the training clip
    change_at: int = 1             # visible frame at which every object takes a new colour
    clock_step: int = 3            # frames per level of the backdrop's clock (0: a plain backdrop)
    sparkles: int = 0              # random grey pixels per frame (0: a plain backdrop)
    num_styles: int = 8
    clip_frames: int = 36          # training clip length: the reference window for budget fractions
    context_tokens: int = 4
    text_dim: int = 4096
    groups: int = 1                # groups of objects that take turns at the openings
    decoys: int = 0                # decoy cells per opening, drawn from a decoy area of cells no object uses
    decoy_area: int = 0            # cells of that area (the other free cells never hold a decoy)
    passers: int = 0               # cells per closed frame that flash once (things passing through)
    hidden_range: tuple[int, int] | None = None   # hides drawn per opening from [lo, hi] (None: hidden_frames)
    schedule_conditioning: bool = False           # the text says per frame whether the curtain is open

    @property
    def period(self) -> int:
        """Frames from one opening to the next (the longest, with drawn hides)."""
        hidden = self.hidden_range[1] if self.hidden_range else self.hidden_frames
        return self.visible_frames + hidden

    @property
    def cell(self) -> int:
        return self.size // self.grid

    @property
    def cells(self) -> int:
        return self.grid * self.grid

    @property
    def text_tokens(self) -> int:
        return self.context_tokens + (1 if self.schedule_conditioning else 0)


PEEKABOO = WorldConfig()
RECALL = WorldConfig(name="recall", num_objects=6, groups=2, decoys=4, decoy_area=6, passers=3, hidden_range=(4, 16),
                     clock_step=0, schedule_conditioning=True)
#: RECALL just past its training ranges, for generalisation rows (reported, never used to tune)
RECALL_SHORT_HIDES = replace(RECALL, name="recall_short_hides", hidden_range=(2, 3))
RECALL_LONG_HIDES = replace(RECALL, name="recall_long_hides", hidden_range=(17, 20))
RECALL_TWICE_OBJECTS = replace(RECALL, name="recall_twice_objects", num_objects=12, decoy_area=4, decoys=3)
WORLDS = {w.name: w for w in (PEEKABOO, RECALL, RECALL_SHORT_HIDES, RECALL_LONG_HIDES, RECALL_TWICE_OBJECTS)}
DEFAULT_WORLD = PEEKABOO

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


CLOSED = -1


def schedule_token(group: int, cfg: WorldConfig = DEFAULT_WORLD) -> torch.Tensor:
    """[1, 1, text_dim]: the fixed text token that says the curtain is closed (``CLOSED``) or open and which
    group of objects shows (0, 1, ...)."""
    gen = torch.Generator().manual_seed(78_000 + 1 + group)
    return torch.randn(1, 1, cfg.text_dim, generator=gen)


def frame_context(style: int, showing: torch.Tensor, cfg: WorldConfig = DEFAULT_WORLD) -> torch.Tensor:
    """Conditioning per latent frame [1, F, text_tokens, text_dim]: the style's tokens and, per frame, the
    schedule (``showing`` [F] long: the group the open curtain shows, ``CLOSED`` while it is closed); a world
    without schedule conditioning repeats the style."""
    style_tokens = style_context(style, cfg)
    f = showing.shape[0]
    per_frame = style_tokens.unsqueeze(1).expand(1, f, -1, -1)
    if not cfg.schedule_conditioning:
        return per_frame
    tokens = torch.cat([schedule_token(g, cfg) for g in range(CLOSED, cfg.groups)], dim=1)     # [1, groups + 1, D]
    return torch.cat([per_frame, tokens[:, showing + 1].unsqueeze(2)], dim=2)


def backdrop_level(phase: torch.Tensor | int, cfg: WorldConfig = DEFAULT_WORLD) -> torch.Tensor:
    """Grey level of the backdrop at a phase of the cycle: the world's clock, one level per step, the
    levels far apart (0.45) so that a few-step model reads the step without doubt (a plain mid grey
    without a clock)."""
    if not cfg.clock_step:
        return torch.tensor(0.0)
    steps = -(-cfg.period // cfg.clock_step)
    step = torch.as_tensor(phase, dtype=torch.float32) // cfg.clock_step
    return -0.9 + 1.8 * step / max(1, steps - 1)


@dataclass
class Clip:
    frames: torch.Tensor       # [F, 3, size, size] in [-1, 1]
    colors: torch.Tensor       # [F, num_objects] long: palette index per object (-1 while hidden)
    positions: torch.Tensor    # [num_objects] long: cell index (row * grid + column) of each object
    visible: torch.Tensor      # [F] bool: the curtain is open
    style: int
    phase: int                 # position in the cycle of frame 0
    decoys: torch.Tensor | None = None   # [F, cells] bool: cells that show a decoy or a passer
    decoy_area: torch.Tensor | None = None   # [cells] bool: the cells where decoys may land
    showing: torch.Tensor | None = None      # [F] long: the group the open curtain shows (CLOSED: closed)
    cfg: WorldConfig = DEFAULT_WORLD

    @property
    def context(self) -> torch.Tensor:
        """The clip's conditioning: [1, text_tokens, text_dim], or per frame [1, F, tokens, text_dim] in a
        world whose schedule is given as conditioning."""
        if not self.cfg.schedule_conditioning:
            return style_context(self.style, self.cfg)
        return frame_context(self.style, self.schedule, self.cfg)

    @property
    def schedule(self) -> torch.Tensor:
        """[F] long: the group the open curtain shows per frame, ``CLOSED`` while it is closed (a world of one
        group: group 0 whenever open)."""
        return self.showing if self.showing is not None else torch.where(self.visible, 0, CLOSED)


def visible_schedule(frames: int, phase: int, cfg: WorldConfig = DEFAULT_WORLD) -> torch.Tensor:
    return ((torch.arange(frames) + phase) % cfg.period) < cfg.visible_frames


def render_clip(seed: int, frames: int, style: int | None = None, phase: int = 0,
                cfg: WorldConfig = DEFAULT_WORLD) -> Clip:
    """Render ``frames`` frames of one video; everything follows from ``seed``."""
    if cfg.groups > 1 or cfg.decoys or cfg.hidden_range:
        return _render_recall(seed, frames, style, phase, cfg)
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
    return Clip(out, colors, positions, visible, style, phase, cfg=cfg)


def _paint(frame: torch.Tensor, cell: int, color: torch.Tensor, cfg: WorldConfig) -> None:
    r, c, k = cell // cfg.grid, cell % cfg.grid, cfg.cell
    frame[:, r * k:(r + 1) * k, c * k:(c + 1) * k] = color.view(3, 1, 1)


def _render_recall(seed: int, frames: int, style: int | None, phase: int, cfg: WorldConfig) -> Clip:
    """Groups take turns at the openings, decoys on fresh cells beside them, hides drawn per opening.
    ``phase`` > 0 starts the clip with the curtain closed, the first opening at frame ``phase``."""
    gen = torch.Generator().manual_seed(seed)
    if style is None:
        style = int(torch.randint(cfg.num_styles, (1,), generator=gen))
    n_colors = len(OBJECT_COLORS)
    order = torch.randperm(cfg.cells, generator=gen)
    positions, free = order[:cfg.num_objects], order[cfg.num_objects:]
    area = free[:cfg.decoy_area or len(free)]
    state = torch.randint(n_colors, (cfg.num_objects,), generator=gen)
    group = torch.arange(cfg.num_objects) % cfg.groups
    lo, hi = cfg.hidden_range or (cfg.hidden_frames, cfg.hidden_frames)
    visible = torch.zeros(frames, dtype=torch.bool)
    opening = torch.full((frames,), -1, dtype=torch.long)     # index of the opening a frame belongs to
    f, k = phase, 0
    while f < frames:
        span = torch.arange(f, min(f + cfg.visible_frames, frames))
        visible[span], opening[span] = True, k
        f += cfg.visible_frames + int(torch.randint(lo, hi + 1, (1,), generator=gen))
        k += 1
    tint = style_tint(style, cfg)
    out = (backdrop_level(0, cfg) + tint).view(1, 3, 1, 1).expand(frames, 3, cfg.size, cfg.size).clone()
    colors = torch.full((frames, cfg.num_objects), -1, dtype=torch.long)
    decoys = torch.zeros(frames, cfg.cells, dtype=torch.bool)
    decoy_cells = decoy_state = None
    step = 0
    for t in range(frames):
        k = int(opening[t])
        if k < 0:                   # curtain closed: things passing through, on cells no object uses
            cells = free[torch.randperm(len(free), generator=gen)[:cfg.passers]]
            for cell, c in zip(cells.tolist(), torch.randint(n_colors, (cfg.passers,), generator=gen).tolist()):
                _paint(out[t], cell, OBJECT_COLORS[c], cfg)
            decoys[t, cells] = True
            continue
        start = t == 0 or int(opening[t - 1]) != k
        shown = group == k % cfg.groups
        if start:                   # fresh decoys for every opening, drawn from the decoy area
            decoy_cells = area[torch.randperm(len(area), generator=gen)[:cfg.decoys]]
            decoy_state = torch.randint(n_colors, (cfg.decoys,), generator=gen)
        step = 0 if start else step + 1
        if step == cfg.change_at:
            state = torch.where(shown, (state + 1) % n_colors, state)
            decoy_state = (decoy_state + 1) % n_colors
        colors[t, shown] = state[shown]
        for j in shown.nonzero().flatten().tolist():
            _paint(out[t], int(positions[j]), OBJECT_COLORS[state[j]], cfg)
        for cell, c in zip(decoy_cells.tolist(), decoy_state.tolist()):
            _paint(out[t], cell, OBJECT_COLORS[c], cfg)
        decoys[t, decoy_cells] = True
    decoy_area = torch.zeros(cfg.cells, dtype=torch.bool)
    decoy_area[area] = True
    showing = torch.where(opening >= 0, opening % cfg.groups, CLOSED)
    return Clip(out, colors, positions, visible, style, phase, decoys=decoys, decoy_area=decoy_area,
                showing=showing, cfg=cfg)
