"""Distil a Salience Estimation Head from a bidirectional teacher.

    python -m pafu_core.distill --config distill.json [--steps 400 --out head.safetensors ...]
    torchrun --nproc_per_node 8 -m pafu_core.distill --config distill.json      # plain DDP

Pipeline: clips (self-generated rollouts of the causal student, optionally under a sliding
window so that long rollouts are covered, or latents read from a file) -> SSE targets from the
bidirectional teacher on each clean clip -> the student's per-layer features of every token at
cache-write time (teacher-forced over the same clip) -> heads trained with a listwise ranking loss
plus MSE -> held-out Spearman / top-k recall against the teacher, beside the untrained head and the
key-norm baseline, and the fidelity of budgeted rollouts to keep-all -> one head file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .adapter import WanChunkRunner
from .cache import CacheBudget
from .policies import KeyNorm, Policy, PaFuSalience, make_policy
from .progress import Progress
from .salience import HeadConfig, SalienceHead, save_head
from .sampler import SamplerConfig, build_cache, sample_video
from .teacher import SSEConfig, sse_targets
from .wan import WanDiT, init_weights_, load_wan_checkpoint, tiny_config
from .world.metrics import psnr


@dataclass
class DistillConfig:
    # models: Wan checkpoints, or a random tiny pair for smoke tests
    student: str | None = None
    teacher: str | None = None
    tiny_random: bool = False
    # data
    clips: str | None = None           # safetensors: latents [N, C, F, H, W], context [N, L, text_dim]
    rollouts: int = 8                  # self-generated clips when no clips file is given
    rollout_frames: int = 12
    rollout_window: float = 0.0        # > 0: roll out under a FIFO window of this fraction of the clip
    latent_size: tuple[int, int] = (8, 8)
    heldout: int = 2
    # sampler
    chunk_frames: int = 3
    timesteps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    shift: float = 5.0
    # SSE targets
    sse_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    sse_normalise: str = "max"
    sse_layer_mode: str = "per_layer"
    teacher_timesteps: tuple[float, ...] = (0.0,)
    sse_future_min_gap: int = 1
    # head
    input_features: tuple[str, ...] = ("keys", "values")
    hidden: int = 64
    per_head: bool = False
    # training
    steps: int = 300
    lr: float = 3e-3
    weight_decay: float = 0.01
    rank_weight: float = 1.0
    mse_weight: float = 1.0
    temperature: float = 0.05
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

    def sse(self) -> SSEConfig:
        return SSEConfig(block_frames=self.chunk_frames, weights=tuple(self.sse_weights),
                         normalise=self.sse_normalise, layer_mode=self.sse_layer_mode,
                         timesteps=tuple(self.teacher_timesteps), future_min_gap=self.sse_future_min_gap)

    def sampler(self, seed: int) -> SamplerConfig:
        return SamplerConfig(chunk_frames=self.chunk_frames, timesteps=tuple(self.timesteps),
                             shift=self.shift, seed=seed)


# ---- models and clips ------------------------------------------------------------------------

def load_models(cfg: DistillConfig) -> tuple[WanChunkRunner, WanChunkRunner]:
    dtype = getattr(torch, cfg.dtype)
    if cfg.tiny_random:
        student = init_weights_(WanDiT(tiny_config()), seed=cfg.seed)
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
    context: torch.Tensor   # [1, L, text_dim]


def read_clips(path: str, text_dim: int) -> list[Clip]:
    from safetensors.torch import load_file
    data = load_file(path)
    if "latents" not in data or "context" not in data:
        raise ValueError(f"{path}: a clips file needs tensors 'latents' [N, C, F, H, W] and 'context' [N, L, D]")
    lat, ctx = data["latents"], data["context"]
    if lat.ndim != 5 or ctx.ndim != 3 or lat.shape[0] != ctx.shape[0] or ctx.shape[-1] != text_dim:
        raise ValueError(f"{path}: latents {tuple(lat.shape)} / context {tuple(ctx.shape)} do not fit "
                         f"[N, C, F, H, W] / [N, L, {text_dim}]")
    return [Clip(lat[i:i + 1].float(), ctx[i:i + 1].float()) for i in range(lat.shape[0])]


def rollout_clips(student: WanChunkRunner, cfg: DistillConfig, indices, show: bool) -> list[Clip]:
    """Self-generated clips; with ``rollout_window`` the student runs under a FIFO window."""
    clips = []
    bar = Progress(len(indices), "rollouts", show)
    for i in indices:
        ctx = torch.randn(1, 16, student.text_dim, generator=torch.Generator().manual_seed(10_000 + i))
        budget = None
        policy = make_policy("keep_all")
        if cfg.rollout_window > 0:
            policy = make_policy("fifo")
            budget = CacheBudget(cfg.rollout_window, unit="fraction", reference_frames=cfg.rollout_frames)
        res = sample_video(student, ctx.to(cfg.device), num_frames=cfg.rollout_frames,
                           height=cfg.latent_size[0], width=cfg.latent_size[1], policy=policy,
                           budget=budget, config=cfg.sampler(seed=cfg.seed * 7919 + i), device=cfg.device)
        clips.append(Clip(res.latents.cpu(), ctx))
        bar.update()
    return clips


# ---- features and targets --------------------------------------------------------------------

class _FeatureRecorder(Policy):
    """Keep-all 'policy' that records what the head would see for every entering token."""

    name = "record"
    bounded = False

    def __init__(self, features):
        self.entry_features = frozenset(features) | {"keys"}
        self.chunks: list[dict] = []

    def score(self, view):
        keys = view.entering_keys
        rec = {"keys": keys, "values": view.entering_values, "key_norm": KeyNorm().score(view)}
        if "hidden" in self.entry_features:
            rec["hidden"] = view.entering_hidden
        self.chunks.append({k: v.clone() for k, v in rec.items()})
        return torch.zeros(keys.shape[:3], device=keys.device)


@dataclass
class Example:
    features: torch.Tensor    # [layers, N, in] head input
    target: torch.Tensor      # [layers, N] SSE target
    key_norm: torch.Tensor    # [layers, N] key-norm baseline score


def student_features(student: WanChunkRunner, clip: Clip, cfg: DistillConfig, head: SalienceHead):
    """Teacher-forced pass of the causal student over a clean clip: features at cache-write time."""
    recorder = _FeatureRecorder(head.input_features)
    lat = clip.latents.to(cfg.device)
    _, _, frames, h, w = lat.shape
    cache = build_cache(student, recorder, None, batch=1, tokens_per_frame=student.tokens_per_frame(h, w),
                        chunk_frames=cfg.chunk_frames, total_frames=frames, device=torch.device(cfg.device))
    with torch.inference_mode():
        cache.cross_kv = student.cross_kv(student.embed_text(clip.context.to(cfg.device)))
        for f0 in range(0, frames, cfg.chunk_frames):
            chunk = lat[:, :, f0:f0 + cfg.chunk_frames]
            student.forward_chunk(chunk, torch.zeros(1, chunk.shape[2], device=lat.device), f0, cache, write=True)
    cache.release()
    cat = {k: torch.cat([c[k] for c in recorder.chunks], dim=2) for k in recorder.chunks[0]}
    feats = head.features(cat["keys"], cat["values"], cat.get("hidden"))
    return feats, cat["key_norm"][:, 0]


def build_examples(student, teacher, clips, cfg: DistillConfig, head: SalienceHead, desc: str,
                   show: bool) -> list[Example]:
    out = []
    bar = Progress(len(clips), desc, show)
    for clip in clips:
        targets = sse_targets(teacher, clip.latents.to(cfg.device), clip.context.to(cfg.device), cfg.sse()).targets
        feats, key_norm = student_features(student, clip, cfg, head)
        out.append(Example(feats.float().cpu(), targets[:, 0].float().cpu(), key_norm.float().cpu()))
        bar.update()
    return out


# ---- loss and metrics ------------------------------------------------------------------------

def distill_loss(pred: torch.Tensor, target: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    """Listwise softmax cross-entropy over a clip's tokens (per layer) + MSE on the targets."""
    soft = torch.softmax(target / cfg.temperature, dim=-1)
    rank = -(soft * torch.log_softmax(pred, dim=-1)).sum(-1).mean()
    return cfg.rank_weight * rank + cfg.mse_weight * F.mse_loss(pred, target)


def spearman(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rank correlation along the last axis."""
    def ranks(x):
        return x.argsort(-1).argsort(-1).to(torch.float32)
    a, b = ranks(pred), ranks(target)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def topk_recall(pred: torch.Tensor, target: torch.Tensor, fraction: float) -> torch.Tensor:
    """Share of the teacher's top-k tokens that the prediction also puts in its top-k."""
    k = max(1, int(round(fraction * pred.shape[-1])))
    want = torch.zeros_like(target, dtype=torch.bool).scatter_(-1, target.topk(k, dim=-1).indices, True)
    got = torch.zeros_like(pred, dtype=torch.bool).scatter_(-1, pred.topk(k, dim=-1).indices, True)
    return (want & got).sum(-1).float() / k


def ranking_metrics(scores: list[torch.Tensor], examples: list[Example], fraction: float) -> dict:
    rho = torch.stack([spearman(s, e.target).mean() for s, e in zip(scores, examples)])
    rec = torch.stack([topk_recall(s, e.target, fraction).mean() for s, e in zip(scores, examples)])
    return {"spearman": float(rho.mean()), "spearman_std": float(rho.std()) if len(rho) > 1 else 0.0,
            "topk_recall": float(rec.mean()), "topk_recall_std": float(rec.std()) if len(rec) > 1 else 0.0}


def head_scores(head: SalienceHead, examples: list[Example]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [head(e.features.to(head.w1)).mean(-1).cpu() for e in examples]


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


def train(head: SalienceHead, examples: list[Example], cfg: DistillConfig, rank: int, world: int) -> list[float]:
    with torch.enable_grad():      # whatever grad mode the caller is in
        return _train(head, examples, cfg, rank, world)


def _train(head: SalienceHead, examples: list[Example], cfg: DistillConfig, rank: int, world: int) -> list[float]:
    model = head
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(head)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.steps))
    start = 0
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    ckpt = _checkpoint_path(cfg)
    if cfg.resume and ckpt and os.path.exists(ckpt):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["rng"][rank] if world > 1 else state["rng"][0])
        start = int(state["step"])
    losses: list[torch.Tensor] = []
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at > 0 else cfg.steps
    bar = Progress(end - start, "train", rank == 0)
    for step in range(start, end):
        ex = examples[int(torch.randint(len(examples), (1,), generator=gen))]
        pred = model(ex.features.to(head.w1)).mean(-1)
        loss = distill_loss(pred, ex.target.to(pred), cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
        if (step + 1) % 25 == 0 or step + 1 == end:      # one host sync per 25 steps
            bar.update(postfix=f"loss {float(torch.stack(losses[-25:]).mean()):.4f}")
        else:
            bar.update()
        if ckpt and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == end):
            rng = [gen.get_state()]
            if world > 1:      # every rank's sampling stream, so a resumed run continues exactly
                rng = [torch.empty_like(rng[0]) for _ in range(world)]
                torch.distributed.all_gather(rng, gen.get_state())
            if rank == 0:
                os.makedirs(cfg.ckpt_dir, exist_ok=True)
                torch.save({"head": head.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "step": step + 1, "rng": rng}, ckpt + ".tmp")
                os.replace(ckpt + ".tmp", ckpt)
    return [float(v) for v in losses]


def distill(cfg: DistillConfig) -> tuple[SalienceHead, dict]:
    """Run the whole pipeline; returns the trained head and its metrics (rank 0 writes the file)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
    if world > 1 and cfg.device.startswith("cuda"):
        cfg = dataclasses.replace(cfg, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    show = rank == 0
    torch.manual_seed(cfg.seed)
    student, teacher = load_models(cfg)
    head_cfg = HeadConfig(num_layers=student.num_layers, dim=student.dim, num_heads=student.num_heads,
                          patch_size=student.patch_size, input_features=tuple(cfg.input_features),
                          hidden=cfg.hidden, per_head=cfg.per_head)
    head = SalienceHead(head_cfg).to(cfg.device)      # same init on every rank (seeded above)
    untrained = SalienceHead(head_cfg)
    untrained.load_state_dict(head.state_dict())

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
        heldout_clips = rollout_clips(student, cfg, range(cfg.heldout), show)
        train_clips = rollout_clips(student, cfg, list(range(cfg.heldout, cfg.rollouts))[rank::world], show)
    train_set = build_examples(student, teacher, train_clips, cfg, head, "targets (train)", show)
    losses = train(head, train_set, cfg, rank, world)

    metrics: dict = {"final_loss": sum(losses[-10:]) / max(1, len(losses[-10:])) if losses else None}
    if rank == 0:
        held = build_examples(student, teacher, heldout_clips, cfg, head, "targets (held-out)", show)
        metrics["pafu_head"] = ranking_metrics(head_scores(head, held), held, cfg.topk)
        metrics["untrained_head"] = ranking_metrics(head_scores(untrained.to(cfg.device), held), held, cfg.topk)
        metrics["key_norm"] = ranking_metrics([e.key_norm for e in held], held, cfg.topk)
        if cfg.eval_budget > 0:
            metrics["fidelity"] = rollout_fidelity(student, head.eval(), heldout_clips, cfg)
        head.config.training = {
            "teacher": cfg.teacher or cfg.student or "tiny-random", "student": cfg.student or "tiny-random",
            "data": {"clips": cfg.clips or "self-generated rollouts", "train_clips": len(train_clips) * world,
                     "heldout_clips": len(heldout_clips), "rollout_frames": cfg.rollout_frames,
                     "rollout_window": cfg.rollout_window},
            "sse": cfg.sse().to_dict(), "steps": cfg.steps, "seed": cfg.seed, "lr": cfg.lr,
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
    return "\n".join(rows)


# ---- CLI -----------------------------------------------------------------------------------------

def _parse(argv) -> DistillConfig:
    p = argparse.ArgumentParser(prog="python -m pafu_core.distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
        with open(args.config) as fh:
            values.update(json.load(fh))
    for f in dataclasses.fields(DistillConfig):
        v = getattr(args, f.name, None)
        if v is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, tuple):
            elem = type(default[0]) if default else str
            v = tuple(elem(x.strip()) for x in str(v).split(",") if x.strip())
        values[f.name] = v
    known = {f.name for f in dataclasses.fields(DistillConfig)}
    unknown = set(values) - known
    if unknown:
        raise SystemExit(f"unknown config fields: {sorted(unknown)}")
    for k, v in list(values.items()):
        if isinstance(v, list):
            values[k] = tuple(v)
    return DistillConfig(**values)


def main(argv=None) -> None:
    cfg = _parse(argv)
    _, metrics = distill(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_metrics(metrics))
        if cfg.out:
            print(f"wrote {cfg.out}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
