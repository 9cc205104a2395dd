"""What the head learns from: the student's per-layer features of every token at cache-write time, the
salience targets beside them, and the re-scorer's inputs at each commit of a clip."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from ..adapter import WanChunkRunner
from ..cache import CacheShape, open_cache
from ..policies import EntryScored, KeyNorm, neutral_newer
from ..salience import SalienceHead
from .recipe import DistillConfig
from .rollouts import Clip
from .targets import SalienceTargets, sse_targets


class FeatureRecorder(EntryScored):
    """Keep-all 'policy' that records what the head reads of the entering tokens, layer by layer: the
    head's features (on the CPU, float16; all tokens, or a seeded random share of each chunk's) and
    the key-norm baseline of every token. With ``head`` it records the trained head's entry scores
    instead (the re-scorer's input for every token, cheap to keep)."""

    name = "record"
    bounded = False

    def __init__(self, head: SalienceHead, keep: float = 1.0, seed: int = 0, score_with_head: bool = False):
        self.head, self.keep, self.score_with_head = head, keep, score_with_head
        self.inputs = frozenset(head.input_features) | {"keys"}
        self.gen = torch.Generator().manual_seed(seed)
        self.chunks: dict[int, list[dict]] = {}
        self.kept: list[torch.Tensor] = []          # token ids with features, per chunk
        self._seen = 0

    def entry_scores(self, layer, keys, values, hidden, tokens_per_frame):
        s = keys.shape[1]
        if layer == 0:
            idx = torch.arange(s) if self.keep >= 1 else torch.randperm(s, generator=self.gen)[:max(1, round(self.keep * s))].sort().values
            self.kept.append(idx + self._seen)
            self._seen += s
        if self.score_with_head:
            rec = {"entry": self.head.entry_scores(layer, keys, values, hidden).float().cpu()}
        else:
            idx = (self.kept[-1] - (self._seen - s)).to(keys.device)
            feats = self.head.features(keys[:, idx], values[:, idx], hidden[:, idx] if hidden is not None else None)
            rec = {"features": feats.to("cpu", torch.float16 if self.keep < 1 else torch.float32),
                   "key_norm": KeyNorm().entry_scores(layer, keys, values, hidden, tokens_per_frame).float().cpu()}
        self.chunks.setdefault(layer, []).append(rec)
        return torch.zeros(keys.shape[:2], device=keys.device)

    def score(self, view):
        return view.entering_state("entry")

    def gather(self) -> dict[str, torch.Tensor]:
        """{name: [layers, N(, in)]} for batch row 0, plus "token_ids" of the featured tokens."""
        layers = [self.chunks[i] for i in sorted(self.chunks)]
        out = {k: torch.stack([torch.cat([c[k] for c in chunks], dim=1) for chunks in layers])[:, 0]
               for k in layers[0][0]}
        out["token_ids"] = torch.cat(self.kept)
        return out


def writing_pass(student: WanChunkRunner, clip: Clip, cfg: DistillConfig, recorder: FeatureRecorder) -> dict:
    """Teacher-forced writing passes of the causal student over a clean clip: what the recorder saw."""
    lat = clip.latents.to(cfg.device)
    _, _, frames, h, w = lat.shape
    cache, _ = open_cache(CacheShape.of(student), recorder, None, batch=1, tokens_per_frame=student.tokens_per_frame(h, w),
                          chunk_frames=cfg.chunk_frames, total_frames=frames, device=cfg.device)
    try:
        with torch.inference_mode():
            cross = student.cross_kv(student.embed_text(clip.context.to(cfg.device)))
            for f0 in range(0, frames, cfg.chunk_frames):
                chunk = lat[:, :, f0:f0 + cfg.chunk_frames]
                cache.cross_kv = student.cross_frames(cross, f0, f0 + chunk.shape[2])
                student.forward_chunk(chunk, torch.zeros(1, chunk.shape[2], device=lat.device), f0, cache, write=True)
    finally:
        cache.release()
    return recorder.gather()


@dataclass
class Example:
    features: torch.Tensor         # [layers, K, in] head input of the featured tokens (float16, CPU)
    target: torch.Tensor           # [layers, N] static target (the entry head's)
    key_norm: torch.Tensor         # [layers, N] key-norm baseline score
    commits: dict[int, torch.Tensor]   # block t -> [layers, N_t] targets of the tokens before t, at t's commit
    tokens_per_frame: int
    block_frames: int
    token_ids: torch.Tensor | None = None   # [K] which tokens have features (None: all, in order)
    clip: Clip | None = None       # kept when only some tokens have features: stage 2 re-reads the clip
    entry: torch.Tensor | None = None       # [layers, N] trained entry scores of every token (stage 2)

    def featured(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` [layers, N] restricted to the tokens that have features."""
        return values if self.token_ids is None else values[:, self.token_ids]


def commit_blocks(blocks: int, frames: int, cfg: DistillConfig) -> list[int]:
    """Commits a re-scoring head learns from: the ones with enough of the clip after them to measure
    use (``horizon_frames``, default a third of the clip); none for a clip too short for one."""
    horizon = cfg.horizon_frames or frames // 3
    last = blocks - 1 - -(-horizon // cfg.chunk_frames)
    return list(range(1, last + 1))


def build_example(student: WanChunkRunner, teacher: WanChunkRunner, clip: Clip, cfg: DistillConfig,
                  head: SalienceHead, index: int) -> Example:
    """One clip's salience targets and the head's features of its tokens (``index`` seeds which tokens
    keep features when ``cfg.feature_tokens`` subsamples them)."""
    sse = cfg.sse()
    source = student if sse.source == "student" else teacher
    lat, ctx = clip.latents.to(cfg.device), clip.context.to(cfg.device)
    tpf = student.tokens_per_frame(lat.shape[-2], lat.shape[-1])
    total = lat.shape[2] * tpf
    keep = min(1.0, cfg.feature_tokens / total) if cfg.feature_tokens else 1.0
    recorder = FeatureRecorder(head, keep, seed=cfg.seed * 100_003 + index)
    res: SalienceTargets = sse_targets(source, lat, ctx, sse, writer=recorder if sse.source == "student" else None)
    seen = recorder.gather() if sse.source == "student" else writing_pass(student, clip, cfg, recorder)
    nb = int(res.blocks.max()) + 1
    commits = {t: res.at_commit(t)[:, 0].float().cpu() for t in commit_blocks(nb, lat.shape[2], cfg)}
    partial = keep < 1.0
    return Example(seen["features"], res.targets[:, 0].float().cpu(), seen["key_norm"], commits, tpf,
                   cfg.chunk_frames, token_ids=seen["token_ids"] if partial else None, clip=clip if partial else None)


def entry_of_every_token(head: SalienceHead, ex: Example, student=None, cfg=None) -> torch.Tensor:
    """[layers, N] entry scores of every token of the clip: from the kept features when all tokens have
    them, else from one more writing pass over the clip with the trained head (cached on the example)."""
    if ex.token_ids is None:
        return head(ex.features.to(head.w1))
    if ex.entry is None:
        ex.entry = writing_pass(student, ex.clip, cfg, FeatureRecorder(head, score_with_head=True))["entry"]
    return ex.entry.to(head.w1)


# ---- the re-scorer's inputs at a commit ------------------------------------------------------

def newer_by_frame(entry: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """entry [layers, N] of a clip -> [layers, F, F, P]: for a token of frame f at place p, the highest
    entry salience at p over frames f+1 .. g (index g), -inf when g <= f. At a commit whose newest
    frame is g this is the cache's "newer" channel (``policies.newer_at_place``)."""
    lyr, n = entry.shape
    e = rearrange(entry, "l (f p) -> l f p", p=tokens_per_frame)
    f = e.shape[1]
    later = torch.arange(f)[None, :] > torch.arange(f)[:, None]                 # [f, g]: g > f
    grid = torch.where(later[None, :, :, None], e[:, None, :, :], float("-inf"))  # [L, f, g, P]
    return grid.cummax(dim=2).values


def rescore_inputs(entry: torch.Tensor, newer_grid: torch.Tensor, t: int, ex: Example):
    """The re-scorer's (entry, newer, age) of the tokens before block t, just after t's commit."""
    tpf = ex.tokens_per_frame
    n_t = t * ex.block_frames * tpf
    newest = (t + 1) * ex.block_frames - 1
    frames = torch.arange(n_t) // tpf
    newer = newer_grid[:, frames, min(newest, newer_grid.shape[2] - 1), torch.arange(n_t) % tpf]
    e = entry[:, :n_t]
    newer = neutral_newer(newer, e)
    age = (newest - frames).to(e.dtype).expand_as(e)
    return e, newer, age
