"""Train the tiny world's models: a bidirectional teacher, then a causal few-step student.

    python -m pafu_lab.world.train teacher --steps 1500 --out runs/teacher.safetensors
    python -m pafu_lab.world.train student --init runs/teacher.safetensors --steps 3000 \
        --out runs/student.safetensors

Both use the same Wan 2.1 code as everything else (a tiny ComfyUI-loadable config: head_dim 128,
text_dim 4096, 16 latent channels, patch 1x2x2).

* Teacher: flow matching on whole clips with full (bidirectional) attention.
* Student: initialised from the teacher; teacher forcing in one pass over [clean clip at the
  context timestep | noisy clip], block-causal, each noisy chunk at one of the sampler's warped
  timesteps, attending to the clean chunks before it and to itself.
* Both weight the loss on the cells that show objects (``OBJECT_WEIGHT``): they are what the model
  must remember, a few tokens of each frame. The noisy chunks' view of the
  past is sometimes cut to a sliding window or a random subset of tokens (a light version of the
  paper's streaming long tuning), so keep-all and budgeted rollouts are both in distribution.
  Random temporal offsets cover the demo's whole RoPE range (10x the clip).

Seeded: the same script and seed give the same metrics on the same device (bitwise) and within a
small tolerance across devices. A lent GPU only makes it faster (``--device cuda``).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from pafu_core.adapter import WanChunkRunner
from pafu_core.budget import check_fits
from pafu_core.cli import (Parser, existing_file, fraction_of, list_of, nonneg_int, one_of, output_file,
                           positive_float, positive_int, run_cli, torch_device)
from pafu_core.schedule import TIMESTEP_SCALE, SamplerConfig, warp_timesteps
from pafu_core.wan import WanConfig, WanDiT, init_weights_, load_wan_checkpoint
from pafu_core.world.codec import decode_frames, encode_frames
from pafu_core.world.scenes import DEFAULT_WORLD, WORLDS, WorldConfig, frame_context, render_clip

from .metrics import cells_to_grid
from .situation import (BUDGET_RANGE, SITUATION_POLICIES, build_policy, draw_situation, policy_rollout,
                        rule_frames, situation_budget, situation_masks, unknowable_cells)

TINY_WAN = WanConfig(dim=128, ffn_dim=384, num_heads=1, num_layers=4)
MAX_OFFSET = 10 * DEFAULT_WORLD.clip_frames        # demo length: 10x the training clip


def world_batch(step: int, batch: int, seed: int, cfg: WorldConfig = DEFAULT_WORLD, frames: int | None = None,
                open_weight: str = "objects", with_clips: bool = False):
    """Clips at random phases and styles: latents [B, 16, F, 8, 8] and contexts [B, L, 4096] (per frame,
    [B, F, L, 4096], in a world whose schedule is conditioning), the loss weights (and the clips)."""
    frames = frames or cfg.clip_frames
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    lat, ctx, weights, clips = [], [], [], []
    for _ in range(batch):
        clip_seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        # start with the objects half of the time (as the demo does), else later in the cycle
        if cfg.clock_step:          # at another step of the clock
            steps = cfg.period // cfg.clock_step
            later = cfg.clock_step * int(torch.randint(steps, (1,), generator=gen))
        else:                       # with the curtain closed for a while
            later = int(torch.randint(1, cfg.period, (1,), generator=gen))
        phase = 0 if torch.rand((), generator=gen) < 0.5 else later
        clip = render_clip(clip_seed, frames, phase=phase, cfg=cfg)
        lat.append(encode_frames(clip.frames))
        ctx.append(clip.context)
        weights.append(salient_weights(clip, open_weight))
        clips.append(clip)
    out = torch.stack(lat), torch.cat(ctx), torch.stack(weights)
    return (*out, clips) if with_clips else out


def slipped_schedule(clips, share: float, gen: torch.Generator) -> torch.Tensor:
    """[B, F, L, D] the clips' conditioning with each frame's schedule token replaced, at ``share`` of the
    frames, by another one drawn at random (the curtain open for a closed frame, closed or another group for an
    open one). Read by the clean copies only, it makes the cached frames disagree with their schedule as a free
    rollout's own past does (an object it drew where the curtain was closed), so that the noisy chunk learns to
    follow its own schedule, not the past's."""
    out = []
    for clip in clips:
        showing = clip.schedule.clone()
        slip = torch.rand(len(showing), generator=gen) < share
        other = torch.randint(clip.cfg.groups, (len(showing),), generator=gen)     # one of the other values
        values = other + (other >= showing + 1).long() - 1        # [CLOSED, groups) without the frame's own
        showing[slip] = values[slip]
        out.append(frame_context(clip.style, showing, clip.cfg))
    return torch.cat(out)


#: the loss counts the cells that hold objects this much more than the backdrop: what must be remembered
#: is a few tokens of the frame, and their error would otherwise drown in the backdrop's
OBJECT_WEIGHT = 8.0
#: decoys are copied once seen, but where the next ones land is unknowable: they weigh less than objects
DECOY_WEIGHT = 2.0


#: what weighs OBJECT_WEIGHT: every object's cell of an open frame, every cell of an open frame where no decoy
#: can land, or every object's cell of every frame, open or closed
OPEN_WEIGHTS = ("objects", "cells", "object_cells")


def salient_weights(clip, open_weight: str = "objects") -> torch.Tensor:
    """[1, F, h, w] loss weights over one clip's latents, from the world's labels: OBJECT_WEIGHT on every
    object's cell in every open frame (what must be remembered, and, where another group shows, must not be
    drawn: an object drawn there costs as much as one missed; ``open_weight="cells"``: on every cell of an
    open frame where no decoy can land, so an object invented on the backdrop costs as much too;
    ``"object_cells"``: on every object's cell of every frame, so an object drawn while the curtain is closed
    costs as much as one missed while it is open, and hedging towards showing it does not pay),
    DECOY_WEIGHT on decoys; passers, which no model can predict, weigh as the backdrop."""
    from .metrics import decoy_cells
    from .oracles import object_labels
    if open_weight not in OPEN_WEIGHTS:
        raise ValueError(f"open_weight must be one of {OPEN_WEIGHTS}, got {open_weight!r}")
    cfg = clip.cfg
    labels = object_labels(clip, cfg)
    if open_weight == "cells":
        watched = labels | (clip.visible[:, None] & ~decoy_cells(clip)[None, :])
    elif open_weight == "object_cells":
        watched = labels.any(dim=0)[None, :].expand_as(labels)
    else:
        watched = labels | (clip.visible[:, None] & labels.any(dim=0)[None, :])
    weight = 1 + (OBJECT_WEIGHT - 1) * watched.float()
    if clip.decoys is not None:
        weight = weight + (DECOY_WEIGHT - 1) * (clip.decoys & clip.visible[:, None]).float()
    return cells_to_latents(weight, cfg)


def cells_to_latents(per_cell: torch.Tensor, cfg: WorldConfig) -> torch.Tensor:
    """[F, cells] -> [1, F, h, w] in the latents' layout: one cell = 2x2 latent pixels."""
    return cells_to_grid(per_cell, cfg, 2).unsqueeze(0)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2 * weight).sum() / (weight.sum() * pred.shape[1])


def _sample_sigma(shape, gen, shift: float = 3.0) -> torch.Tensor:
    s = torch.rand(shape, generator=gen)
    return shift * s / (1 + (shift - 1) * s)


def teacher_loss(runner: WanChunkRunner, lat, ctx, weights, gen, device) -> torch.Tensor:
    b, _, f = lat.shape[:3]
    sigma = _sample_sigma((b,), gen).to(device)
    noise = torch.randn(lat.shape, generator=gen).to(device)
    x = (1 - sigma.view(b, 1, 1, 1, 1)) * lat + sigma.view(b, 1, 1, 1, 1) * noise
    offset = int(torch.randint(MAX_OFFSET, (1,), generator=gen))
    pred = runner.forward_full(x, sigma * TIMESTEP_SCALE, ctx, frame_offset=offset)
    return weighted_mse(pred, noise - lat, weights)


#: the student's view of the past, step by step in turn (``teacher_forcing_mask``): mostly all of it, sometimes
#: a window or a random subset (budgeted caches stay in distribution)
PAST_VIEWS = ("full", "full", "full", "window", "subset")


def teacher_forcing_mask(frames: int, chunk: int, tpf: int, gen, mode: str) -> torch.Tensor:
    """[2N, 2N] bool over [clean | noisy] tokens; ``mode`` cuts the noisy chunks' view of the past:
    'full', 'window' (the last few chunks), or 'subset' (a random share of older tokens)."""
    n = frames * tpf
    block = torch.arange(frames).repeat_interleave(tpf) // chunk
    bq, bk = block[:, None], block[None, :]
    clean_clean = bk <= bq
    noisy_clean = bk < bq
    if mode == "window":
        width = int(torch.randint(1, 4, (1,), generator=gen))
        noisy_clean &= bk >= bq - width
    elif mode == "subset":
        # as sparse as a 12.5% cache at 10x the clip, up to more than half of the past
        keep = torch.rand(n, generator=gen) < (0.02 + 0.58 * torch.rand((), generator=gen))
        noisy_clean &= keep[None, :] | (bk == bq - 1)          # the newest chunk is always kept
    noisy_noisy = bk == bq
    top = torch.cat([clean_clean, torch.zeros(n, n, dtype=torch.bool)], dim=1)
    bottom = torch.cat([noisy_clean, noisy_noisy], dim=1)
    return torch.cat([top, bottom], dim=0)


def student_loss(runner: WanChunkRunner, lat, ctx, weights, gen, device, sampler: SamplerConfig,
                 mode: str, own_context: bool = False, masks: torch.Tensor | None = None,
                 tail: int | None = None, past: torch.Tensor | None = None,
                 chunk_of_frame: torch.Tensor | None = None, ctx_past: torch.Tensor | None = None) -> torch.Tensor:
    """The one-pass teacher-forcing loss; ``masks`` [B, L, 2N, 2N] (``situation.situation_masks``: what a
    policy's cache held) replaces the view ``mode`` of the past, layer by layer. ``tail``: only the last
    ``tail`` frames are trained (their noisy copies; rounded down to whole chunks), over the whole clean clip: a
    long horizon at a bounded cost. ``past``: what the clean copies hold instead of ``lat`` (a free rollout's
    own frames), chunked as ``chunk_of_frame`` [F] says (default: whole chunks from frame 0). ``ctx_past``: the
    clean copies' conditioning instead of ``ctx`` (``slipped_schedule``)."""
    b, _, f, h, w = lat.shape
    chunk = sampler.chunk_frames
    if chunk_of_frame is None:
        chunk_of_frame = torch.arange(f) // chunk
    chunk_of_frame = chunk_of_frame.cpu()
    tail = whole_chunk_tail(f if tail is None else min(tail, f), chunk_of_frame)
    sigmas = torch.tensor(warp_timesteps(sampler.timesteps, sampler.shift))
    per_chunk = sigmas[torch.randint(len(sigmas), (b, int(chunk_of_frame[-1]) + 1), generator=gen)]
    sigma = per_chunk[:, chunk_of_frame].to(device)                              # [B, F]
    noise = torch.randn(lat.shape, generator=gen).to(device)
    s5 = sigma.view(b, 1, f, 1, 1)
    noisy = ((1 - s5) * lat + s5 * noise)[:, :, f - tail:]
    offset = int(torch.randint(MAX_OFFSET, (1,), generator=gen))
    tpf = runner.tokens_per_frame(h, w)
    mask = teacher_forcing_mask(f, chunk, tpf, gen, mode).to(device) if masks is None else masks
    if tail < f:                    # the clean clip, then the noisy copies of the tail frames only
        keep = torch.cat([torch.arange(f * tpf), torch.arange((2 * f - tail) * tpf, 2 * f * tpf)]).to(device)
        mask = mask.index_select(-2, keep).index_select(-1, keep)
    t_noisy = sigma[:, f - tail:] * TIMESTEP_SCALE
    context = lat if past is None else past
    if own_context and past is None:
        # the context as the model itself would have written it: its one-pass estimate of every chunk
        # (exposure bias: in a rollout the cache holds generated chunks, not the world's clean frames)
        with torch.no_grad():
            flow = teacher_forcing_forward(runner, lat, noisy, t_noisy, ctx, offset, mask, sampler.context_timestep,
                                          ctx_past)
            estimate = (noisy - s5[:, :, f - tail:] * flow).detach()
            context = torch.cat([lat[:, :, :f - tail], estimate], dim=2)
    pred = teacher_forcing_forward(runner, context, noisy, t_noisy, ctx, offset, mask, sampler.context_timestep,
                                  ctx_past)
    return weighted_mse(pred, (noise - lat)[:, :, f - tail:], weights[:, :, f - tail:])


def whole_chunk_tail(tail: int, chunk_of_frame: torch.Tensor) -> int:
    """``tail`` rounded down so that the last ``tail`` frames begin where a chunk does (``chunk_of_frame`` [F]):
    a chunk's noisy copies are denoised together, so a chunk is trained whole or not at all."""
    f = len(chunk_of_frame)
    first = f - tail
    while 0 < first < f and chunk_of_frame[first] == chunk_of_frame[first - 1]:
        first += 1
    return f - first


def teacher_forcing_forward(runner: WanChunkRunner, clean, noisy, t_noisy, ctx, offset, mask, t_ctx=0.0,
                            ctx_past=None):
    """One pass over [clean | noisy] with shared RoPE positions; returns the noisy half's flow [B, C, T, H, W].

    ``clean`` [B, C, F, H, W]; ``noisy`` [B, C, T, H, W] the copies of the last T <= F frames, at ``t_noisy``
    [B, T]; ``mask`` [(F + T) tpf, (F + T) tpf] for every layer and row, or [B, L, ...] per row and layer;
    ``ctx_past``: per-frame text for the clean copies that differs from the noisy copies' ``ctx``."""
    b, _, f = clean.shape[:3]
    tail = noisy.shape[2]
    tokens_c, grid = runner.patchify(clean)
    tokens_n, grid_n = runner.patchify(noisy)
    t = torch.cat([torch.full((b, f), float(t_ctx), device=clean.device), t_noisy], dim=1)
    e, e0 = runner.embed_time(t)
    cos, sin = runner.ops.rope_freqs(runner.model, offset, grid, clean.device)
    n_tail = tokens_n.shape[1]
    freqs = (torch.cat([cos, cos[-n_tail:]]), torch.cat([sin, sin[-n_tail:]]))
    cross = runner.cross_kv(runner.embed_text(ctx))
    if ctx.dim() == 4:              # text per frame: the clean and the noisy copy of a frame share it
        past = cross if ctx_past is None else runner.cross_kv(runner.embed_text(ctx_past))
        cross = [(torch.cat([kp, k[:, f - tail:]], dim=1), torch.cat([vp, v[:, f - tail:]], dim=1))
                 for (k, v), (kp, vp) in zip(cross, past)]
    elif ctx_past is not None:
        raise ValueError("ctx_past is per-frame conditioning: it needs a world whose schedule is conditioning")

    def attend(i, q, k, v, hid, k_raw):
        return runner.ops.attention(q, k, v, mask if mask.dim() == 2 else mask[:, i, None])

    x = runner.run_blocks(torch.cat([tokens_c, tokens_n], dim=1), e0, f + tail, freqs, cross, attend)
    n = tokens_c.shape[1]
    return runner.unpatchify(runner.final_head(x[:, n:], e[:, f:], tail), grid_n)


def own_rollout_targets(latents: torch.Tensor, clips, start: int, rule_targets: bool = False):
    """What a free rollout's step trains against: (targets [B, 16, F, h, w] or None, unknown [B, 1, F, h, w] bool
    in the weights' layout). Without ``rule_targets`` the targets stay the world's latents and the unknown cells
    are ``situation.unknowable_cells``; with them, ``situation.rule_frames``: an object the rollout drew in another
    colour returns in that colour, and only what its past cannot fix at all is unknown."""
    targets, unknown = [], []
    for row, clip in zip(latents, clips):
        frames = decode_frames(row.cpu())
        if rule_targets:
            target, cells = rule_frames(clip, frames, start)
            targets.append(encode_frames(target))
        else:
            cells = unknowable_cells(clip, frames, start)
        unknown.append(cells_to_latents(cells, clip.cfg))
    return (torch.stack(targets) if rule_targets else None), torch.stack(unknown)


def save_model(model: WanDiT, path: str, meta: dict) -> None:
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}
    meta_out = {"pafu_world": json.dumps(meta, sort_keys=True), "wan_config": json.dumps(model.config.to_dict())}
    if meta.get("kind") == "student":       # ComfyUI (0.27+) loads it as a causal-AR Wan
        meta_out["config"] = json.dumps({"transformer": {"causal_ar": True}})
    save_file(sd, path, metadata=meta_out)


@dataclass(frozen=True)
class Situation:
    """Student steps trained in the situation of inference (``situation.py``): every ``every``-th step's past is
    what a policy drawn from ``policies`` kept at a budget drawn uniformly from ``budgets`` (fractions of the
    world's clip; 0: never); ``head`` serves the ``pafu`` policy. Every ``free_every``-th of those steps rolls
    out freely from the world's first ``free_from`` frames (0: all watched): its past is the student's own, and with
    ``rule_targets`` an object the rollout drew in another colour returns in that colour (the world's rule applied
    to the rollout's past) instead of weighing nothing."""

    every: int = 0
    policies: tuple[str, ...] = SITUATION_POLICIES
    head: str | None = None
    budgets: tuple[float, float] = BUDGET_RANGE
    free_every: int = 0
    free_from: int = 1
    rule_targets: bool = False

    def __post_init__(self):
        lo, hi = self.budgets
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"--situation-budgets {lo:g},{hi:g} must be two fractions 0 < low <= high <= 1")
        if self.free_every and not self.every:
            raise ValueError("--situation-free-every needs situation steps (--situation-every)")
        if self.free_every and self.free_from < 1:
            raise ValueError("a free rollout starts from at least the world's first frame (--situation-free-from 1)")
        if self.rule_targets and not self.free_every:
            raise ValueError("--situation-rule-targets needs free rollouts (--situation-free-every)")
        if "pafu" in self.policies and self.every and self.head is None:
            raise ValueError("the pafu policy in the situation mixture needs a head (--situation-head)")

    def is_free(self, step: int) -> bool:
        return bool(self.free_every) and step % (self.every * self.free_every) == 0


def save_checkpoint(path: str, model: WanDiT, opt, sched, step: int, gen: torch.Generator, meta: dict) -> None:
    """Everything a run needs to go on from ``step``: weights in float32, the optimiser's moments, the schedule,
    the loss generator's state; one safetensors file (no pickle), written whole or not at all."""
    from safetensors.torch import save_file
    tensors = {f"model.{k}": v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    state = opt.state_dict()
    for i, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"opt.{i}.{key}"] = torch.as_tensor(value).float().reshape(-1) if key == "step" else value.cpu()
    tensors["rng.loss"] = gen.get_state()
    info = {"step": step, "sched": sched.state_dict(), "param_groups": state["param_groups"], "run": meta,
            "wan_config": model.config.to_dict()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path + ".tmp", metadata={"pafu_checkpoint": json.dumps(info, sort_keys=True, default=str)})
    os.replace(path + ".tmp", path)


def load_checkpoint(path: str, model: WanDiT, opt, sched, gen: torch.Generator) -> tuple[int, dict]:
    """Restore what ``save_checkpoint`` wrote; returns the step to go on from and the run's metadata."""
    from safetensors import safe_open
    with safe_open(path, "pt") as fh:
        raw = (fh.metadata() or {}).get("pafu_checkpoint")
        if raw is None:
            raise ValueError(f"{path} is not a training checkpoint of pafu_lab.world.train (no pafu_checkpoint "
                             "metadata); --resume takes the file that --checkpoint wrote")
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    info = json.loads(raw)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state = {"state": {}, "param_groups": info["param_groups"]}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, key = k.split(".", 2)
            state["state"].setdefault(int(i), {})[key] = v.reshape(()) if key == "step" else v
    opt.load_state_dict(state)
    sched.load_state_dict(info["sched"])
    gen.set_state(tensors["rng.loss"])
    return int(info["step"]), info["run"]


def grow_layers(model: WanDiT, layers: int, seed: int = 0) -> WanDiT:
    """``model`` with blocks appended up to ``layers`` (more capacity from trained weights): each new block starts
    as an identity (its self-attention, cross-attention and FFN outputs zeroed, its inputs random), so the grown
    model computes exactly what ``model`` did until training moves it."""
    have = model.config.num_layers
    if layers < have:
        raise ValueError(f"--layers {layers} is fewer than the {have} blocks of the --init model (growing only adds)")
    grown = init_weights_(WanDiT(replace(model.config, num_layers=layers)), seed=seed)
    grown.load_state_dict(model.state_dict(), strict=False)                  # every old block, embedding, head
    with torch.no_grad():
        for blk in grown.blocks[have:]:
            for out in (blk.self_attn.o, blk.cross_attn.o, blk.ffn[2]):
                out.weight.zero_()
                out.bias.zero_()
    return grown.to(next(model.parameters()).dtype)


def _fresh_student(seed: int) -> WanDiT:
    model = init_weights_(WanDiT(TINY_WAN), seed=seed)
    with torch.no_grad():      # start as a near-identity residual stack (stable small-data training)
        for blk in model.blocks:
            blk.modulation.mul_(0.1)
            blk.self_attn.o.weight.mul_(0.1)
            blk.cross_attn.o.weight.mul_(0.1)
            blk.ffn[2].weight.mul_(0.1)
    return model


def train(kind: str, steps: int, batch: int, lr: float, seed: int, device: str, out: str,
          init: str | None = None, log_every: int = 50, own_context: int = 0, world: WorldConfig = DEFAULT_WORLD,
          frames: int | None = None, views: tuple[str, ...] = PAST_VIEWS, open_weight: str = "objects",
          situation: Situation = Situation(), checkpoint: str | None = None, resume: str | None = None,
          save_every: int = 100, max_minutes: float | None = None, tail: int | None = None,
          layers: int | None = None, schedule_slips: float = 0.0) -> dict:
    """Train ``steps`` steps (or go on from ``resume``, a ``checkpoint`` an earlier run of the same command
    wrote); stops early, checkpoint and weights written, after ``max_minutes``. ``schedule_slips``: the share of
    the clean copies' frames whose schedule token is misread (``slipped_schedule``). Returns the run's metadata."""
    if not 0 <= schedule_slips < 1:
        raise ValueError(f"schedule_slips must lie in [0, 1), got {schedule_slips}")
    if schedule_slips and not world.schedule_conditioning:
        raise ValueError(f"the {world.name} world gives no schedule as conditioning: there is no schedule to slip")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = load_wan_checkpoint(init) if init else _fresh_student(seed)
    if layers is not None:
        model = grow_layers(model, layers, seed)
    model = model.to(device).train()
    runner = WanChunkRunner(model, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    sampler = SamplerConfig()
    if tail is not None and tail % sampler.chunk_frames:
        raise ValueError(f"--tail-frames {tail} must be a whole number of chunks ({sampler.chunk_frames} frames each)")
    modes = tuple(views)
    run = {"kind": kind, "steps": steps, "batch": batch, "lr": lr, "seed": seed, "device": device,
           "init": os.path.basename(init) if init else None, "own_context": own_context, "world": world.__dict__,
           "frames": frames or world.clip_frames, "tail": tail, "views": list(modes), "open_weight": open_weight,
           "situation": {"every": situation.every, "policies": list(situation.policies),
                         "head": os.path.basename(situation.head) if situation.head else None,
                         "budgets": list(situation.budgets),
                         **({"free_every": situation.free_every, "free_from": situation.free_from}
                            if situation.free_every else {}),
                         **({"rule_targets": True} if situation.rule_targets else {})},
           "runs": [], "history": []}
    if layers is not None:
        run["layers"] = layers
    if schedule_slips:
        run["schedule_slips"] = schedule_slips
    first = 0
    if resume:
        first, earlier = load_checkpoint(resume, model, opt, sched, gen)
        fixed = ("kind", "steps", "batch", "lr", "seed", "own_context", "frames", "tail", "views", "open_weight",
                 "situation", "layers", "schedule_slips")
        changed = [k for k in fixed if json.dumps(earlier.get(k), sort_keys=True) != json.dumps(run.get(k), sort_keys=True)]
        if changed:
            raise ValueError(f"--resume {resume} was written by a run with other {', '.join(changed)}; resume with "
                             "the command that wrote it (only --max-minutes, --checkpoint and --out may differ)")
        run["runs"], run["history"] = earlier.get("runs", []), earlier.get("history", [])
    head = None
    if situation.every and "pafu" in situation.policies:
        from pafu_core.salience import load_head
        head = load_head(situation.head, device=device)
        head.check_backbone(runner)     # e.g. a head of 4 layers for a student grown by --layers
    bar = tqdm(total=steps, initial=first, desc=f"train {kind}", mininterval=5)
    t0 = time.perf_counter()
    running, done = [], first
    for step in range(first, steps):
        in_situation = kind == "student" and situation.every and step % situation.every == 0
        lat, ctx, weights, clips = world_batch(step, batch, seed, world, frames, open_weight, with_clips=True)
        lat, ctx, weights = lat.to(device), ctx.to(device), weights.to(device)
        if kind == "teacher":
            loss = teacher_loss(runner, lat, ctx, weights, gen, device)
        else:
            masks = past = chunks = None
            if in_situation:
                name, fraction = draw_situation(step, seed, situation.policies, situation.budgets)
                policy = build_policy(name, clips, head=head, seed=seed * 100_003 + step)
                free = situation.free_from if situation.is_free(step) else 0
                noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(seed * 104_729 + step)) \
                    if free else None
                model.eval()
                kept = policy_rollout(runner, policy, situation_budget(name, fraction, world.clip_frames), ctx, lat,
                                      sampler, free_from=free, noise=None if noise is None else noise.to(device))
                model.train()
                masks = situation_masks(kept, runner.tokens_per_frame(*lat.shape[-2:]))
                if free:            # its own past; an object it cannot know from that past weighs nothing
                    past, chunks = kept.latents, kept.chunk_of_frame
                    targets, unknown = own_rollout_targets(kept.latents, clips, free, situation.rule_targets)
                    weights = weights * ~unknown.to(device)
                    if targets is not None:
                        lat = targets.to(device)
            own = own_context > 0 and step % own_context == 0
            ctx_past = slipped_schedule(clips, schedule_slips, torch.Generator().manual_seed(seed * 7_919 + step)) \
                .to(device) if schedule_slips else None
            loss = student_loss(runner, lat, ctx, weights, gen, device, sampler, modes[step % len(modes)], own,
                                masks=masks, tail=tail, past=past, chunk_of_frame=chunks, ctx_past=ctx_past)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(loss.detach())
        done = step + 1
        if done % log_every == 0 or done == steps:
            mean = float(torch.stack(running).mean())
            running = []
            run["history"].append((done, mean))
            bar.set_postfix(loss=f"{mean:.4f}")
        bar.update()
        out_of_time = max_minutes is not None and (time.perf_counter() - t0) / 60 >= max_minutes
        if checkpoint and (done % save_every == 0 or done == steps or out_of_time):
            save_checkpoint(checkpoint, model, opt, sched, done, gen, run)
        if out_of_time:
            break
    bar.close()
    minutes = round((time.perf_counter() - t0) / 60, 1)
    run["runs"].append({"from_step": first, "to_step": done, "minutes": minutes, "threads": torch.get_num_threads()})
    if checkpoint:
        save_checkpoint(checkpoint, model, opt, sched, done, gen, run)
    meta = {k: v for k, v in run.items() if k != "history"}
    meta.update(final_loss=run["history"][-1][1] if run["history"] else None, minutes=minutes, step=done,
                history=run["history"])
    save_model(model, out, meta)
    return meta


def main(argv=None) -> None:
    p = Parser(prog="python -m pafu_lab.world.train", description=__doc__)
    p.add_argument("kind", choices=("teacher", "student"))
    p.add_argument("--steps", type=positive_int, default=1500)
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=torch_device, default="cpu")
    p.add_argument("--init", type=existing_file, help="checkpoint to start from (the student starts from the teacher)")
    p.add_argument("--own-context", type=nonneg_int, default=0,
                   help="every N-th student step conditions on the model's own chunk estimates (0: never)")
    p.add_argument("--layers", type=positive_int, default=None,
                   help="grow the --init model to this many blocks, the new ones appended as identities (more "
                        "capacity from trained weights; default: as --init)")
    p.add_argument("--world", choices=sorted(WORLDS), default=DEFAULT_WORLD.name)
    p.add_argument("--frames", type=positive_int, default=None,
                   help="training clip length in latent frames (default: the world's clip; budgets keep that reference)")
    p.add_argument("--views", type=list_of(one_of(("full", "window", "subset"), "view of the past")),
                   default=list(PAST_VIEWS), help="the student's view of the past, step by step in turn "
                   f"(default: {','.join(PAST_VIEWS)})")
    p.add_argument("--open-weight", type=one_of(OPEN_WEIGHTS, "open weight"), default="objects",
                   help="what the loss weighs like an object: every object's cell of an open frame (objects), every "
                        "cell of an open frame where no decoy can land (cells), or every object's cell of every "
                        "frame, the curtain closed too (object_cells)")
    p.add_argument("--tail-frames", type=positive_int, default=None,
                   help="train only the last N frames' noisy copies, over the whole clean clip (long clips at a "
                        "bounded cost; default: every frame)")
    p.add_argument("--situation-every", type=nonneg_int, default=0,
                   help="every N-th student step reads what a policy's budgeted cache kept (the situation of "
                        "inference; 0: never)")
    p.add_argument("--situation-policies", type=list_of(one_of(SITUATION_POLICIES, "situation policy")),
                   default=[n for n in SITUATION_POLICIES if n not in ("pafu", "keep_all")],
                   help="the policies those steps draw from (pafu needs --situation-head)")
    p.add_argument("--situation-head", type=existing_file, default=None, help="the salience head of the pafu policy")
    p.add_argument("--situation-budgets", type=list_of(fraction_of(DEFAULT_WORLD.clip_frames, "world's clip")),
                   default=list(BUDGET_RANGE), help="the range those steps draw budgets from, LOW,HIGH as fractions "
                   f"of the world's clip (default: {BUDGET_RANGE[0]:g},{BUDGET_RANGE[1]:g})")
    p.add_argument("--situation-free-every", type=nonneg_int, default=0,
                   help="every N-th situation step generates freely from the world's first frames instead of "
                        "watching (own-rollout context; 0: never)")
    p.add_argument("--situation-free-from", type=positive_int, default=1,
                   help="the world's first latent frames a free rollout starts from (default 1, as free generation)")
    p.add_argument("--situation-rule-targets", action="store_true",
                   help="in a free rollout's step, an object whose latest showing the rollout drew in another colour "
                        "returns in that colour (the world's rule on the rollout's own past) instead of weighing "
                        "nothing")
    p.add_argument("--schedule-slips", type=float, default=0.0,
                   help="share of the past frames whose schedule token the cache's copies read wrong, the frames "
                        "being trained keeping theirs: the past disagrees with its schedule as a free rollout's "
                        "own past does, and the student learns to follow the schedule it is given (default 0)")
    p.add_argument("--checkpoint", default=None,
                   help="write the run's state here every --save-every steps and at the end (for --resume)")
    p.add_argument("--save-every", type=positive_int, default=100)
    p.add_argument("--resume", type=existing_file, default=None,
                   help="go on from a checkpoint that the same command wrote (its step, optimiser and schedule)")
    p.add_argument("--max-minutes", type=positive_float, default=None,
                   help="stop after this many minutes, checkpoint and weights written (resume to go on)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    output_file(args.out, "--out")
    if args.checkpoint:
        output_file(args.checkpoint, "--checkpoint")
    if args.init:                   # a wrong file is refused before any training step
        load_wan_checkpoint(args.init)  # (a --layers below its depth: grow_layers refuses it, before any step)
    elif args.layers is not None:
        p.error("--layers grows a trained model: give it --init")
    if len(args.situation_budgets) != 2:
        p.error(f"--situation-budgets takes two fractions, LOW,HIGH (got {len(args.situation_budgets)})")
    world = WORLDS[args.world]
    low = args.situation_budgets[0]
    for name in sorted(set(args.situation_policies) - {"keep_all"}) if args.situation_every else ():
        budget = situation_budget(name, low, world.clip_frames)     # the smallest one that policy will meet
        try:
            check_fits(budget.tokens(world.cells), SamplerConfig().chunk_frames, world.cells, budget.sink_frames)
        except ValueError as err:
            p.error(f"--situation-budgets {low:g} for {name}: {err}")
    if not 0 <= args.schedule_slips < 1:
        p.error(f"--schedule-slips must lie in [0, 1), got {args.schedule_slips:g}")
    if args.schedule_slips and not world.schedule_conditioning:
        p.error(f"--schedule-slips: the {world.name} world gives no schedule as conditioning (use --world recall)")
    try:
        situation = Situation(args.situation_every, tuple(args.situation_policies), args.situation_head,
                              tuple(args.situation_budgets), args.situation_free_every, args.situation_free_from,
                              args.situation_rule_targets)
    except ValueError as err:
        p.error(str(err))
    meta = train(args.kind, args.steps, args.batch, args.lr, args.seed, args.device, args.out, args.init,
                 own_context=args.own_context, world=world, frames=args.frames, views=tuple(args.views),
                 open_weight=args.open_weight, situation=situation, checkpoint=args.checkpoint, resume=args.resume,
                 save_every=args.save_every, max_minutes=args.max_minutes, tail=args.tail_frames, layers=args.layers,
                 schedule_slips=args.schedule_slips)
    print(json.dumps({k: v for k, v in meta.items() if k != "history"}, indent=1))


if __name__ == "__main__":
    run_cli(main)
