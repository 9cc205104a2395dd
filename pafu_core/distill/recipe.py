"""The distillation recipe: every setting of a head's distillation, in one dataclass (the CLI's flags,
the node's inputs and the head file's metadata are all read off it)."""

from __future__ import annotations

from dataclasses import dataclass, field

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

