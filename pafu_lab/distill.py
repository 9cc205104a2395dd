"""Distil a Salience Estimation Head: learn to predict, from what the causal model has at hand, which
cached tokens later chunks will attend to.

    python -m pafu_lab.distill --config configs/distill_wan21_1.3b.json [--steps 400 --out head.safetensors ...]
    torchrun --nproc_per_node 8 -m pafu_lab.distill --config ...          # plain DDP

Pipeline: clips (the causal student's own rollouts, optionally long and under a sliding window - the
paper's streaming long tuning - or latents read from a file) -> attention use of every token by the
queries of every later block (``teacher.py``: the student's own attention in the sampling
situation, or the bidirectional teacher's, clean or noisy) -> the student's per-layer features of
every token at cache-write time -> stage 1: the entry MLPs, trained on static targets (listwise
ranking loss + MSE) -> stage 2 (``--rescore``): the re-scoring MLPs, trained at every commit of the
clip to rank the live tokens by their use *after* that commit, from entry salience, the newest
salience at their place and their age -> held-out Spearman / top-k recall beside the untrained
head and key norm, and the fidelity of budgeted rollouts -> one head file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from pafu_core.adapter import WanChunkRunner
from pafu_core.budget import CacheBudget
from pafu_core.cache import CacheShape, open_cache
from pafu_core.cli import Parser, UserError, output_file, run_cli
from pafu_core.policies import EntryScored, KeyNorm, PaFuSalience, make_policy, neutral_newer
from pafu_core.salience import HeadConfig, SalienceHead, save_head
from pafu_core.sampler import sample_video
from pafu_core.schedule import TIMESTEP_SCALE, SamplerConfig
from pafu_core.wan import WAN21_1_3B, WanDiT, init_weights_, load_wan_checkpoint, tiny_config

from .teacher import SalienceTargets, SSEConfig, sse_targets
from .world.metrics import psnr

#: the target families compared in the README's ablation (the issue's candidates)
TARGET_PRESETS = {
    "sse_teacher_clean": dict(sse_source="teacher_clean", sse_weights=(1.0, 1.0, 1.0)),
    "sse_teacher_noisy": dict(sse_source="teacher_noisy", sse_weights=(1.0, 1.0, 1.0)),
    "future_teacher_noisy": dict(sse_source="teacher_noisy", sse_weights=(0.0, 0.0, 1.0)),
    "future_student": dict(sse_source="student", sse_weights=(0.0, 0.0, 1.0)),
}


@dataclass
class DistillConfig:
    # models: Wan checkpoints, or a random tiny pair for smoke tests
    student: str | None = None
    teacher: str | None = None
    tiny_random: bool = False          # a random tiny Wan as student and teacher (smoke tests)
    random_wan13b: bool = False        # random weights at the Wan 2.1 1.3B shape (timing and memory)
    # data
    clips: str | None = None           # safetensors: latents [N, C, F, H, W], context [N, L, text_dim]
    contexts: str = "random"           # rollouts' text: "random", "tiny_world" (its styles), or a .safetensors [N, L, D]
    rollouts: int = 8                  # self-generated clips when no clips file is given
    rollout_frames: int = 12
    rollout_window: float = 0.0        # > 0: roll out under a FIFO window of this fraction of the clip
    save_clips: str | None = None      # also write the rollouts to this clips file (reuse them with --clips)
    latent_size: tuple[int, int] = (8, 8)
    heldout: int = 2
    # sampler
    chunk_frames: int = 3
    timesteps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    shift: float = 5.0
    # targets (see teacher.py; ``targets`` picks a preset of the fields below)
    targets: str = ""
    sse_source: str = "teacher_clean"
    sse_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    sse_supersede: bool = False        # re-scoring targets: a newer view at a place takes over its use (teacher.py)
    horizon_frames: int = 0            # re-scoring: commits need this many frames after them (0: a third of the clip)
    feature_tokens: int = 0            # tokens per clip whose head features are kept, on the CPU (0: all); for big models
    # head
    input_features: tuple[str, ...] = ("keys", "values")
    hidden: int = 64
    per_head: bool = False
    rescore: bool = False
    rescore_hidden: int = 16
    rescore_inputs: tuple[str, ...] = ("entry", "newer", "age")
    age_unit: float = 0.0              # frames (0: the clips' length)
    age_form: str = "input"            # "monotone": a learned decay in log(1 + age) instead of an MLP input
    recency: float = 0.0               # fixed salience per frame of recency, saved with the head (not trained:
                                       # chosen on a tuning set, see benchmarks/ablation.py --recency-sweep)
    # training
    steps: int = 300
    rescore_steps: int = 300
    lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0
    # evaluation
    topk: float = 0.25
    eval_budget: float = 0.5           # fidelity rollouts: budget as a fraction of the clip
    eval_frames: int = 0               # fidelity rollout length (0: twice the clip)
    # io
    device: str = "cpu"
    dtype: str = "float32"
    out: str = "pafu_head.safetensors"
    ckpt_dir: str | None = None
    ckpt_every: int = 100
    resume: bool = False
    stop_at: int = 0                   # end this run at this step (time-sliced jobs); --resume goes on
    extra: dict = field(default_factory=dict)   # free-form notes kept in the head's training summary

    def __post_init__(self):
        if self.targets:
            if self.targets not in TARGET_PRESETS:
                raise ValueError(f"targets must be one of {', '.join(TARGET_PRESETS)}, got {self.targets!r}")
            for k, v in TARGET_PRESETS[self.targets].items():
                setattr(self, k, v)

    def sse(self) -> SSEConfig:
        noisy = self.sse_source != "teacher_clean"
        steps = tuple(TIMESTEP_SCALE * s for s in self.sampler(0).sigmas) if noisy else SSEConfig.timesteps
        return SSEConfig(block_frames=self.chunk_frames, weights=tuple(self.sse_weights), source=self.sse_source,
                         timesteps=steps, supersede=self.sse_supersede)

    def sampler(self, seed: int) -> SamplerConfig:
        return SamplerConfig(chunk_frames=self.chunk_frames, timesteps=tuple(self.timesteps),
                             shift=self.shift, seed=seed)


# ---- models and clips ------------------------------------------------------------------------

def load_models(cfg: DistillConfig) -> tuple[WanChunkRunner, WanChunkRunner]:
    dtype = getattr(torch, cfg.dtype)
    if cfg.tiny_random or cfg.random_wan13b:
        with torch.device(cfg.device):
            student = WanDiT(WAN21_1_3B) if cfg.random_wan13b else init_weights_(WanDiT(tiny_config()), seed=cfg.seed)
        teacher = student
    else:
        if not cfg.student:
            raise ValueError("give --student (a Wan 2.1 AR checkpoint) or --tiny-random")
        student = load_wan_checkpoint(cfg.student)
        teacher = load_wan_checkpoint(cfg.teacher) if cfg.teacher else student
    student = student.to(cfg.device, dtype).eval().requires_grad_(False)
    teacher = teacher.to(cfg.device, dtype).eval().requires_grad_(False)
    return WanChunkRunner(student), WanChunkRunner(teacher)


@dataclass
class Clip:
    latents: torch.Tensor   # [1, C, F, H, W]
    context: torch.Tensor   # [1, L, text_dim], or one per latent frame [1, F, L, text_dim]


def read_clips(path: str, text_dim: int) -> list[Clip]:
    from safetensors.torch import load_file
    data = load_file(path)
    if "latents" not in data or "context" not in data:
        raise ValueError(f"{path}: a clips file needs tensors 'latents' [N, C, F, H, W] and 'context' [N, L, D] "
                         "(or one per latent frame, [N, F, L, D])")
    lat, ctx = data["latents"], data["context"]
    fits = ctx.ndim == 3 or (ctx.ndim == 4 and lat.ndim == 5 and ctx.shape[1] == lat.shape[2])
    if lat.ndim != 5 or not fits or lat.shape[0] != ctx.shape[0] or ctx.shape[-1] != text_dim:
        raise ValueError(f"{path}: latents {tuple(lat.shape)} / context {tuple(ctx.shape)} do not fit "
                         f"[N, C, F, H, W] / [N, L, {text_dim}] or [N, F, L, {text_dim}]")
    return [Clip(lat[i:i + 1].float(), ctx[i:i + 1].float()) for i in range(lat.shape[0])]


def rollout_context(cfg: DistillConfig, i: int, text_dim: int) -> torch.Tensor:
    """Text conditioning of rollout ``i``: the tiny world's styles in turn, rows of a file, or random."""
    if cfg.contexts == "tiny_world":
        from pafu_core.world.scenes import DEFAULT_WORLD, style_context
        return style_context(i % DEFAULT_WORLD.num_styles)
    if cfg.contexts == "random":
        return torch.randn(1, 16, text_dim, generator=torch.Generator().manual_seed(10_000 + i))
    from safetensors.torch import load_file
    ctx = load_file(cfg.contexts)["context"]
    if ctx.ndim != 3 or ctx.shape[-1] != text_dim:
        raise ValueError(f"{cfg.contexts}: 'context' must be [N, L, {text_dim}], got {tuple(ctx.shape)}")
    return ctx[i % ctx.shape[0]:i % ctx.shape[0] + 1].float()


def rollout_clips(student: WanChunkRunner, cfg: DistillConfig, indices, show: bool) -> list[Clip]:
    """Self-generated clips (noise seed ``seed * 7919 + i``); with ``rollout_window`` the student runs
    under a FIFO window, so long rollouts stay in the regime a budgeted cache puts it in."""
    clips = []
    for i in tqdm(list(indices), desc="rollouts", disable=not show):
        ctx = rollout_context(cfg, i, student.text_dim)
        budget = None
        policy = make_policy("keep_all")
        if cfg.rollout_window > 0:
            policy = make_policy("fifo")
            budget = CacheBudget(cfg.rollout_window, unit="fraction", reference_frames=cfg.rollout_frames)
        res = sample_video(student, ctx.to(cfg.device), num_frames=cfg.rollout_frames,
                           height=cfg.latent_size[0], width=cfg.latent_size[1], policy=policy,
                           budget=budget, config=cfg.sampler(seed=cfg.seed * 7919 + i), device=cfg.device)
        clips.append(Clip(res.latents.cpu(), ctx))
    return clips


# ---- features and targets --------------------------------------------------------------------

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


def build_examples(student, teacher, clips, cfg: DistillConfig, head: SalienceHead, desc: str,
                   show: bool) -> list[Example]:
    out = []
    sse = cfg.sse()
    source = student if sse.source == "student" else teacher
    for i, clip in enumerate(tqdm(clips, desc=desc, disable=not show)):
        lat, ctx = clip.latents.to(cfg.device), clip.context.to(cfg.device)
        tpf = student.tokens_per_frame(lat.shape[-2], lat.shape[-1])
        total = lat.shape[2] * tpf
        keep = min(1.0, cfg.feature_tokens / total) if cfg.feature_tokens else 1.0
        recorder = FeatureRecorder(head, keep, seed=cfg.seed * 100_003 + i)
        res: SalienceTargets = sse_targets(source, lat, ctx, sse, writer=recorder if sse.source == "student" else None)
        seen = recorder.gather() if sse.source == "student" else writing_pass(student, clip, cfg, recorder)
        nb = int(res.blocks.max()) + 1
        commits = {t: res.at_commit(t)[:, 0].float().cpu() for t in commit_blocks(nb, lat.shape[2], cfg)}
        partial = keep < 1.0
        out.append(Example(seen["features"], res.targets[:, 0].float().cpu(), seen["key_norm"], commits, tpf,
                           cfg.chunk_frames, token_ids=seen["token_ids"] if partial else None,
                           clip=clip if partial else None))
        del res
    return out


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


# ---- loss and metrics ------------------------------------------------------------------------

#: the targets' softmax temperature in the listwise ranking loss (targets are normalised to [0, 1])
RANK_TEMPERATURE = 0.05


def distill_loss(pred: torch.Tensor, target: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    """Listwise softmax cross-entropy over a list of tokens (per layer) + MSE on the targets, equally weighted."""
    soft = torch.softmax(target / RANK_TEMPERATURE, dim=-1)
    rank = -(soft * torch.log_softmax(pred, dim=-1)).sum(-1).mean()
    return rank + F.mse_loss(pred, target)


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


def entry_of_every_token(head: SalienceHead, ex: Example, student=None, cfg=None) -> torch.Tensor:
    """[layers, N] entry scores of every token of the clip: from the kept features when all tokens have
    them, else from one more writing pass over the clip with the trained head (cached on the example)."""
    if ex.token_ids is None:
        return head(ex.features.to(head.w1))
    if ex.entry is None:
        ex.entry = writing_pass(student, ex.clip, cfg, FeatureRecorder(head, score_with_head=True))["entry"]
    return ex.entry.to(head.w1)


def rollout_fidelity(student: WanChunkRunner, head: SalienceHead, clips: list[Clip], cfg: DistillConfig) -> dict:
    """PSNR (latent space) of budgeted rollouts against keep-all with the same noise."""
    frames = cfg.eval_frames or 2 * cfg.rollout_frames
    budget = CacheBudget(cfg.eval_budget, unit="fraction", reference_frames=cfg.rollout_frames)
    out = {}
    for name in ("pafu", "fifo", "key_norm"):
        vals = []
        for i, clip in enumerate(clips):
            kw = dict(num_frames=frames, height=cfg.latent_size[0], width=cfg.latent_size[1],
                      config=cfg.sampler(seed=50_000 + i), device=cfg.device)
            ctx = clip.context.to(cfg.device)
            ref = sample_video(student, ctx, policy=make_policy("keep_all"), budget=None, **kw).latents
            pol = PaFuSalience(head) if name == "pafu" else make_policy(name)
            got = sample_video(student, ctx, policy=pol, budget=budget, **kw).latents
            vals.append(psnr(got, ref, peak=float(ref.abs().max()) or 1.0))
        out[f"psnr_vs_keep_all_{name}"] = sum(vals) / len(vals)
    return out


# ---- training ----------------------------------------------------------------------------------

def _checkpoint_path(cfg: DistillConfig) -> str | None:
    return os.path.join(cfg.ckpt_dir, "distill_state.pt") if cfg.ckpt_dir else None


def train(head: SalienceHead, examples: list[Example], cfg: DistillConfig, rank: int, world: int,
          student=None) -> list[float]:
    """Stage 1 (entry MLPs, ``cfg.steps``), then stage 2 (re-scoring MLPs, ``cfg.rescore_steps``)."""
    with torch.enable_grad():      # whatever grad mode the caller is in
        return _train(head, examples, cfg, rank, world, student)


def _entry_loss(head, ex: Example, cfg: DistillConfig, student=None) -> torch.Tensor:
    pred = head(ex.features.to(head.w1))
    return distill_loss(pred, ex.featured(ex.target).to(pred), cfg)


def _rescore_loss(head, ex: Example, cfg: DistillConfig, student=None) -> torch.Tensor:
    with torch.no_grad():
        entry = entry_of_every_token(head, ex, student, cfg)
        grid = newer_by_frame(entry, ex.tokens_per_frame)
    losses = [distill_loss(head.rescore(*rescore_inputs(entry, grid, t, ex)), tgt.to(entry), cfg)
              for t, tgt in ex.commits.items()]
    return torch.stack(losses).mean()


def _train(head: SalienceHead, examples: list[Example], cfg: DistillConfig, rank: int, world: int,
           student=None) -> list[float]:
    stages = [("entry", cfg.steps, ("w1", "b1", "w2", "b2"), _entry_loss)]
    if head.rescores:
        names = ("r1", "rb1", "r2", "rb2") + (("age_w",) if head.config.age_form == "monotone" else ())
        stages.append(("rescore", cfg.rescore_steps, names, _rescore_loss))
    total = sum(s[1] for s in stages)
    params = dict(head.named_parameters())
    opts = [torch.optim.AdamW([params[p] for p in names], lr=cfg.lr, weight_decay=cfg.weight_decay)
            for _, _, names, _ in stages]
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=max(1, s[1])) for o, s in zip(opts, stages)]
    start = 0
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    ckpt = _checkpoint_path(cfg)
    if cfg.resume and ckpt and os.path.exists(ckpt):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        head.load_state_dict(state["head"])
        for o, s, so, ss in zip(opts, scheds, state["opts"], state["scheds"]):
            o.load_state_dict(so)
            s.load_state_dict(ss)
        gen.set_state(state["rng"][rank] if world > 1 else state["rng"][0])
        start = int(state["step"])
    losses: list[torch.Tensor] = []
    end = min(total, cfg.stop_at) if cfg.stop_at > 0 else total
    bar = tqdm(total=end - start, desc="train", disable=rank != 0)
    for step in range(start, end):
        stage = 0 if step < cfg.steps else 1
        _, _, names, loss_fn = stages[stage]
        ex = examples[int(torch.randint(len(examples), (1,), generator=gen))]
        loss = loss_fn(head, ex, cfg, student)
        loss.backward()
        if world > 1:        # data parallel: average this stage's gradients over the ranks
            for p in (params[n] for n in names):
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
        opts[stage].step()
        opts[stage].zero_grad(set_to_none=True)
        scheds[stage].step()
        losses.append(loss.detach())
        bar.update()
        if (step + 1) % 25 == 0 or step + 1 == end:      # one host sync per 25 steps
            bar.set_postfix(stage=stages[stage][0], loss=f"{float(torch.stack(losses[-25:]).mean()):.4f}")
        if ckpt and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == end):
            rng = [gen.get_state()]
            if world > 1:      # every rank's sampling stream, so a resumed run continues exactly
                rng = [torch.empty_like(rng[0]) for _ in range(world)]
                torch.distributed.all_gather(rng, gen.get_state())
            if rank == 0:
                os.makedirs(cfg.ckpt_dir, exist_ok=True)
                torch.save({"head": head.state_dict(), "opts": [o.state_dict() for o in opts],
                            "scheds": [s.state_dict() for s in scheds], "step": step + 1, "rng": rng}, ckpt + ".tmp")
                os.replace(ckpt + ".tmp", ckpt)
    bar.close()
    return [float(v) for v in losses]


def distill(cfg: DistillConfig) -> tuple[SalienceHead, dict]:
    """Run the whole pipeline; returns the trained head and its metrics (rank 0 writes the file)."""
    check_inputs(cfg)                       # before any model is loaded
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
    if world > 1 and cfg.device.startswith("cuda"):
        cfg = dataclasses.replace(cfg, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    show = rank == 0
    torch.manual_seed(cfg.seed)
    cuda = cfg.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(cfg.device)
    clock = {}
    tick = time.perf_counter()
    student, teacher = load_models(cfg)
    if cfg.clips:
        all_clips = read_clips(cfg.clips, student.text_dim)
        if len(all_clips) <= cfg.heldout:
            raise ValueError(f"{cfg.clips}: {len(all_clips)} clips leave none for training after "
                             f"{cfg.heldout} held out")
        heldout_clips = all_clips[:cfg.heldout]
        train_clips = all_clips[cfg.heldout:][rank::world]
    else:
        if cfg.rollouts <= cfg.heldout:
            raise ValueError(f"rollouts ({cfg.rollouts}) must exceed heldout ({cfg.heldout})")
        tick = time.perf_counter()
        heldout_clips = rollout_clips(student, cfg, range(cfg.heldout), show)
        train_clips = rollout_clips(student, cfg, list(range(cfg.heldout, cfg.rollouts))[rank::world], show)
        clock["rollout_s_per_clip"] = (time.perf_counter() - tick) / max(1, len(heldout_clips) + len(train_clips))
        if cfg.save_clips and world == 1:
            from safetensors.torch import save_file
            every = heldout_clips + train_clips
            save_file({"latents": torch.cat([c.latents for c in every]).contiguous(),
                       "context": torch.cat([c.context for c in every]).contiguous()}, cfg.save_clips)
    frames = heldout_clips[0].latents.shape[2]
    head_cfg = HeadConfig(num_layers=student.num_layers, dim=student.dim, num_heads=student.num_heads,
                          patch_size=student.patch_size, input_features=tuple(cfg.input_features),
                          hidden=cfg.hidden, per_head=cfg.per_head, rescore=cfg.rescore,
                          rescore_hidden=cfg.rescore_hidden, rescore_inputs=tuple(cfg.rescore_inputs),
                          age_unit=cfg.age_unit or float(frames), recency=cfg.recency, age_form=cfg.age_form)
    torch.manual_seed(cfg.seed)
    head = SalienceHead(head_cfg).to(cfg.device)      # same init on every rank
    untrained = SalienceHead(head_cfg)
    untrained.load_state_dict(head.state_dict())
    tick = time.perf_counter()
    train_set = build_examples(student, teacher, train_clips, cfg, head, "targets (train)", show)
    clock["targets_s_per_clip"] = (time.perf_counter() - tick) / max(1, len(train_clips))
    tick = time.perf_counter()
    losses = train(head, train_set, cfg, rank, world, student)
    clock["train_s_per_step"] = (time.perf_counter() - tick) / max(1, len(losses))

    metrics: dict = {"final_loss": sum(losses[-10:]) / max(1, len(losses[-10:])) if losses else None,
                     "timing": clock}
    if rank == 0:
        held = build_examples(student, teacher, heldout_clips, cfg, head, "targets (held-out)", show)
        rescoring = head.rescores
        metrics["pafu_head"] = ranking_metrics([head_lists(head, e, student, cfg) for e in held], cfg.topk)
        for e in held:            # the untrained head's own entry scores
            e.entry = None
        metrics["untrained_head"] = ranking_metrics([head_lists(untrained.to(cfg.device), e, student, cfg)
                                                     for e in held], cfg.topk)
        metrics["key_norm"] = ranking_metrics([scorer_lists(lambda e: e.key_norm, e, rescoring) for e in held],
                                              cfg.topk)
        if cfg.eval_budget > 0:
            metrics["fidelity"] = rollout_fidelity(student, head.eval(), heldout_clips, cfg)
        if cuda:
            metrics["timing"]["peak_gib"] = torch.cuda.max_memory_allocated(cfg.device) / 2**30
        head.config.training = {
            "teacher": os.path.basename(cfg.teacher or cfg.student or "tiny-random"),
            "student": os.path.basename(cfg.student or "tiny-random"),
            "data": {"clips": os.path.basename(cfg.clips) if cfg.clips else "self-generated rollouts",
                     "train_clips": len(train_clips) * world,
                     "heldout_clips": len(heldout_clips), "rollout_frames": cfg.rollout_frames,
                     "rollout_window": cfg.rollout_window, "contexts": cfg.contexts},
            "targets": cfg.targets or "custom", "sse": cfg.sse().to_dict(), "steps": cfg.steps,
            "rescore_steps": cfg.rescore_steps if cfg.rescore else 0, "seed": cfg.seed, "lr": cfg.lr,
            "world_size": world, "eval": metrics, **({"notes": cfg.extra} if cfg.extra else {}),
        }
        if cfg.out:
            save_head(head, cfg.out)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return head, metrics


def format_metrics(metrics: dict) -> str:
    rows = [f"{'scorer':>16} {'spearman':>14} {'top-k recall':>14}"]
    for name in ("pafu_head", "untrained_head", "key_norm"):
        if name in metrics:
            m = metrics[name]
            rows.append(f"{name:>16} {m['spearman']:>7.3f} ±{m['spearman_std']:.3f} "
                        f"{m['topk_recall']:>7.3f} ±{m['topk_recall_std']:.3f}")
    for k, v in metrics.get("fidelity", {}).items():
        rows.append(f"{k:>32}: {v:.2f} dB")
    for k, v in metrics.get("timing", {}).items():
        rows.append(f"{k:>32}: {v:.3f}")
    return "\n".join(rows)


# ---- CLI -----------------------------------------------------------------------------------------

def _convert(flag: str, elem, text: str):
    try:
        return elem(text)
    except ValueError:
        raise UserError(f"{flag}: {text!r} is not {'a whole number' if elem is int else 'a number'}") from None


def read_config_file(path: str) -> dict:
    """The fields of a ``--config`` JSON file; a missing or malformed file is one sentence."""
    if not os.path.isfile(path):
        raise UserError(f"--config {path}: " + ("not a file" if os.path.exists(path) else "no such file"))
    try:
        with open(path) as fh:
            values = json.load(fh)
    except UnicodeDecodeError:
        raise UserError(f"--config {path}: not a JSON text file") from None
    except json.JSONDecodeError as e:
        raise UserError(f"--config {path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: must hold a JSON object of DistillConfig fields, "
                        f"not a {type(values).__name__}")
    return values


def _parse(argv) -> DistillConfig:
    p = Parser(prog="python -m pafu_lab.distill", description=__doc__)
    p.add_argument("--config", help="JSON file with DistillConfig fields; flags override it")
    for f in dataclasses.fields(DistillConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, tuple):
            p.add_argument(flag, default=None, help=f"comma-separated (default {','.join(map(str, default))})")
        else:
            p.add_argument(flag, default=None, type=type(default) if default is not None else str,
                           help=f"default {default}")
    args = p.parse_args(argv)
    values: dict = {}
    if args.config:
        values.update(read_config_file(args.config))
    known = {f.name for f in dataclasses.fields(DistillConfig)}
    unknown = set(values) - known
    if unknown:
        raise UserError(f"--config {args.config}: unknown field{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(sorted(unknown))} (see --help for the fields)")
    for f in dataclasses.fields(DistillConfig):
        v = getattr(args, f.name, None)
        if v is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, tuple):
            elem = type(default[0]) if default else str
            flag = "--" + f.name.replace("_", "-")
            v = tuple(_convert(flag, elem, x.strip()) for x in str(v).split(",") if x.strip())
        values[f.name] = v
    for k, v in list(values.items()):
        if isinstance(v, list):
            values[k] = tuple(v)
    return DistillConfig(**values)


def check_inputs(cfg: DistillConfig) -> None:
    """What can be checked before any model is loaded: the files named, the counts, the dtype."""
    for flag, path in (("--student", cfg.student), ("--teacher", cfg.teacher), ("--clips", cfg.clips),
                       ("--contexts", None if cfg.contexts in ("random", "tiny_world") else cfg.contexts)):
        if path and not os.path.isfile(path):
            also = " (or 'random' / 'tiny_world')" if flag == "--contexts" else ""
            raise UserError(f"{flag} {path}: no such file{also}")
    if not cfg.clips and cfg.rollouts <= cfg.heldout:
        raise UserError(f"rollouts ({cfg.rollouts}) must exceed heldout ({cfg.heldout})")
    if not isinstance(getattr(torch, cfg.dtype, None), torch.dtype):
        raise UserError(f"--dtype {cfg.dtype!r} is not a torch dtype (float32, bfloat16, float16)")
    if not (cfg.tiny_random or cfg.random_wan13b or cfg.student):
        raise UserError("give --student (a Wan 2.1 AR checkpoint) or --tiny-random")
    if cfg.out:
        output_file(cfg.out, "--out")


def main(argv=None) -> None:
    cfg = _parse(argv)
    _, metrics = distill(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_metrics(metrics))
        if cfg.out:
            print(f"wrote {cfg.out}")
    sys.stdout.flush()


if __name__ == "__main__":
    run_cli(main)
