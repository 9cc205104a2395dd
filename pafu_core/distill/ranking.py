"""How well a scorer ranks tokens against their targets: Spearman and top-k recall, per list and per clip."""

from __future__ import annotations

import torch

from ..salience import SalienceHead
from .features import Example, entry_of_every_token, newer_by_frame, rescore_inputs


def spearman(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rank correlation along the last axis."""
    def ranks(x):
        return x.argsort(-1).argsort(-1).to(torch.float32)
    a, b = ranks(pred), ranks(target)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def topk_recall(pred: torch.Tensor, target: torch.Tensor, fraction: float) -> torch.Tensor:
    """Share of the target's top-k tokens that the prediction also puts in its top-k."""
    k = max(1, int(round(fraction * pred.shape[-1])))
    want = torch.zeros_like(target, dtype=torch.bool).scatter_(-1, target.topk(k, dim=-1).indices, True)
    got = torch.zeros_like(pred, dtype=torch.bool).scatter_(-1, pred.topk(k, dim=-1).indices, True)
    return (want & got).sum(-1).float() / k


def scorer_lists(scorer, ex: Example, rescoring: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(prediction, target) lists a fixed scorer is judged on: the whole clip for entry scores, every
    commit's live tokens for a re-scorer. ``scorer(ex)`` -> [layers, N] entry-time scores."""
    entry = scorer(ex)
    if not rescoring:
        return [(entry, ex.target)]
    return [(entry[:, :tgt.shape[1]], tgt) for tgt in ex.commits.values()]


def ranking_metrics(lists_per_clip: list[list[tuple[torch.Tensor, torch.Tensor]]], fraction: float) -> dict:
    rho = torch.stack([torch.stack([spearman(p, t).mean() for p, t in lists]).mean() for lists in lists_per_clip])
    rec = torch.stack([torch.stack([topk_recall(p, t, fraction).mean() for p, t in lists]).mean()
                       for lists in lists_per_clip])
    return {"spearman": float(rho.mean()), "spearman_std": float(rho.std()) if len(rho) > 1 else 0.0,
            "topk_recall": float(rec.mean()), "topk_recall_std": float(rec.std()) if len(rec) > 1 else 0.0}


def head_lists(head: SalienceHead, ex: Example, student=None, cfg=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    with torch.no_grad():
        if not head.rescores:
            return [(head(ex.features.to(head.w1)).cpu(), ex.featured(ex.target))]
        entry = entry_of_every_token(head, ex, student, cfg)
        grid = newer_by_frame(entry, ex.tokens_per_frame)
        return [(head.rescore(*rescore_inputs(entry, grid, t, ex)).cpu(), tgt) for t, tgt in ex.commits.items()]
