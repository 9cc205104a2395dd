"""Distil a Salience Estimation Head: learn to predict, from what the causal model has at hand, which
cached tokens later chunks will attend to.

    python -m pafu_lab.distill --config configs/distill_wan21_1.3b.json [--steps 400 --out head.safetensors ...]
    torchrun --nproc_per_node 8 -m pafu_lab.distill --config ...          # plain DDP

Pipeline: clips (the causal student's own rollouts, optionally long and under a sliding window - the
paper's streaming long tuning - or latents read from a file) -> attention use of every token by the
queries of every later block (``pafu_core/distill/targets.py``: the student's own attention in the sampling
situation, or the bidirectional teacher's, clean or noisy) -> the student's per-layer features of
every token at cache-write time -> stage 1: the entry MLPs, trained on static targets (listwise
ranking loss + MSE) -> stage 2 (``--rescore``): the re-scoring MLPs, trained at every commit of the
clip to rank the live tokens by their use *after* that commit, from entry salience, the newest
salience at their place and their age -> held-out Spearman / top-k recall beside the untrained
head and key norm, and the fidelity of budgeted rollouts -> one head file.

The stages ship with the pack (``pafu_core.distill``, which the ComfyUI node runs); this module is the
research CLI around them: models from files, clips from files, multi-GPU, the tiny world's contexts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch
from tqdm.auto import tqdm

from pafu_core.adapter import WanChunkRunner
from pafu_core.cli import Parser, UserError, output_file, run_cli
from pafu_core.distill.features import Example, build_example
from pafu_core.distill.fidelity import fidelity_to_keep_all, mean_db
from pafu_core.distill.ranking import head_lists, ranking_metrics, scorer_lists
from pafu_core.distill.recipe import DistillConfig
from pafu_core.distill.rollouts import Clip, rollout_clip
from pafu_core.distill.training import train
from pafu_core.salience import HeadConfig, SalienceHead, save_head
from pafu_core.wan import WAN21_1_3B, WanDiT, init_weights_, load_wan_checkpoint, tiny_config

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
    """Self-generated clips ``indices`` (their text from ``rollout_context``)."""
    return [rollout_clip(student, rollout_context(cfg, i, student.text_dim), cfg, i)
            for i in tqdm(list(indices), desc="rollouts", disable=not show)]


def build_examples(student, teacher, clips, cfg: DistillConfig, head: SalienceHead, desc: str,
                   show: bool) -> list[Example]:
    return [build_example(student, teacher, clip, cfg, head, i)
            for i, clip in enumerate(tqdm(clips, desc=desc, disable=not show))]


def rollout_fidelity(student: WanChunkRunner, head: SalienceHead, clips: list[Clip], cfg: DistillConfig) -> dict:
    """Mean PSNR (latent space) of budgeted rollouts against keep-all with the same noise."""
    per_frame = fidelity_to_keep_all(student, head, [c.context for c in clips], cfg, ("pafu", "fifo", "key_norm"))
    return {f"psnr_vs_keep_all_{name}": mean_db(db) for name, db in per_frame.items()}


def train_with_bar(head: SalienceHead, examples: list[Example], cfg: DistillConfig, rank: int, world: int,
                   student) -> list[float]:
    """``training.train`` under a progress bar (its loss shown every 25 steps: one host sync each)."""
    bar, recent = tqdm(desc="train", disable=rank != 0), []

    def on_step(done, total, loss):
        bar.total = total
        recent.append(loss)
        bar.update()
        if done % 25 == 0 or done == total:
            bar.set_postfix(loss=f"{float(torch.stack(recent[-25:]).mean()):.4f}")
    try:
        return train(head, examples, cfg, rank, world, student, on_step=on_step)[0]
    finally:
        bar.close()


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
    losses = train_with_bar(head, train_set, cfg, rank, world, student)
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
