"""The distillation recipe: every setting of a head's distillation, in one dataclass (the CLI's flags,
the node's inputs and the head file's metadata are all read off it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..schedule import TIMESTEP_SCALE, SamplerConfig
from .targets import SSEConfig

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
    # targets (see targets.py; ``targets`` picks a preset of the fields below)
    targets: str = ""
    sse_source: str = "teacher_clean"
    sse_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    sse_supersede: bool = False        # re-scoring targets: a newer view at a place takes over its use (targets.py)
    sse_supersede_share: float = 1.0   # the share of the newer view's use it takes over
    horizon_frames: int = 0            # re-scoring: commits need this many frames after them (0: a third of the clip)
    feature_tokens: int = 0            # tokens per clip whose head features are kept, on the CPU (0: all); for big models
    target_steps: int = 0              # noisy targets: this many of the sampler's steps, evenly spread (0: all)
    target_query_stride: int = 1       # noisy targets: every n-th query of a block scores the keys
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
        if noisy and 0 < self.target_steps < len(steps):
            picks = torch.linspace(0, len(steps) - 1, self.target_steps).round().long().unique().tolist()
            steps = tuple(steps[i] for i in picks)
        return SSEConfig(block_frames=self.chunk_frames, weights=tuple(self.sse_weights), source=self.sse_source,
                         timesteps=steps, supersede=self.sse_supersede,
                         supersede_share=self.sse_supersede_share, query_stride=self.target_query_stride)

    def sampler(self, seed: int) -> SamplerConfig:
        return SamplerConfig(chunk_frames=self.chunk_frames, timesteps=tuple(self.timesteps),
                             shift=self.shift, seed=seed)



#: recipe defaults by model size (the node's "0 = auto"): the tiny world's student distils in minutes on a
#: CPU; a Wan 2.1 model gets the 21-frame window it was trained with and subsampled features. The tiny
#: model's age as a head input and, when it watches videos, the shipped head's recency 0.05 were measured on
#: its tuning seed (docs/results.md); Wan keeps the monotone age, which extrapolates past the clip (unmeasured)
_SMALL = dict(rollouts=48, heldout=4, rollout_frames=72, steps=1200, rescore_steps=1200, hidden=32, age_form="input")
_SMALL_WATCHED_RECENCY = 0.05
_WAN = dict(rollouts=64, heldout=8, rollout_frames=21, steps=1000, rescore_steps=1000, hidden=32, target_steps=2,
            feature_tokens=4096, age_form="monotone")


def check_prompts(contexts, text_dim: int) -> None:
    """A prompt list the rollouts can use: not empty, every prompt [1, L, text_dim]."""
    if not contexts:
        raise ValueError("the prompt list is empty: connect at least one prompt to the PaFu Prompt List")
    widths = sorted({int(c.shape[-1]) for c in contexts})
    if len(widths) > 1:
        raise ValueError(f"the prompts have mixed text widths ({', '.join(map(str, widths))}): encode them all "
                         "with the same text encoder")
    bad = [i for i, c in enumerate(contexts) if c.ndim != 3 or c.shape[0] != 1]
    if widths[0] != text_dim or bad:
        raise ValueError(f"the prompts must be [1, tokens, {text_dim}] for this model, got "
                         f"{tuple(contexts[bad[0] if bad else 0].shape)} (another text encoder?)")


def node_recipe(*, dim: int, text_dim: int, contexts, latent_size: tuple[int, int], budget: float, rollouts: int = 0,
                clip_frames: int = 0, steps: int = 0, chunk_frames: int = 3,
                timesteps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0), shift: float = 5.0, seed: int = 0,
                device: str = "cpu", dtype: str = "float32", watched: tuple[int, int] | None = None) -> DistillConfig:
    """The node's recipe: 0 means the default for the model's size; every input checked before any work.

    ``budget`` is the fraction of the clip the head will serve at (its fidelity check runs there);
    ``watched`` = (clips, held out) when the prompts carry videos (``videos.watched_clips``): the clips are
    those videos, so ``rollouts`` must stay 0."""
    check_prompts(contexts, text_dim)
    small = dim <= 512
    base = dict(_SMALL if small else _WAN)
    if watched is not None:
        clips, held = watched
        if rollouts:
            raise ValueError(f"set rollouts to 0 when the prompts carry videos: each of the {clips} videos is one clip")
        if clips <= held:
            raise ValueError(f"the videos make {clips} clips and {held} of them are held out (the last quarter of the "
                             "prompts' videos): give more videos")
        base.update(rollouts=clips, heldout=held, recency=_SMALL_WATCHED_RECENCY if small else 0.0)
    frames = clip_frames or base["rollout_frames"]
    if not 0 < budget <= 1:
        raise ValueError(f"budget must be a fraction of the clip in (0, 1], got {budget}")
    if budget * frames < chunk_frames:
        raise ValueError(f"a budget of {budget:g} x {frames} frames holds {budget * frames:g} latent frames, less than "
                         f"one {chunk_frames}-frame chunk: raise the budget or clip_frames")
    base.update(rollout_frames=frames, latent_size=tuple(latent_size), chunk_frames=chunk_frames,
                timesteps=tuple(timesteps), shift=shift, seed=seed, device=device, dtype=dtype, eval_budget=budget,
                targets="future_student", rescore=True, age_unit=float(frames))
    if rollouts:
        base["rollouts"] = rollouts
        base["heldout"] = min(base["heldout"], max(1, rollouts // 4))
    if steps:
        base.update(steps=steps, rescore_steps=steps)
    return DistillConfig(**base)
