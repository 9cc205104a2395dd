"""Roll the tiny world's student out under each policy and score it (shared by demo and benchmark).

Quality, primary: ``return_consistency`` from the world's rules (does the scene come back as it was
last seen?). Secondary: fidelity to the keep-all rollout with the same noise (PSNR, SSIM).
Cost: K/V bytes held, bytes the cache owns, and time per chunk at the end of the rollout.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from ..adapter import WanChunkRunner
from ..cache import CacheBudget
from ..policies import PaFuSalience, make_policy
from ..report import CacheReport
from ..salience import SalienceHead, load_head
from ..sampler import SamplerConfig, sample_video
from ..wan import load_wan_checkpoint
from . import assets
from .codec import decode_frames
from .metrics import psnr, return_consistency, schedule_accuracy, ssim
from .scenes import DEFAULT_WORLD, style_context

BUDGETED = ("fifo", "sink_window", "attention_mass", "key_norm", "random", "pafu", "pafu+recency")


def load_world_models(device: str = "cpu") -> tuple[WanChunkRunner, SalienceHead]:
    """The committed student and head; refuses a head that does not fit the student."""
    student = WanChunkRunner(load_wan_checkpoint(assets.STUDENT).to(device).eval().requires_grad_(False))
    head = load_head(assets.HEAD, device=device)
    head.check_backbone(student)
    return student, head


@dataclass
class Rollout:
    policy: str
    budget: float | None
    seed: int
    frames: torch.Tensor           # [F, 3, 16, 16] in [-1, 1]
    report: CacheReport
    consistency: float
    schedule: float
    psnr: float = float("nan")     # vs keep-all, same noise
    ssim: float = float("nan")

    @property
    def steady_chunk_ms(self) -> float:
        tail = self.report.chunks[-max(1, len(self.report.chunks) // 4):]
        return sum(c.chunk_ms for c in tail) / len(tail)

    @property
    def policy_share(self) -> float:
        return sum(c.policy_ms for c in self.report.chunks) / max(1e-9, sum(c.chunk_ms for c in self.report.chunks))


#: "pafu+recency": the head's salience plus 1 unit per training clip of age (see PaFuSalience)
PAFU_RECENCY = 1.0 / DEFAULT_WORLD.clip_frames


def rollouts(student: WanChunkRunner, head: SalienceHead, policy: str, budget_fraction: float | None, seed: int,
             frames: int, styles: list[int], device: str = "cpu", sink_frames: int = 1,
             chunk_callback=None) -> list[Rollout]:
    """One batched rollout: row i has style ``styles[i]``; all rows draw their noise from ``seed``
    (so row i's noise is the same under every policy). Each row's cache evicts on its own."""
    budget = None
    if policy != "keep_all":
        budget = CacheBudget(budget_fraction, unit="fraction", reference_frames=DEFAULT_WORLD.clip_frames,
                             sink_frames=sink_frames if policy == "sink_window" else 0)
    if policy.startswith("pafu"):
        pol = PaFuSalience(head, recency=PAFU_RECENCY if policy == "pafu+recency" else 0.0)
    else:
        pol = make_policy(policy, seed=seed)
    side = DEFAULT_WORLD.size // 2
    context = torch.cat([style_context(s) for s in styles]).to(device)
    res = sample_video(student, context, num_frames=frames, height=side, width=side, policy=pol, budget=budget,
                       config=SamplerConfig(seed=seed), batch=len(styles), device=device,
                       chunk_callback=chunk_callback)
    out = []
    for row in range(len(styles)):
        video = decode_frames(res.latents[row].cpu())
        out.append(Rollout(policy, budget_fraction if budget else None, seed * 1000 + row, video, res.report,
                           return_consistency(video), schedule_accuracy(video)))
    return out


def compare_to_reference(rolls: list[Rollout], references: list[Rollout]) -> None:
    """Fidelity of each rollout to the keep-all rollout of the same row (same noise)."""
    by_seed = {r.seed: r for r in references}
    for r in rolls:
        ref = by_seed[r.seed]
        r.psnr = psnr(r.frames, ref.frames)
        r.ssim = ssim(r.frames, ref.frames)


def mean_std(values) -> tuple[float, float]:
    values = [v for v in values if v == v and v != float("inf")]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(rows: list[Rollout], group_by_budget: bool = True) -> str:
    """Markdown table, one row per (budget, policy): mean ± std over seeds."""
    keys = []
    for r in rows:
        k = (r.budget, r.policy)
        if k not in keys:
            keys.append(k)
    out = ["| budget | policy | consistency (GT) | schedule | PSNR vs keep-all | SSIM vs keep-all | K/V held MiB | "
           "cache owns MiB | chunk ms (end) | policy % | videos |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for budget, policy in keys:
        group = [r for r in rows if (r.budget, r.policy) == (budget, policy)]
        c, cs = mean_std(r.consistency for r in group)
        s, ss = mean_std(r.schedule for r in group)
        p, ps = mean_std(r.psnr for r in group)
        q, qs = mean_std(r.ssim for r in group)
        kv = statistics.fmean(r.report.chunks[-1].kv_bytes / 2**20 for r in group)
        own = statistics.fmean(r.report.peak_cache_bytes / 2**20 for r in group)
        ms = statistics.fmean(r.steady_chunk_ms for r in group)
        share = statistics.fmean(100 * r.policy_share for r in group)
        label = "100% (unbounded)" if budget is None else f"{100 * budget:g}%"
        ref = policy == "keep_all"
        out.append(f"| {label} | {policy} | {c:.3f} ± {cs:.3f} | {s:.3f} ± {ss:.3f} | "
                   f"{'ref' if ref else f'{p:.2f} ± {ps:.2f}'} | {'ref' if ref else f'{q:.3f} ± {qs:.3f}'} | "
                   f"{kv:.3f} | {own:.3f} | {ms:.1f} | {share:.2f} | {len(group)} |")
    return "\n".join(out)
