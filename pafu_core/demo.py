"""README main job: a long tiny-world video under every policy at the same budget.

    python -m pafu_core.demo                      # 360 latent frames (10x the training clip), 25% budget
    python -m pafu_core.demo --frames 72 --out /tmp/pafu-demo

Writes, into ``--out``: one GIF per policy, ``side_by_side.gif`` (keep-all | FIFO | sink+window |
PaFu | ...), ``curves.png`` (K/V held and chunk time vs frame), ``kept_tokens_pafu.gif`` and
``results.md`` (the table printed at the end). Uses only the committed weights; no download.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from .plots import render_curves, render_token_heatmaps
from .progress import Progress
from .world.evaluate import BUDGETED, compare_to_reference, load_world_models, rollouts, table
from .world.scenes import DEFAULT_WORLD, STYLE_NAMES


def to_uint8(frames: torch.Tensor, scale: int) -> np.ndarray:
    """[F, 3, H, W] in [-1, 1] -> [F, H*scale, W*scale, 3] uint8."""
    x = ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    return x.permute(0, 2, 3, 1).numpy()


def save_gif(frames: np.ndarray, path: str, fps: int = 12) -> None:
    imgs = [Image.fromarray(f) for f in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)


def side_by_side(videos: dict[str, np.ndarray]) -> np.ndarray:
    """Policies next to each other, each with its name above it."""
    label_h, gap = 14, 4
    f, h, w, _ = next(iter(videos.values())).shape
    out = np.full((f, h + label_h, len(videos) * (w + gap) - gap, 3), 255, dtype=np.uint8)
    banner = Image.new("RGB", (out.shape[2], label_h), (255, 255, 255))
    draw = ImageDraw.Draw(banner)
    for i, (name, vid) in enumerate(videos.items()):
        x = i * (w + gap)
        out[:, label_h:, x:x + w] = vid
        draw.text((x + 2, 1), name, fill=(0, 0, 0))
    out[:, :label_h] = np.asarray(banner)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=10 * DEFAULT_WORLD.clip_frames, help="latent frames to generate")
    p.add_argument("--budget", type=float, default=0.25, help="fraction of the training clip's frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", choices=STYLE_NAMES, default="blue")
    p.add_argument("--policies", default=",".join(("fifo", "sink_window", "pafu", "pafu+recency", "attention_mass")),
                   help=f"budgeted policies to compare with keep-all (any of {', '.join(BUDGETED)})")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--scale", type=int, default=6, help="pixel upscale of the 16x16 frames in the GIFs")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    policies = ["keep_all"] + [q for q in args.policies.split(",") if q]
    unknown = [q for q in policies[1:] if q not in BUDGETED]
    if unknown:
        raise SystemExit(f"unknown policies: {unknown}; choose from {', '.join(BUDGETED)}")

    with torch.no_grad():              # local: leaves the caller's grad mode alone
        run_demo(args, policies)


def run_demo(args, policies: list[str]) -> None:
    student, head = load_world_models()
    style = STYLE_NAMES.index(args.style)
    chunks = -(-args.frames // 3)
    bar = Progress(len(policies) * chunks, f"demo ({args.frames} frames x {len(policies)} policies)")
    rolls = [rollouts(student, head, name, args.budget, args.seed, args.frames, [style],
                      chunk_callback=lambda stats, x0: bar.update())[0] for name in policies]
    compare_to_reference(rolls[1:], rolls[:1])

    videos = {}
    for r in rolls:
        vid = to_uint8(r.frames, args.scale)
        save_gif(vid, os.path.join(args.out, f"{r.policy}.gif"))
        videos[r.policy] = vid
    save_gif(side_by_side(videos), os.path.join(args.out, "side_by_side.gif"))
    Image.fromarray(render_curves([r.report for r in rolls])).save(os.path.join(args.out, "curves.png"))
    pafu = next((r for r in rolls if r.policy == "pafu"), None)
    if pafu is not None:
        frames01 = ((pafu.frames + 1) / 2).permute(0, 2, 3, 1).repeat_interleave(args.scale, 1).repeat_interleave(args.scale, 2)
        kept = render_token_heatmaps(pafu.report, pafu.report.grid_hw, frames01)
        save_gif((kept.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), os.path.join(args.out, "kept_tokens_pafu.gif"))

    text = (f"tiny world, {args.frames} latent frames ({args.frames / DEFAULT_WORLD.clip_frames:g}x the training clip), "
            f"budget {100 * args.budget:g}% of {DEFAULT_WORLD.clip_frames} frames, seed {args.seed}, style {args.style}\n\n"
            + table(rolls))
    with open(os.path.join(args.out, "results.md"), "w") as fh:
        fh.write(text + "\n")
    print(text)
    print(f"\nwrote {args.out}/: side_by_side.gif, curves.png, kept_tokens_pafu.gif, results.md, "
          f"{', '.join(r.policy + '.gif' for r in rolls)}")


if __name__ == "__main__":
    main()
