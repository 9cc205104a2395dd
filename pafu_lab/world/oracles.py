"""Oracle cache policies: upper bounds for the quality tables, never offered to users.

* ``WorldOracle`` knows the world's labels: after every chunk it keeps the tokens of every object's
  latest appearance (which will return), then the newest tokens.
* ``OpeningsOracle`` knows the schedule's groups: it keeps every token of each group's latest opening
  (objects *and* the empty cells around them: the evidence that a cell shows nothing when that group
  returns), then the newest tokens.
* ``CausalUseOracle`` knows the student's future: after every chunk it keeps the tokens that the
  student's own queries from later chunks attend to most in the keep-all rollout of the same noise.

Both re-score every live token after each chunk, like the re-scoring salience head does.
"""

from __future__ import annotations

import torch

from pafu_core.policy import Policy
from pafu_core.schedule import TIMESTEP_SCALE
from pafu_core.world.scenes import DEFAULT_WORLD, WorldConfig

from pafu_core.distill.targets import SSEConfig, attention_use
from .metrics import world_labels

#: a priority outranks any recency difference (frame indices stay far below it)
_PRIORITY = 1e6


def object_labels(clip, cfg: WorldConfig = DEFAULT_WORLD) -> torch.Tensor:
    """[F, cells] bool: which cells hold one of the world's objects in each frame, from the world's own
    labels (its objects' cells and visibility), never from pixels, so nothing that merely looks like an
    object (a decoy, a highlight) counts."""
    return world_labels(clip)


class WorldOracle(Policy):
    """Keeps the tokens of each object's latest appearance (by the world's labels), then the newest ones.

    It knows the world's labels of the frames the cache held before the entering chunk (the entering
    chunk is protected anyway), which makes it comparable with the frame-reading oracle it replaced."""

    name = "oracle_world"
    scores_on_entry = False

    def __init__(self, objects: torch.Tensor):
        """``objects`` [B, F, cells] bool: ``object_labels`` of every row's world."""
        self.objects = objects

    def score(self, view) -> torch.Tensor:
        known = view.newest_frame + 1 - view.num_entering // view.tokens_per_frame
        if known <= 0:                                                       # nothing before this chunk
            return view.frame_index.float()
        objects = self.objects[:, :known]                                    # [B, F, cells]
        # per cell, the first frame of its object's latest appearance (objects of one group share it)
        onset = objects & ~torch.cat([torch.zeros_like(objects[:, :1]), objects[:, :-1]], dim=1)
        frame_ids = torch.arange(objects.shape[1]).view(1, -1, 1)
        latest = torch.where(onset, frame_ids, -1).amax(dim=1)              # [B, cells]
        frame = view.frame_index.cpu().long()                               # [L, B, N]
        place = view.place.cpu().long()
        labelled = frame < known
        f = frame.clamp(max=known - 1)
        rows = torch.arange(frame.shape[1]).view(1, -1, 1).expand_as(f)
        is_object = labelled & objects[rows, f, place]
        keep = is_object & (frame >= latest[rows, place])
        return (keep.float() * _PRIORITY + frame.float()).to(view.device)


class OpeningsOracle(Policy):
    """Keeps every token of each group's latest opening (first its last frame, where no decoy can land: the
    colours it left and the cells it left empty), then the newest ones.

    ``WorldOracle`` keeps only the object cells; a query at a cell whose object belongs to another group then
    finds only that object's colourful tokens and copies them. The whole opening also keeps what the cell
    showed when the due group last showed: nothing."""

    name = "oracle_openings"
    scores_on_entry = False

    def __init__(self, showing: torch.Tensor, decoy_area: torch.Tensor):
        """``showing`` [B, F] long: the group each frame's open curtain shows (``CLOSED``: closed);
        ``decoy_area`` [B, cells] bool: where decoys land (they never return, so those cells go first)."""
        self.showing, self.decoy_area = showing, decoy_area

    @classmethod
    def of_clips(cls, clips) -> "OpeningsOracle":
        if any(c.showing is None or c.decoy_area is None for c in clips):
            raise ValueError("oracle_openings reads which group each opening shows: it needs the RECALL world")
        return cls(torch.stack([c.showing for c in clips]), torch.stack([c.decoy_area for c in clips]))

    def score(self, view) -> torch.Tensor:
        known = view.newest_frame + 1 - view.num_entering // view.tokens_per_frame
        if known <= 0:
            return view.frame_index.float()
        showing = self.showing[:, :known]                                    # [B, F]
        groups = int(showing.max()) + 1 if bool((showing >= 0).any()) else 0
        opened = showing >= 0
        onset = opened & ~torch.cat([torch.zeros_like(opened[:, :1]), opened[:, :-1]], dim=1)
        frame_ids = torch.arange(showing.shape[1]).view(1, -1)
        # per group, the first frame of its latest opening (-1: not shown yet); the extra slot is CLOSED's
        latest = torch.full((showing.shape[0], groups + 1), -1)
        last = torch.full((showing.shape[0], groups + 1), -1)
        for g in range(groups):
            latest[:, g] = torch.where(onset & (showing == g), frame_ids, -1).amax(dim=1)
            last[:, g] = torch.where(showing == g, frame_ids, -1).amax(dim=1)
        frame = view.frame_index.cpu().long()                                # [L, B, N]
        f = frame.clamp(max=known - 1)
        rows = torch.arange(frame.shape[1]).view(1, -1, 1).expand_as(f)
        group = showing[rows, f]
        g = group.clamp(min=0)
        keep = (frame < known) & (group >= 0) & (frame >= latest[rows, g])
        left = keep & (frame == last[rows, g]) & ~self.decoy_area[rows, view.place.cpu().long()]
        return ((keep.float() + left.float()) * _PRIORITY + frame.float()).to(view.device)


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
        token = view.token_index.long()
        use = self.future_use[..., min(after, self.future_use.shape[-1] - 1)].to(view.device)
        return use.gather(-1, token) * _PRIORITY + view.frame_index.float()
