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

import torch
from tqdm.auto import tqdm

from pafu_core.adapter import WanChunkRunner
from pafu_core.cli import (Parser, existing_file, list_of, nonneg_int, one_of, output_file, positive_float, positive_int,
                           run_cli, torch_device)
from pafu_core.sampler import TIMESTEP_SCALE, SamplerConfig, warp_timesteps
from pafu_core.wan import WanConfig, WanDiT, init_weights_, load_wan_checkpoint
from pafu_core.world.codec import encode_frames
from pafu_core.world.scenes import DEFAULT_WORLD, WORLDS, WorldConfig, render_clip

TINY_WAN = WanConfig(dim=128, ffn_dim=384, num_heads=1, num_layers=4)
MAX_OFFSET = 10 * DEFAULT_WORLD.clip_frames        # demo length: 10x the training clip


def world_batch(step: int, batch: int, seed: int, cfg: WorldConfig = DEFAULT_WORLD, frames: int | None = None,
                open_weight: str = "objects"):
    """Clips at random phases and styles: latents [B, 16, F, 8, 8] and contexts [B, L, 4096] (per frame,
    [B, F, L, 4096], in a world whose schedule is conditioning)."""
    frames = frames or cfg.clip_frames
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    lat, ctx, weights = [], [], []
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
    return torch.stack(lat), torch.cat(ctx), torch.stack(weights)


#: the loss counts the cells that hold objects this much more than the backdrop: what must be remembered
#: is a few tokens of the frame, and their error would otherwise drown in the backdrop's
OBJECT_WEIGHT = 8.0
#: decoys are copied once seen, but where the next ones land is unknowable: they weigh less than objects
DECOY_WEIGHT = 2.0


#: what of an open frame weighs OBJECT_WEIGHT: every object's cell, or every cell where no decoy can land
OPEN_WEIGHTS = ("objects", "cells")


def salient_weights(clip, open_weight: str = "objects") -> torch.Tensor:
    """[1, F, h, w] loss weights over one clip's latents, from the world's labels: OBJECT_WEIGHT on every
    object's cell in every open frame (what must be remembered, and, where another group shows, must not be
    drawn: an object drawn there costs as much as one missed; ``open_weight="cells"``: on every cell of an
    open frame where no decoy can land, so an object invented on the backdrop costs as much too),
    DECOY_WEIGHT on decoys; passers, which no model can predict, weigh as the backdrop."""
    from .metrics import decoy_cells
    from .oracles import object_labels
    if open_weight not in OPEN_WEIGHTS:
        raise ValueError(f"open_weight must be one of {OPEN_WEIGHTS}, got {open_weight!r}")
    cfg = clip.cfg
    labels = object_labels(clip, cfg)
    if open_weight == "cells":
        watched = labels | (clip.visible[:, None] & ~decoy_cells(clip)[None, :])
    else:
        watched = labels | (clip.visible[:, None] & labels.any(dim=0)[None, :])
    weight = 1 + (OBJECT_WEIGHT - 1) * watched.float()
    if clip.decoys is not None:
        weight = weight + (DECOY_WEIGHT - 1) * (clip.decoys & clip.visible[:, None]).float()
    weight = weight.view(-1, cfg.grid, cfg.grid)
    return weight.repeat_interleave(2, -1).repeat_interleave(2, -2).unsqueeze(0)  # one cell = 2x2 latent pixels


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
                 mode: str, own_context: bool = False) -> torch.Tensor:
    b, _, f, h, w = lat.shape
    chunk = sampler.chunk_frames
    sigmas = torch.tensor(warp_timesteps(sampler.timesteps, sampler.shift))
    per_chunk = sigmas[torch.randint(len(sigmas), (b, math.ceil(f / chunk)), generator=gen)]
    sigma = per_chunk.repeat_interleave(chunk, dim=1)[:, :f].to(device)          # [B, F]
    noise = torch.randn(lat.shape, generator=gen).to(device)
    s5 = sigma.view(b, 1, f, 1, 1)
    noisy = (1 - s5) * lat + s5 * noise
    offset = int(torch.randint(MAX_OFFSET, (1,), generator=gen))
    tpf = runner.tokens_per_frame(h, w)
    mask = teacher_forcing_mask(f, chunk, tpf, gen, mode).to(device)
    context = lat
    if own_context:
        # the context as the model itself would have written it: its one-pass estimate of every chunk
        # (exposure bias: in a rollout the cache holds generated chunks, not the world's clean frames)
        with torch.no_grad():
            flow = teacher_forcing_forward(runner, lat, noisy, sigma * TIMESTEP_SCALE, ctx, offset, mask, sampler.context_timestep)
            context = (noisy - s5 * flow).detach()
    pred = teacher_forcing_forward(runner, context, noisy, sigma * TIMESTEP_SCALE, ctx, offset, mask, sampler.context_timestep)
    return weighted_mse(pred, noise - lat, weights)


def teacher_forcing_forward(runner: WanChunkRunner, clean, noisy, t_noisy, ctx, offset, mask, t_ctx=0.0):
    """One pass over [clean | noisy] with shared RoPE positions; returns the noisy half's flow."""
    b, _, f = clean.shape[:3]
    tokens_c, grid = runner.patchify(clean)
    tokens_n, _ = runner.patchify(noisy)
    t = torch.cat([torch.full((b, f), float(t_ctx), device=clean.device), t_noisy], dim=1)
    e, e0 = runner.embed_time(t)
    cos, sin = runner.ops.rope_freqs(runner.model, offset, grid, clean.device)
    freqs = (torch.cat([cos, cos]), torch.cat([sin, sin]))
    cross = runner.cross_kv(runner.embed_text(ctx))
    if ctx.dim() == 4:              # text per frame: the clean and the noisy copy of a frame share it
        cross = [(torch.cat([k, k], dim=1), torch.cat([v, v], dim=1)) for k, v in cross]

    def attend(i, q, k, v, hid, k_raw):
        return runner.ops.attention(q, k, v, mask)

    x = runner.run_blocks(torch.cat([tokens_c, tokens_n], dim=1), e0, 2 * f, freqs, cross, attend)
    n = tokens_c.shape[1]
    return runner.unpatchify(runner.final_head(x[:, n:], e[:, f:], f), grid)


def save_model(model: WanDiT, path: str, meta: dict) -> None:
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}
    meta_out = {"pafu_world": json.dumps(meta, sort_keys=True), "wan_config": json.dumps(model.config.to_dict())}
    if meta.get("kind") == "student":       # ComfyUI (0.27+) loads it as a causal-AR Wan
        meta_out["config"] = json.dumps({"transformer": {"causal_ar": True}})
    save_file(sd, path, metadata=meta_out)


def train(kind: str, steps: int, batch: int, lr: float, seed: int, device: str, out: str,
          init: str | None = None, log_every: int = 50, own_context: int = 0, world: WorldConfig = DEFAULT_WORLD,
          frames: int | None = None, views: tuple[str, ...] = PAST_VIEWS, open_weight: str = "objects") -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if init:
        model = load_wan_checkpoint(init)
    else:
        model = init_weights_(WanDiT(TINY_WAN), seed=seed)
        with torch.no_grad():      # start as a near-identity residual stack (stable small-data training)
            for blk in model.blocks:
                blk.modulation.mul_(0.1)
                blk.self_attn.o.weight.mul_(0.1)
                blk.cross_attn.o.weight.mul_(0.1)
                blk.ffn[2].weight.mul_(0.1)
    model = model.to(device).train()
    runner = WanChunkRunner(model, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    sampler = SamplerConfig()
    modes = tuple(views)
    history = []
    bar = tqdm(total=steps, desc=f"train {kind}", mininterval=5)
    t0 = time.perf_counter()
    running = []
    for step in range(steps):
        lat, ctx, weights = (t.to(device) for t in world_batch(step, batch, seed, world, frames, open_weight))
        if kind == "teacher":
            loss = teacher_loss(runner, lat, ctx, weights, gen, device)
        else:
            own = own_context > 0 and step % own_context == 0
            loss = student_loss(runner, lat, ctx, weights, gen, device, sampler, modes[step % len(modes)], own)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(loss.detach())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            mean = float(torch.stack(running).mean())
            running = []
            history.append((step + 1, mean))
            bar.set_postfix(loss=f"{mean:.4f}")
        bar.update()
    bar.close()
    meta = {"kind": kind, "steps": steps, "batch": batch, "lr": lr, "seed": seed, "device": device,
            "init": os.path.basename(init) if init else None, "own_context": own_context, "final_loss": history[-1][1],
            "minutes": round((time.perf_counter() - t0) / 60, 1), "world": world.__dict__,
            "frames": frames or world.clip_frames, "views": list(modes), "open_weight": open_weight}
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
    p.add_argument("--world", choices=sorted(WORLDS), default=DEFAULT_WORLD.name)
    p.add_argument("--frames", type=positive_int, default=None,
                   help="training clip length in latent frames (default: the world's clip; budgets keep that reference)")
    p.add_argument("--views", type=list_of(one_of(("full", "window", "subset"), "view of the past")),
                   default=list(PAST_VIEWS), help="the student's view of the past, step by step in turn "
                   f"(default: {','.join(PAST_VIEWS)})")
    p.add_argument("--open-weight", type=one_of(OPEN_WEIGHTS, "open weight"), default="objects",
                   help="what of an open frame the loss weighs like an object: every object's cell (objects), or "
                        "every cell where no decoy can land (cells)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    output_file(args.out, "--out")
    if args.init:                   # a wrong file is refused before any training step
        load_wan_checkpoint(args.init)
    meta = train(args.kind, args.steps, args.batch, args.lr, args.seed, args.device, args.out, args.init,
                 own_context=args.own_context, world=WORLDS[args.world], frames=args.frames, views=tuple(args.views),
                 open_weight=args.open_weight)
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    run_cli(main)
