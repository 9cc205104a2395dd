"""Oracle cache policies: upper bounds for the quality tables, never offered to users.

* ``WorldOracle`` knows the world's truth: after every chunk it keeps the tokens of the latest
  appearance of the objects (which will return), then the newest tokens.
* ``CausalUseOracle`` knows the student's future: after every chunk it keeps the tokens that the
  student's own queries from later chunks attend to most in the keep-all rollout of the same noise.

Both re-score every live token after each chunk, like the re-scoring salience head does.
"""

from __future__ import annotations

import torch

from pafu_core.policies import Policy
from pafu_core.sampler import TIMESTEP_SCALE
from pafu_core.world.codec import decode_frames

from ..teacher import SSEConfig, attention_use
from .metrics import cell_colors, object_mask

#: a priority outranks any recency difference (frame indices stay far below it)
_PRIORITY = 1e6


class FrameTape:
    """Which cells show objects in the frames generated so far, per batch row (fed by the sampler's
    chunk callback with each finished chunk's latents)."""

    def __init__(self, batch: int, frames: int, cells: int):
        self.objects = torch.zeros(batch, frames, cells, dtype=torch.bool)
        self.frames = 0

    def __call__(self, stats, x0: torch.Tensor) -> None:
        shown = object_mask(cell_colors(decode_frames(x0.float().cpu()).flatten(0, 1)))
        f0 = stats.frame_start
        self.objects[:, f0:f0 + stats.frames] = shown.view(x0.shape[0], stats.frames, -1)
        self.frames = f0 + stats.frames


class WorldOracle(Policy):
    name = "oracle_world"
    scores_on_entry = False

    def __init__(self, tape: FrameTape):
        self.tape = tape

    def score(self, view) -> torch.Tensor:
        if self.tape.frames == 0:                                            # nothing generated yet
            return view.frame_index.float()
        objects = self.tape.objects[:, :self.tape.frames]                    # [B, F, cells]
        shown = objects.any(dim=-1)
        starts = shown & ~torch.cat([torch.zeros_like(shown[:, :1]), shown[:, :-1]], dim=1)
        frame_ids = torch.arange(shown.shape[1])
        latest = torch.where(starts, frame_ids, -1).amax(dim=1)             # [B]: start of the latest appearance
        frame = view.frame_index.cpu().long()                               # [L, B, N]
        place = view.place.cpu().long()
        taped = frame < self.tape.frames
        f = frame.clamp(max=max(0, self.tape.frames - 1))
        rows = torch.arange(frame.shape[1]).view(1, -1, 1).expand_as(f)
        is_object = taped & objects[rows, f, place]
        keep = is_object & (frame >= latest.view(1, -1, 1))
        return (keep.float() * _PRIORITY + frame.float()).to(view.cache.device)


class CausalUseOracle(Policy):
    name = "oracle_causal"
    scores_on_entry = False

    def __init__(self, future_use: torch.Tensor, block_frames: int):
        """``future_use`` [L, B, N, blocks + 1]: mean over heads of the max attention from blocks >= b."""
        self.future_use, self.block_frames = future_use, block_frames

    @classmethod
    def from_rollout(cls, student, latents: torch.Tensor, context: torch.Tensor, sigmas, block_frames: int):
        cfg = SSEConfig(block_frames=block_frames, source="student", weights=(0.0, 0.0, 1.0),
                        timesteps=tuple(TIMESTEP_SCALE * s for s in sigmas))
        use = attention_use(student, latents, context, cfg)                  # [L, B, H, N, blocks]
        suffix = use.flip(-1).cummax(dim=-1).values.flip(-1).mean(dim=2)
        return cls(torch.cat([suffix, torch.zeros_like(suffix[..., :1])], dim=-1), block_frames)

    def score(self, view) -> torch.Tensor:
        after = view.newest_frame // self.block_frames + 1                   # the first block still to come
        token = view.cache.token_index[:, :, :view.end].long()
        use = self.future_use[..., min(after, self.future_use.shape[-1] - 1)].to(view.cache.device)
        return use.gather(-1, token) * _PRIORITY + view.frame_index.float()
