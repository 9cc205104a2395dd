"""Training the student in the situation of inference: the past it reads is what a budgeted cache kept.

Teacher forcing shows the noisy chunks the whole true past (or a random cut of it); at inference they
read what a policy kept, at a budget, of a past that the cache's own history shaped. One rollout
without gradients under a policy (watched: the cache is written with the world's real chunks) records,
before every chunk, which earlier tokens each layer and batch row kept (``KeptSets``). That becomes one
attention mask per layer and row over the one-pass [clean | noisy] sequence: the clean copy of chunk c
attends to what chunk c's cache kept and to itself, exactly as its commit pass did, and its noisy copy
to the same kept tokens and to itself, exactly as its denoising passes did. So the loss is the
inference computation, gradients included, at the cost of one more forward without gradients.

The policy and the budget are drawn per step from a mixture (``SITUATION_POLICIES``: the world oracles,
FIFO, sink + window, standout, random subsets, the current head...) so that the student learns to read a
sparse, scattered cache whoever chose it.

A *free* rollout (DAgger's form of Self-Forcing's idea) generates instead, from the world's first frames
under the per-frame schedule: the clean copies then hold the student's own past, as its cache does when it
generates. The targets stay the world's frames wherever the world's rules make them follow from that past
(the curtain as scheduled, the backdrop, an object whose latest showing the rollout drew right); an
object's cells weigh nothing where they cannot (``unknowable_cells``: a first appearance after the start,
or a return whose latest showing the rollout drew wrong or left out). With rule targets (``rule_frames``) a
return whose latest showing the rollout drew in another palette colour is no longer unknown: the world's rule
applied to that past makes it come back in the colour drawn, so free steps teach memory of the video's own past.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pafu_core.adapter import WanChunkRunner
from pafu_core.budget import CacheBudget
from pafu_core.policies import make_policy
from pafu_core.policy import Policy
from pafu_core.sampler import sample_video
from pafu_core.schedule import SamplerConfig
from pafu_core.world.scenes import OBJECT_COLORS

from .metrics import MATCH_TOLERANCE, cell_colors, cells_to_grid, object_mask

#: the policies a step may draw (names of pafu_core's registry, or the world oracle); ``pafu`` needs a head
SITUATION_POLICIES = ("oracle_world", "oracle_openings", "fifo", "sink_window", "standout", "random", "keep_all", "pafu")
#: budgets drawn uniformly from this range, as fractions of the world's reference clip
BUDGET_RANGE = (0.125, 0.5)


class _Recorder(Policy):
    """A policy that scores as ``inner`` does and notes, at every commit, which tokens the cache held before
    the entering chunk: what that chunk's passes attended to."""

    def __init__(self, inner: Policy):
        self.inner = inner
        for name in ("name", "bounded", "scores_on_entry", "requires_sink", "inputs", "state_channels",
                     "ties_by_recency", "query_frames", "positions"):
            setattr(self, name, getattr(inner, name))
        self.kept: list[torch.Tensor] = []          # per chunk: [L, B, n] token positions held before it

    def sink_frames_for(self, budget_tokens, tokens_per_frame, chunk_tokens):
        return self.inner.sink_frames_for(budget_tokens, tokens_per_frame, chunk_tokens)

    def check_model(self, runner):
        self.inner.check_model(runner)

    def enter(self, layer, entering, view):
        return self.inner.enter(layer, entering, view)

    def score(self, view) -> torch.Tensor:
        self.kept.append(view.token_index[:, :, :view.start].long().clone())
        return self.inner.score(view)


@dataclass
class KeptSets:
    """What each chunk of a rollout attended to: ``held[c]`` [L, B, N] bool over the clip's tokens."""

    held: torch.Tensor             # [C, L, B, N]
    chunk_of_frame: torch.Tensor   # [F] long: the chunk each frame belongs to
    latents: torch.Tensor          # [B, C, F, H, W] what the rollout generated (the prediction of each chunk)


def chunk_of_frames(frames: int, chunk: int, start: int = 0) -> torch.Tensor:
    """[F] long: the chunk each frame is generated in (the ``start`` frames given first are a chunk of their own)."""
    t = torch.arange(frames)
    return t // chunk if not start else torch.where(t < start, 0, (t - start) // chunk + 1)


def policy_rollout(runner: WanChunkRunner, policy: Policy, budget: CacheBudget | None, context: torch.Tensor,
                   observed: torch.Tensor, sampler: SamplerConfig, free_from: int = 0,
                   noise: torch.Tensor | None = None) -> KeptSets:
    """Roll ``policy`` out over the clips ``observed`` [B, C, F, H, W] without gradients: watched (the cache is
    written with them), or with ``free_from`` > 0 generated freely from their first ``free_from`` frames (from
    ``noise``, else the sampler's seeded noise)."""
    b, _, f, h, w = observed.shape
    recorder = _Recorder(policy)
    if free_from:
        given = dict(start=observed[:, :, :free_from], noise=noise)
    else:
        given = dict(observed=observed)
    with torch.no_grad():
        res = sample_video(runner, context, num_frames=f, height=h, width=w, policy=recorder, budget=budget,
                           config=sampler, batch=b, device=observed.device, **given)
    tokens = f * runner.tokens_per_frame(h, w)
    held = []
    for kept in recorder.kept:
        mask = torch.zeros(*kept.shape[:2], tokens, dtype=torch.bool, device=kept.device)
        held.append(mask.scatter_(-1, kept, True))
    chunk_of_frame = chunk_of_frames(f, sampler.chunk_frames, free_from).to(observed.device)
    return KeptSets(torch.stack(held), chunk_of_frame, res.latents)


def rule_colors(clip, frames: torch.Tensor, start: int, follow_drawn: bool = True,
                tol: float = MATCH_TOLERANCE) -> torch.Tensor:
    """[F, J] long: the palette colour each object must show, frame by frame, by the world's rules applied to a
    free rollout's past ``frames`` [F, 3, H, W]: an appearance goes on from the colour the rollout drew at the
    object's latest showing (the last frame of its previous appearance), the world's change within it on top.
    -1 where the object does not show or that past fixes nothing: a first appearance wholly after the ``start``
    frames (the model's own invention is as valid), a latest showing drawn missing or off the palette, or, unless
    ``follow_drawn``, drawn in another colour than the world's (the world's own colour then does not follow)."""
    n = len(OBJECT_COLORS)
    got = cell_colors(frames, clip.cfg)[:, clip.positions]                          # [F, J, 3]
    near, drawn = torch.cdist(got, OBJECT_COLORS.to(got)).min(-1)                   # nearest palette colour
    drawn = torch.where(object_mask(got) & (near < tol), drawn, -1)
    drawn[:start] = clip.colors[:start]                                             # given as they are
    if not follow_drawn:
        drawn = torch.where(drawn == clip.colors, drawn, -1)
    shown = clip.colors >= 0                                                        # [F, J]
    objects = torch.arange(shown.shape[1])
    out = torch.full_like(clip.colors, -1)
    shift = torch.zeros_like(objects)          # the current appearance's colour, against the world's
    known = torch.zeros_like(objects, dtype=torch.bool)
    last = torch.full_like(objects, -1)        # last frame each object showed in, so far
    for t in range(shown.shape[0]):            # frames, vectorised over the objects
        begins = shown[t] & (torch.ones_like(known) if t == 0 else ~shown[t - 1])
        ref = drawn[last.clamp(min=0), objects]
        follows = (last >= 0) & (ref >= 0)
        known = torch.where(begins, (t < start) | follows, known)
        # within the start ``drawn`` is the world's colour, so the shift is 0 there
        shift = torch.where(begins, (ref - clip.colors[last.clamp(min=0), objects]) % n, shift)
        out[t] = torch.where(shown[t] & known, (clip.colors[t] + shift) % n, -1)
        last = torch.where(shown[t], t, last)
    return out


def _object_cells(clip, per_object: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(per_object.shape[0], clip.cfg.cells, dtype=torch.bool)
    out[:, clip.positions] = per_object
    return out


def unknowable_cells(clip, frames: torch.Tensor, start: int, tol: float = MATCH_TOLERANCE) -> torch.Tensor:
    """[F, cells] bool: where a free rollout's past ``frames`` does not fix the world's frame, an object's cell at
    a frame it shows in (``rule_colors`` without following the drawn colour): a first appearance after the
    ``start`` frames, or a return whose latest showing the rollout drew missing or in another colour."""
    return _object_cells(clip, (clip.colors >= 0) & (rule_colors(clip, frames, start, False, tol) < 0))


def rule_frames(clip, frames: torch.Tensor, start: int, tol: float = MATCH_TOLERANCE):
    """(target frames [F, 3, H, W], unknown [F, cells] bool): the world's frames with every object recoloured as
    ``rule_colors`` says the rollout's past makes it, and the cells that past does not fix (drawn missing,
    off the palette, or first shown after ``start``). The video learns to stay what it showed, not the world."""
    cfg = clip.cfg
    rule = rule_colors(clip, frames, start, True, tol)
    recolour = (rule >= 0) & (rule != clip.colors)                                  # [F, J]
    colors = cell_colors(clip.frames, cfg)                                          # [F, cells, 3]
    colors[:, clip.positions] = torch.where(recolour[..., None], OBJECT_COLORS[rule.clamp(min=0)].to(colors),
                                            colors[:, clip.positions])
    painted = cells_to_grid(colors, cfg, cfg.cell).permute(0, 3, 1, 2)                     # [F, 3, H, W]
    target = torch.where(cells_to_grid(_object_cells(clip, recolour), cfg, cfg.cell)[:, None], painted, clip.frames)
    return target, _object_cells(clip, (clip.colors >= 0) & (rule < 0))


def situation_masks(kept: KeptSets, tokens_per_frame: int) -> torch.Tensor:
    """[B, L, 2N, 2N] bool masks over the one-pass [clean | noisy] tokens (True = attend): each chunk's clean
    and noisy copies attend to what its cache held and to their own copy of the chunk."""
    chunks, layers, b, n = kept.held.shape
    block = kept.chunk_of_frame.repeat_interleave(tokens_per_frame)                 # [N]
    past = kept.held[block].permute(2, 1, 0, 3)                                     # [B, L, N (query), N (key)]
    own = (block[:, None] == block[None, :]).expand(b, layers, n, n)
    none = torch.zeros_like(own)
    clean = torch.cat([past | own, none], dim=-1)
    noisy = torch.cat([past, own], dim=-1)
    return torch.cat([clean, noisy], dim=-2)


def draw_situation(step: int, seed: int, names=SITUATION_POLICIES,
                   budgets: tuple[float, float] = BUDGET_RANGE) -> tuple[str, float]:
    """The policy and the budget fraction (uniform in ``budgets``) of one step, seeded by the run's seed and
    the step."""
    gen = torch.Generator().manual_seed(seed * 7_919 + step)
    name = names[int(torch.randint(len(names), (1,), generator=gen))]
    lo, hi = budgets
    return name, lo + (hi - lo) * float(torch.rand((), generator=gen))


def build_policy(name: str, clips, head=None, seed: int = 0) -> Policy:
    """A policy of the mixture for one batch of clips (the world oracle reads their labels)."""
    if name == "oracle_world":
        from .oracles import WorldOracle, object_labels
        return WorldOracle(torch.stack([object_labels(c, c.cfg) for c in clips]))
    if name == "oracle_openings":
        from .oracles import OpeningsOracle
        return OpeningsOracle.of_clips(clips)
    return make_policy(name, head=head, seed=seed)


def situation_budget(name: str, fraction: float, reference_frames: int) -> CacheBudget | None:
    """The budget of a drawn situation (none for keep_all: the whole past, as long as the clip is)."""
    if name == "keep_all":
        return None
    return CacheBudget(fraction, unit="fraction", reference_frames=reference_frames,
                       sink_frames=1 if name == "sink_window" else 0)
