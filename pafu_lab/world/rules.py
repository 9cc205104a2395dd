"""World-aware training-free rows for the quality tables: they know the world's design, never its future.

* ``ScheduleStandout`` keeps what stands out in frames written while the curtain was open (the schedule
  is the world's conditioning, so a policy may read it): what a rule gets from timing alone.
* ``TellRule`` is a hand-written causal rule for the RECALL world's tell: an object comes back at its cell
  with the colour it last showed there, a decoy or a passer never does. From the frames the cache has
  been written with (never a later one), it marks a cell as an object's once it has seen such a return
  there (and no mismatch), then keeps the tokens of each marked cell's latest opening, then the newest
  ones. A ceiling for what a head can learn from the same past.

They read the frames the cache is written with (the real frames, when the model watches the world).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pafu_core.policies import Standout
from pafu_core.policy import Policy
from pafu_core.world.scenes import WorldConfig

from .metrics import MATCH_TOLERANCE, cell_colors, object_mask

#: a priority outranks any recency difference (frame indices stay far below it)
_PRIORITY = 1e6


def _rows_at(table: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """``table`` [B, F] looked up at ``frame`` [L, B, N] (row b of the batch reads row b of the table)."""
    rows = torch.arange(frame.shape[1], device=frame.device).view(1, -1, 1).expand_as(frame)
    return table.to(frame.device)[rows, frame.clamp(max=table.shape[1] - 1)]


@dataclass
class ScheduleStandout(Standout):
    """``standout``, with every token of a frame written while the curtain was closed ranked below them all."""

    open_frames: torch.Tensor | None = None      # [B, F] bool: the curtain is open (the conditioning)
    name = "standout_open"

    def score(self, view) -> torch.Tensor:
        base = super().score(view)
        is_open = _rows_at(self.open_frames, view.entering_frame_index.long())
        return base - _PRIORITY * (~is_open).float()


def returned_cells(frames: torch.Tensor, open_frames: torch.Tensor, cfg: WorldConfig,
                   tol: float = MATCH_TOLERANCE) -> torch.Tensor:
    """[F, cells] bool: by frame t, the cell has been seen coming back (at the first frame of an opening, an
    object of the colour it showed at the last frame of its previous opening there) and never seen
    showing another colour instead (a decoy landing on it again matches by chance, then soon does not)."""
    colors = cell_colors(frames, cfg)                      # [F, cells, 3]
    shown = object_mask(colors) & open_frames[:, None]
    starts = open_frames & ~torch.cat([torch.zeros(1, dtype=torch.bool), open_frames[:-1]])
    ends = open_frames & ~torch.cat([open_frames[1:], torch.zeros(1, dtype=torch.bool)])
    seen = torch.zeros(frames.shape[0], cfg.cells, dtype=torch.bool)
    last = torch.full((cfg.cells,), -1)                    # last frame of the latest opening that showed the cell
    found = torch.zeros(cfg.cells, dtype=torch.bool)
    broken = torch.zeros(cfg.cells, dtype=torch.bool)
    cells = torch.arange(cfg.cells)
    for t in range(frames.shape[0]):
        if starts[t]:
            again = shown[t] & (last >= 0)
            same = (colors[t] - colors[last.clamp(min=0), cells]).norm(dim=-1) < tol
            found |= again & same
            broken |= again & ~same
        if ends[t]:
            last = torch.where(shown[t], torch.full_like(last, t), last)
        seen[t] = found & ~broken
    return seen


def latest_opening(shown: torch.Tensor, open_frames: torch.Tensor) -> torch.Tensor:
    """[F, cells]: at frame t, the first frame of the latest opening (up to t) in which the cell showed an
    object (-1: none yet); ``shown`` [F, cells] bool."""
    starts = open_frames & ~torch.cat([torch.zeros(1, dtype=torch.bool), open_frames[:-1]])
    start = torch.cummax(torch.where(starts, torch.arange(len(starts)), -1), dim=0).values     # [F]
    out = torch.full(shown.shape, -1)
    current = torch.full(shown.shape[1:], -1)
    for t in range(shown.shape[0]):
        current = torch.where(shown[t], start[t], current)
        out[t] = current
    return out


class TellRule(Policy):
    """Re-scores every live token after each chunk: the tokens of each marked object cell (see
    ``returned_cells``) from its latest opening first, then the rest, newest first."""

    name = "tell_rule"
    scores_on_entry = False

    def __init__(self, frames: torch.Tensor, open_frames: torch.Tensor, cfg: WorldConfig):
        """``frames`` [B, F, 3, H, W] the frames the cache is written with; ``open_frames`` [B, F] bool."""
        self.shown = torch.stack([object_mask(cell_colors(v, cfg)) for v in frames]) & open_frames[..., None]
        self.marked = torch.stack([returned_cells(v, o, cfg) for v, o in zip(frames, open_frames)])   # [B, F, cells]
        self.latest = torch.stack([latest_opening(s, o) for s, o in zip(self.shown, open_frames)])    # [B, F, cells]

    def score(self, view) -> torch.Tensor:
        frame = view.frame_index.long().cpu()                                  # [L, B, N]
        place = view.place.long().cpu()
        now = view.newest_frame
        rows = torch.arange(frame.shape[1]).view(1, -1, 1).expand_as(frame)
        f = frame.clamp(max=self.shown.shape[1] - 1)
        now = min(now, self.marked.shape[1] - 1)
        marked_now = self.marked[:, now] & (self.latest[:, now] >= 0)          # [B, cells]: known by now
        latest_now = self.latest[:, now]
        keep = self.shown[rows, f, place] & marked_now[rows, place] & (frame >= latest_now[rows, place])
        return (keep.float() * _PRIORITY + frame.float()).to(view.device)
