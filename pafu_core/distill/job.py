"""One distillation run that can be stopped and taken up again: the node's pipeline (rollouts -> targets ->
training -> evaluation) with each stage's work kept in a work folder as it is done. A run cancelled and
queued again with the same model, prompts and recipe finds the folder by its key and resumes where it
stopped; a finished run deletes it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..adapter import WanChunkRunner
from ..salience import HeadConfig, SalienceHead
from .features import Example, build_example, commit_blocks
from .fidelity import fidelity_to_keep_all, mean_db
from .ranking import head_lists, ranking_metrics, scorer_lists
from .recipe import DistillConfig
from .rollouts import Clip, rollout_clip, rollout_seed
from .training import checkpoint_step, train
from .videos import held_out_prompts, watched_clips

STAGES = ("rollouts", "targets", "training", "evaluation")
#: ``progress(stage, done, total, seconds_left_in_stage)``; ``interrupt()`` raises to stop between steps
Progress = Callable[[str, int, int, float], None]
#: recipe fields that do not change what a run computes (left out of its key)
_RUN_ONLY = ("out", "ckpt_dir", "ckpt_every", "resume", "stop_at", "device", "extra", "student", "teacher")


def model_fingerprint(module: torch.nn.Module) -> str:
    """16 hex digits that change with any weight: every parameter's name, shape, sum and first values
    (one device-to-host copy)."""
    names, stats = [], []
    for name, p in module.named_parameters():
        names.append(f"{name}:{tuple(p.shape)}")
        flat = p.detach().reshape(-1)
        stats.append(torch.cat([flat.float().sum().reshape(1), flat[:4].float(),
                                torch.zeros(4 - min(4, flat.numel()), device=flat.device)]))
    digest = hashlib.sha256("|".join(names).encode())
    if stats:
        digest.update(torch.stack(stats).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def job_key(fingerprint: str, contexts: Sequence[torch.Tensor], cfg: DistillConfig,
            videos: Sequence[torch.Tensor] | None = None) -> str:
    """The run's identity: the model, the prompts (and the videos they carry) and every recipe field that
    changes the result."""
    recipe = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RUN_ONLY}
    digest = hashlib.sha256(fingerprint.encode() + json.dumps(recipe, sort_keys=True, default=str).encode())
    for c in [*contexts, *(videos or ())]:
        digest.update(str(tuple(c.shape)).encode() + c.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def split_prompts(contexts: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(training prompts, held-out prompts): the last quarter (at least one) is held out when there are two or
    more; a single prompt serves both (held-out rollouts then differ by their noise only)."""
    contexts = list(contexts)
    held = held_out_prompts(len(contexts))
    if not held:
        return contexts, contexts
    return contexts[:-held], contexts[-held:]


def needed_gpu_bytes(student: WanChunkRunner, cfg: DistillConfig) -> int:
    """What a run holds on the GPU beyond the model, projected (not measured): the keep-all K/V of one clip
    twice (the rollout's cache, then the targets' kept K/V), the targets' attention tiles (1 GB at most) and
    one chunk's activations."""
    elem = torch.finfo(getattr(torch, cfg.dtype)).bits // 8
    tokens_per_frame = student.tokens_per_frame(*cfg.latent_size)
    kv = student.num_layers * 2 * cfg.rollout_frames * tokens_per_frame * student.dim * elem
    chunk = 32 * cfg.chunk_frames * tokens_per_frame * student.dim * elem
    return 2 * kv + int(1e9) + chunk


def check_gpu_memory(student: WanChunkRunner, cfg: DistillConfig, free_bytes: int) -> None:
    """Refuse, before any work, a recipe that will not fit in ``free_bytes``: one sentence naming what to lower."""
    need = needed_gpu_bytes(student, cfg)
    if need > free_bytes:
        raise ValueError(f"distilling with {cfg.rollout_frames}-frame clips at {cfg.latent_size[0]}x"
                         f"{cfg.latent_size[1]} latents needs about {need / 2**30:.1f} GiB of GPU memory beside the "
                         f"model and {free_bytes / 2**30:.1f} GiB are free: lower rollout_frames")


def trainable(ex: Example) -> Example:
    """The example with tensors autograd may save (ones made under inference mode cannot be)."""
    return dataclasses.replace(ex, features=ex.features.clone(), target=ex.target.clone(),
                               commits={t: v.clone() for t, v in ex.commits.items()})


@dataclass
class DistillOutcome:
    head: SalienceHead
    metrics: dict
    resumed_from: dict[str, int]     # stage -> items already done when this run started (0: fresh)


class DistillJob:
    """Rollouts, targets, training and evaluation of one head, each resumable from ``work_root/<key>``.

    ``videos`` (optional, per prompt [N_p, C, F, H, W] latents): the model watches these instead of rolling
    the prompts out; ``cfg.rollouts`` and ``cfg.heldout`` must count them (``node_recipe(watched=...)``)."""

    def __init__(self, student: WanChunkRunner, contexts: Sequence[torch.Tensor], cfg: DistillConfig,
                 work_root: str, progress: Progress | None = None, interrupt: Callable[[], None] | None = None,
                 videos: Sequence[torch.Tensor] | None = None):
        if cfg.rollouts <= cfg.heldout:
            raise ValueError(f"rollouts ({cfg.rollouts}) must exceed heldout ({cfg.heldout})")
        blocks = -(-cfg.rollout_frames // cfg.chunk_frames)
        if cfg.rescore and not commit_blocks(blocks, cfg.rollout_frames, cfg):
            raise ValueError(f"{cfg.rollout_frames}-frame clips of {cfg.chunk_frames}-frame chunks are too short to "
                             f"train re-scoring (a commit needs a third of the clip after it): raise rollout_frames")
        self.watched: list[Clip] | None = None
        if videos is not None:
            self.watched, held = watched_clips(contexts, videos, cfg.rollout_frames)
            if (len(self.watched), held) != (cfg.rollouts, cfg.heldout):
                raise ValueError(f"the recipe counts {cfg.rollouts} clips ({cfg.heldout} held out) and the videos "
                                 f"make {len(self.watched)} ({held} held out): build it with node_recipe(watched=...)")
        self.student = student
        self.train_prompts, self.heldout_prompts = split_prompts(contexts)
        self.key = job_key(model_fingerprint(student.model), contexts, cfg, videos)
        self.dir = os.path.join(work_root, self.key)
        self.cfg = dataclasses.replace(cfg, ckpt_dir=self.dir, resume=True)     # training's checkpoint lives here
        self.progress, self.interrupt = progress, interrupt
        self.resumed_from: dict[str, int] = {}
        self._stage_start = 0.0

    def run(self) -> DistillOutcome:
        """The whole pipeline. On a cancel or a failure the folder keeps what was done and every frame's
        tensors are let go (nothing stays on the GPU through the traceback)."""
        os.makedirs(self.dir, exist_ok=True)
        try:
            return self._run()
        except BaseException as e:
            traceback.clear_frames(e.__traceback__)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise

    @torch.inference_mode(False)            # ComfyUI runs nodes in inference mode; the head is trained here
    def _run(self) -> DistillOutcome:
        torch.manual_seed(self.cfg.seed)
        head = SalienceHead(self.head_config()).to(self.cfg.device)
        clips = self.rollouts()
        examples = self.targets(head, clips)
        held, rest = examples[:self.cfg.heldout], examples[self.cfg.heldout:]
        losses = self.training(head, rest)
        metrics = self.evaluate(head.eval(), held, losses)
        return DistillOutcome(head, metrics, dict(self.resumed_from))

    def discard(self) -> None:
        """Delete the work folder (after the head is written)."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def head_config(self) -> HeadConfig:
        s, cfg = self.student, self.cfg
        return HeadConfig(num_layers=s.num_layers, dim=s.dim, num_heads=s.num_heads, patch_size=s.patch_size,
                          input_features=tuple(cfg.input_features), hidden=cfg.hidden, per_head=cfg.per_head,
                          rescore=cfg.rescore, rescore_hidden=cfg.rescore_hidden,
                          rescore_inputs=tuple(cfg.rescore_inputs), age_unit=cfg.age_unit or float(cfg.rollout_frames),
                          recency=cfg.recency, age_form=cfg.age_form)

    # ---- stages -------------------------------------------------------------------------------------

    def prompt_of(self, index: int) -> torch.Tensor:
        """Rollout ``index``'s prompt: held-out rollouts (the first ``heldout``) cycle the held-out prompts."""
        h = self.cfg.heldout
        pool, i = (self.heldout_prompts, index) if index < h else (self.train_prompts, index - h)
        return pool[i % len(pool)]

    def rollouts(self) -> list[Clip]:
        """The clips: the watched videos as given, or the model's rollouts (each saved as it is made)."""
        if self.watched is not None:
            self.begin("rollouts")
            self.resumed_from["rollouts"] = 0
            self.report("rollouts", len(self.watched), len(self.watched), len(self.watched))
            return self.watched

        def make(i: int) -> dict:
            clip = rollout_clip(self.student, self.prompt_of(i), self.cfg, i)
            return {"latents": clip.latents, "seed": rollout_seed(self.cfg, i)}
        saved = self.each("rollouts", "clip", self.cfg.rollouts, make)
        return [Clip(s["latents"], self.prompt_of(i).cpu()) for i, s in enumerate(saved)]

    def targets(self, head: SalienceHead, clips: list[Clip]) -> list[Example]:
        def make(i: int) -> dict:
            ex = build_example(self.student, self.student, clips[i], self.cfg, head, i)
            return {f.name: getattr(ex, f.name) for f in dataclasses.fields(ex) if f.name not in ("clip", "entry")}
        saved = self.each("targets", "example", len(clips), make)
        return [Example(**s, clip=clips[i] if s["token_ids"] is not None else None) for i, s in enumerate(saved)]

    def training(self, head: SalienceHead, examples: list[Example]) -> list[float]:
        self.begin("training")
        start = checkpoint_step(self.cfg)
        self.resumed_from["training"] = start

        def on_step(done: int, total: int, loss) -> None:
            self.report("training", done, total, start)
            if self.interrupt is not None:
                self.interrupt()
        examples = [trainable(e) for e in examples]
        return train(head, examples, self.cfg, student=self.student, on_step=on_step)[0]

    def evaluate(self, head: SalienceHead, held: list[Example], losses: list[float]) -> dict:
        """Held-out ranking against the targets (beside key norm), and fidelity to keep-all per policy."""
        self.begin("evaluation")
        self.report("evaluation", 0, 1, 0)
        rescoring = head.rescores
        metrics = {
            "final_loss": sum(losses[-10:]) / max(1, len(losses[-10:])) if losses else None,
            "pafu_head": ranking_metrics([head_lists(head, e, self.student, self.cfg) for e in held], self.cfg.topk),
            "key_norm": ranking_metrics([scorer_lists(lambda e: e.key_norm, e, rescoring) for e in held],
                                        self.cfg.topk),
        }
        if self.cfg.eval_budget > 0:
            per_frame = fidelity_to_keep_all(self.student, head, self.heldout_prompts, self.cfg,
                                             between=self.interrupt)
            metrics["psnr_per_frame"] = per_frame
            metrics["psnr_vs_keep_all"] = {name: mean_db(db) for name, db in per_frame.items()}
        self.report("evaluation", 1, 1, 0)
        return metrics

    # ---- the work folder ----------------------------------------------------------------------------

    def each(self, stage: str, kind: str, count: int, make: Callable[[int], dict]) -> list[dict]:
        """``make(i)`` for i < count, each result saved whole (``<kind>_<i>.pt``) before the next starts;
        the ones already saved are read back instead."""
        self.begin(stage)
        out, done_before = [], 0
        for i in range(count):
            path = os.path.join(self.dir, f"{kind}_{i:04d}.pt")
            if os.path.exists(path):
                out.append(torch.load(path, map_location="cpu", weights_only=True))
                done_before += 1
                continue
            if self.interrupt is not None:
                self.interrupt()
            item = make(i)
            torch.save(item, path + ".tmp")
            os.replace(path + ".tmp", path)
            out.append(item)
            self.report(stage, i + 1, count, done_before)
        self.resumed_from[stage] = done_before
        if done_before == count:             # all read back: say the stage is done
            self.report(stage, count, count, done_before)
        return out

    def begin(self, stage: str) -> None:
        self._stage_start = time.perf_counter()

    def report(self, stage: str, done: int, total: int, done_before: int) -> None:
        if self.progress is None:
            return
        ran = done - done_before
        elapsed = time.perf_counter() - self._stage_start
        left = elapsed / ran * (total - done) if ran > 0 else float("nan")
        self.progress(stage, done, total, left)
