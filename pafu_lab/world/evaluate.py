"""Roll the tiny world's student out under each policy and score it (shared by demo and benchmark).

Quality, primary: the world's truth at every return, per object (right objects count for, objects
drawn where the world has none count against; ``metrics.ReturnScores``). Secondary: fidelity to the keep-all rollout with the same noise (PSNR, SSIM).
Cost: K/V bytes held, bytes the cache owns, and time per chunk at the end of the rollout.
Statistics: every policy runs on the same videos (same noise), so policies are compared by their
per-video paired differences, with a t-based 95% confidence interval.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from functools import cached_property

import torch

from pafu_core.adapter import WanChunkRunner
from pafu_core.budget import CacheBudget
from pafu_core.policies import Policy, make_policy, policy_entries
from pafu_core.report import CacheReport
from pafu_core.salience import SalienceHead, load_head
from pafu_core.sampler import sample_video
from pafu_core.schedule import SamplerConfig
from pafu_core.wan import load_wan_checkpoint
from pafu_core.world import assets
from pafu_core.world.codec import decode_frames, encode_frames
from pafu_core.world.scenes import DEFAULT_WORLD, WorldConfig, render_clip

from .metrics import (change_accuracy, clip_return_scores, psnr, return_scores, schedule_accuracy, self_consistency,
                      ssim, timeline_fidelity)
from .oracles import CausalUseOracle, OpeningsOracle, WorldOracle, object_labels
from .rules import ScheduleStandout, TellRule

#: every bounded policy that needs no training (the best of them but random is what a learned head must beat)
HEURISTICS = tuple(e.name for e in policy_entries() if e.training_free)
ORACLES = ("oracle_world", "oracle_openings", "oracle_causal")
#: rows that know the world's design (its schedule, its tell) but not its future: reported, never the bar
RULES = ("standout_open", "tell_rule")
#: rows that read the frames the cache is written with, which only a watched batch has
WATCHED_ONLY = ("tell_rule",)
#: rows that run a registered policy at other positions, or Deep Forcing's deep sink alone (sink_window with
#: ``share`` of the budget as sinks): name -> (policy, positions, share)
VARIANTS = {
    "deep_sink": ("sink_window", "realigned", 0.5),
    "deep_forcing@true": ("deep_forcing", "true", 0.0),
    "keep_all@realigned": ("keep_all", "realigned", 0.0),
    "fifo@realigned": ("fifo", "realigned", 0.0),
    "pafu@realigned": ("pafu", "realigned", 0.0),
}
BUDGETED = HEURISTICS + ("pafu",) + tuple(VARIANTS) + RULES + ORACLES


def row_policy(name: str) -> tuple[str, str | None, float]:
    """A table row's (registered policy, positions or None for the policy's own recipe, sink share)."""
    if name in VARIANTS:
        return VARIANTS[name]
    return ("pafu" if name.startswith("pafu[") else name), None, 0.0


def training_free_row(name: str) -> bool:
    """A row a learned head must beat: a training-free registered policy, or a variant of one."""
    base = row_policy(name)[0]
    return base in HEURISTICS
#: noise seeds: the benchmark's evaluation batch, and the batch used to choose between variants;
#: neither is used by training (random world clips), distillation (rollouts with seeds 0..N, world clips
#: with seeds 7 * 100003 + i) or tuning; the watched world of a batch is scene ``seed * 1000 + row``
EVAL_SEED, TUNING_SEED = 9000, 5000
#: the RECALL world's evaluation seed: never looked at before its first table (one look per claim)
RECALL_EVAL_SEED = 9100


def eval_seed(world: WorldConfig) -> int:
    return RECALL_EVAL_SEED if world.name.startswith("recall") else EVAL_SEED


def check_budget_fraction(value: float, policies, flag: str = "--budget", clip: int = DEFAULT_WORLD.clip_frames,
                          chunk: int = SamplerConfig().chunk_frames, window: str = "clip") -> None:
    """Refuse, in the flag's own unit (a fraction of a ``clip``-frame window), a budget that cannot hold one
    chunk (plus sink_window's sink frame when that policy is asked for): before any rollout runs."""
    from pafu_core.cli import UserError
    sink = "sink_window" in policies
    needed = chunk + (1 if sink else 0)

    def least(frames):                      # three decimals, rounded up: always enough
        return f"{math.ceil(frames / clip * 1000 - 1e-9) / 1000:g}"
    if value * clip < chunk - 1e-9:
        raise UserError(f"{flag} {value:g} keeps less than one chunk ({chunk} latent frames = {chunk / clip:.3f} of "
                        f"the {clip}-frame {window}); use at least "
                        + (f"{least(needed)} (sink_window keeps a sink frame besides the chunk)" if sink
                           else least(chunk)))
    if value * clip < needed - 1e-9:
        raise UserError(f"{flag} {value:g} leaves sink_window no room for its sink frame beside one chunk "
                        f"({needed} latent frames = {needed / clip:.3f} of the {clip}-frame {window}); use at least "
                        f"{least(needed)}, or leave sink_window out")


def world_frames(text: str) -> int:
    """``type=`` for a rollout length: at least two periods of the world, so the objects return at least once."""
    import argparse

    from pafu_core.cli import positive_int
    value = positive_int(text)
    least = 2 * DEFAULT_WORLD.period
    if value < least:
        raise argparse.ArgumentTypeError(
            f"{value} latent frames are fewer than two periods of the world ({least} frames): the objects "
            f"return every {DEFAULT_WORLD.period} frames, so use at least {least}")
    return value


def check_policies(names, flag: str = "--policies", allowed=BUDGETED) -> list[str]:
    """Budgeted policy names, each one known; refuses an unknown one naming the choices."""
    from pafu_core.cli import UserError
    unknown = [q for q in names if q not in allowed]
    if unknown:
        raise UserError(f"{flag}: unknown polic{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
                        f"choose from {', '.join(allowed)}")
    return list(names)


def world_models(world: WorldConfig) -> tuple[str, str]:
    """The committed student and head of a world: the shipped ones for PEEKABOO, research weights for RECALL
    (and its generalisation variants, which test the same models)."""
    if world.name.startswith("recall"):
        from ..assets import RECALL_HEAD, RECALL_STUDENT
        return RECALL_STUDENT, RECALL_HEAD
    return assets.STUDENT, assets.HEAD


def load_world_models(device: str = "cpu", head_path: str | None = None, student_path: str | None = None,
                      world: WorldConfig = DEFAULT_WORLD,
                      with_head: bool = True) -> tuple[WanChunkRunner, SalienceHead | None]:
    """The world's committed student and head (or the given files; no head without ``with_head``); refuses a head
    that does not fit the student."""
    default_student, default_head = world_models(world)
    model = load_wan_checkpoint(student_path or default_student).to(device).eval().requires_grad_(False)
    student = WanChunkRunner(model)
    if not with_head:
        return student, None
    head = load_head(head_path or default_head, device=device)
    head.check_backbone(student)
    return student, head


@dataclass
class Rollout:
    policy: str
    budget: float | None
    row: int
    frames: torch.Tensor           # [F, 3, 16, 16] in [-1, 1]
    report: CacheReport
    accuracy: float                # primary return score (the world's truth): right minus false, per object
    recall: float                  # share of returning objects shown right
    false_rate: float              # objects drawn where the world has none, per returning object
    all_right: float               # share of returns with every object right and nothing invented
    change: float
    schedule: float
    timeline: float = float("nan")     # share of frames open exactly when the schedule says (scored against a clip)
    consistency: float = float("nan")  # returning objects shown as the video itself last showed them
    psnr: float = float("nan")     # vs keep-all, same noise
    ssim: float = float("nan")
    latents: torch.Tensor | None = None    # [16, F, 8, 8] the model-space video

    @property
    def steady_chunk_ms(self) -> float:
        tail = self.report.chunks[-max(1, len(self.report.chunks) // 4):]
        return sum(c.chunk_ms for c in tail) / len(tail)

    @property
    def policy_share(self) -> float:
        return sum(c.policy_ms for c in self.report.chunks) / max(1e-9, sum(c.chunk_ms for c in self.report.chunks))


@dataclass
class Batch:
    """The videos of one benchmark batch: row i has style ``styles[i]`` and its own noise from ``seed``."""

    seed: int
    frames: int
    styles: list[int]
    watched: bool = False           # the model watches the world (the cache holds its real frames)
    world: WorldConfig = DEFAULT_WORLD
    start_frames: int = 0           # the world's first frames given as the start (free generation from them)

    @property
    def context(self) -> torch.Tensor:
        """[B, L, C], or per frame [B, F, L, C] in a world whose schedule is conditioning."""
        return torch.cat([c.context for c in self.clips])

    @cached_property
    def clips(self) -> list:
        """The world's own clips of this batch (row i: scene seed ``seed * 1000 + i``), rendered once per
        batch, whatever number of policies are rolled out on it."""
        return [render_clip(self.seed * 1000 + i, self.frames, style=s, cfg=self.world)
                for i, s in enumerate(self.styles)]

    @property
    def truth(self) -> torch.Tensor:
        """[B, F, 3, 16, 16] the world's frames."""
        return torch.stack([c.frames for c in self.clips])

    @property
    def sampler(self) -> SamplerConfig:
        return SamplerConfig(seed=self.seed)


def rollouts(student: WanChunkRunner, head: SalienceHead | None, policy: str, budget_fraction: float | None,
             batch: Batch, device: str = "cpu", sink_frames: int = 1, chunk_callback=None,
             reference: list[Rollout] | None = None, label: str | None = None,
             kv_storage: str = "model", custom: Policy | None = None, context=None,
             recache: bool = False) -> list[Rollout]:
    """One batched rollout under ``policy`` (``oracle_causal`` needs the keep-all ``reference``;
    ``custom``: this policy object instead of the named one, e.g. a swept setting; ``context``: other
    conditioning than the world's, e.g. a prompt timeline, with ``recache`` at its changes)."""
    name = label or policy
    policy, positions, share = row_policy(policy)
    budget = None
    if policy != "keep_all":
        if share:         # ``share`` of the budget as sinks (Deep Forcing's deep sink), leaving room for a chunk
            frames = budget_fraction * batch.world.clip_frames
            sink_frames = max(1, min(int(share * frames), int(frames) - batch.sampler.chunk_frames))
        budget = CacheBudget(budget_fraction, unit="fraction", reference_frames=batch.world.clip_frames,
                             sink_frames=sink_frames if policy == "sink_window" else 0)
    side = batch.world.size // 2
    context = batch.context.to(device) if context is None else context
    callbacks = [chunk_callback] if chunk_callback else []
    truth = batch.truth if batch.watched else None
    observed = torch.stack([encode_frames(v) for v in truth]).to(device) if truth is not None else None
    s = batch.start_frames
    start = torch.stack([encode_frames(c.frames[:s]) for c in batch.clips]).to(device) if s else None
    open_frames = torch.stack([c.visible for c in batch.clips])
    if policy == "oracle_world":
        pol = WorldOracle(torch.stack([object_labels(c, batch.world) for c in batch.clips]))
    elif policy == "oracle_openings":
        pol = OpeningsOracle.of_clips(batch.clips)
    elif policy == "standout_open":
        pol = ScheduleStandout(open_frames=open_frames)
    elif policy == "tell_rule":
        if truth is None:
            raise ValueError("tell_rule reads the frames the cache is written with: it needs a watched batch")
        pol = TellRule(truth, open_frames, batch.world)
    elif policy == "oracle_causal":
        if reference is None:
            raise ValueError("oracle_causal needs the keep-all rollouts of the same batch")
        latents = observed if observed is not None else torch.stack([r.latents for r in reference]).to(device)
        pol = CausalUseOracle.from_rollout(student, latents, context, batch.sampler.sigmas, batch.sampler.chunk_frames)
    else:
        pol = custom if custom is not None else make_policy(policy, head=head, seed=batch.seed)
    res = sample_video(student, context, num_frames=batch.frames, height=side, width=side, policy=pol,
                       budget=budget, config=batch.sampler, batch=len(batch.styles), device=device,
                       chunk_callback=(lambda s, x: [c(s, x) for c in callbacks]) if callbacks else None,
                       kv_storage=kv_storage, observed=observed, start=start, recache=recache,
                       positions=positions or pol.positions)
    out = []
    for row in range(len(batch.styles)):
        video = decode_frames(res.latents[row].cpu())
        clip = batch.clips[row]
        against_clip = truth is not None or s > 0       # the world's truth is known: watched, or fixed by the start
        extra = {}
        if against_clip:
            scores = clip_return_scores(video, clip, start_frames=s)
            extra = dict(timeline=timeline_fidelity(video, clip, s),
                         consistency=self_consistency(video, clip, start_frames=s))
        else:
            scores = return_scores(video, batch.world)
        out.append(Rollout(name, budget_fraction if budget else None, row, video, res.report,
                           *scores, change_accuracy(video, batch.world), schedule_accuracy(video, batch.world),
                           latents=res.latents[row].cpu(), **extra))
    return out


def compare_to_reference(rolls: list[Rollout], references: list[Rollout]) -> None:
    """Fidelity of each rollout to the keep-all rollout of the same row (same noise)."""
    by_row = {r.row: r for r in references}
    for r in rolls:
        ref = by_row[r.row]
        r.psnr = psnr(r.frames, ref.frames)
        r.ssim = ssim(r.frames, ref.frames)


def mean_std(values) -> tuple[float, float]:
    values = [v for v in values if v == v and v != float("inf")]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


#: two-sided 95% quantiles of Student's t for n - 1 degrees of freedom (n up to 30; normal beyond)
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045]


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and the bounds of its 95% confidence interval (t distribution)."""
    n = len(values)
    m = statistics.fmean(values)
    if n < 2:
        return m, float("nan"), float("nan")
    half = (_T95[n - 2] if n - 2 < len(_T95) else 1.96) * statistics.stdev(values) / math.sqrt(n)
    return m, m - half, m + half


def paired(rows: list[Rollout], a: str, b: str, budget) -> tuple[float, float, float]:
    """Mean per-video difference of the primary score, policy ``a`` minus ``b``, with its 95% CI."""
    ra = {r.row: r.accuracy for r in rows if r.policy == a and r.budget == budget}
    rb = {r.row: r.accuracy for r in rows if r.policy == b and r.budget == budget}
    return mean_ci([ra[i] - rb[i] for i in sorted(ra) if i in rb])


#: what every column of ``table`` means (printed under it by the demo and the benchmark)
TABLE_LEGEND = (
    "Columns: **score** = at every return of the objects, objects shown right (their cell, their latest colour) "
    "minus objects drawn where the world has none, per returning object (1 = all right, nothing invented); "
    "**recall** = objects shown right per returning object; **false** = objects invented per returning object; "
    "**all-right returns** = share of returns with every object right and nothing invented; **self-consistent** = "
    "returning objects shown as the video itself last showed them (a memory error when low, drift when high while "
    "the score is low); **timeline** = share of frames open exactly when the schedule says; **changes** = share "
    "of objects that change colour within an appearance as the world's rule says; **rhythm** = share of gaps "
    "between appearances that match the world's period; **PSNR / SSIM vs keep-all** = fidelity to the keep-all "
    "video with the same noise; **K/V held** = self-attention K/V in the cache at the end; **cache owns** = every "
    "tensor the cache allocated (slots for budget + one chunk, per-token state); **chunk ms (end)** = mean time of "
    "the last quarter of chunks (all denoising passes + the writing pass), and **policy %** = share of chunk time "
    "spent scoring and evicting: both measured on whatever machine runs the command, indicative only on a shared "
    "CPU (the speed benchmarks time in isolation).")


def table(rows: list[Rollout], single: bool = False) -> str:
    """Markdown table, one row per (budget, policy): mean ± std over videos (``single``: one video's values)."""
    keys = []
    for r in rows:
        if (r.budget, r.policy) not in keys:
            keys.append((r.budget, r.policy))

    def cell(values, digits):
        m, sd = mean_std(values)
        return f"{m:.{digits}f}" if single else f"{m:.{digits}f} ± {sd:.{digits}f}"

    ci = "" if single else " 95% CI |"
    out = [f"| budget | policy | score (truth) |{ci} recall | false | all-right returns | self-consistent | timeline | "
           "changes | rhythm | PSNR vs keep-all | SSIM vs keep-all | K/V held MiB | cache owns MiB | chunk ms (end) | "
           "policy % | videos |",
           "|---|---|---|" + ("---|" if ci else "") + "---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for budget, policy in keys:
        group = [r for r in rows if (r.budget, r.policy) == (budget, policy)]
        bounds = ""
        if not single:
            _, lo, hi = mean_ci([r.accuracy for r in group])
            bounds = f" [{lo:.3f}, {hi:.3f}] |"
        kv = statistics.fmean(r.report.chunks[-1].kv_bytes / 2**20 for r in group)
        own = statistics.fmean(r.report.peak_cache_bytes / 2**20 for r in group)
        ms = statistics.fmean(r.steady_chunk_ms for r in group)
        share = statistics.fmean(100 * r.policy_share for r in group)
        label = "unbounded" if budget is None else f"{100 * budget:g}%"
        ref = policy == "keep_all"
        identical = all(r.psnr == math.inf for r in group)         # reproduces keep-all exactly
        out.append(f"| {label} | {policy} | {cell([r.accuracy for r in group], 3)} |{bounds} "
                   f"{cell([r.recall for r in group], 3)} | {cell([r.false_rate for r in group], 3)} | "
                   f"{cell([r.all_right for r in group], 2)} | {cell([r.consistency for r in group], 2)} | "
                   f"{cell([r.timeline for r in group], 2)} | {cell([r.change for r in group], 2)} | {cell([r.schedule for r in group], 2)} | "
                   f"{'ref' if ref else 'identical' if identical else cell([r.psnr for r in group], 2)} | "
                   f"{'ref' if ref else cell([r.ssim for r in group], 3)} | {kv:.3f} | {own:.3f} | {ms:.1f} | "
                   f"{share:.2f} | {len(group)} |")
    return "\n".join(out)
