"""Write tiny-world clips for the distillation tool: ground-truth clips and the scene contexts.

    python -m pafu_lab.world.clips --out runs/world_clips.safetensors --clips 48

``latents`` [N, 16, F, 8, 8] are the world's own clips (phase 0: each starts with a scene), so the
teacher sees what the world really does; ``context`` [N, L, 4096] their style embeddings (per frame,
[N, F, L, 4096], in a world whose schedule is conditioning).
``python -m pafu_lab.distill --clips ...`` reads this file.
"""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import save_file

from pafu_core.world.codec import encode_frames
from pafu_core.world.scenes import DEFAULT_WORLD, WORLDS, WorldConfig, render_clip


def world_clips(n: int, frames: int, seed: int = 2024, cfg: WorldConfig = DEFAULT_WORLD) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` clips: latents [n, 16, F, 8, 8] and their conditioning [n, L, D] (per frame, [n, F, L, D], in a
    world whose schedule is conditioning)."""
    lat, ctx = [], []
    for i in range(n):
        clip = render_clip(seed * 100_003 + i, frames, style=i % cfg.num_styles, cfg=cfg)
        lat.append(encode_frames(clip.frames))
        ctx.append(clip.context)
    return torch.stack(lat), torch.cat(ctx)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--frames", type=int, default=DEFAULT_WORLD.clip_frames)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--world", choices=sorted(WORLDS), default=DEFAULT_WORLD.name)
    args = p.parse_args(argv)
    lat, ctx = world_clips(args.clips, args.frames, args.seed, WORLDS[args.world])
    save_file({"latents": lat.contiguous(), "context": ctx.contiguous()}, args.out)
    print(f"wrote {args.out}: latents {tuple(lat.shape)}, context {tuple(ctx.shape)}")


if __name__ == "__main__":
    main()
