"""Clips a head learns from by watching real videos instead of the model's own rollouts.

A head learns what a watched cache should keep best from the model watching real footage: on the tiny
world's tuning seed a head distilled from the world's own clips scores 0.53 at 25%, one distilled with the
same recipe from the model's own rollouts 0.15-0.27 (docs/results.md). Each prompt of the list may carry a
batch of video latents of that prompt; the clips are those videos, the held-out prompts' videos first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .rollouts import Clip


def held_out_prompts(count: int) -> int:
    """How many prompts, at the end of a list of ``count``, are held out (a single prompt serves both)."""
    return max(1, count // 4) if count >= 2 else 0


def check_videos(videos: Sequence[torch.Tensor | None], frames: int, latent_size: tuple[int, int],
                 channels: int) -> None:
    """Refuse, in one sentence, videos the run cannot watch: some prompts with videos and some without, a
    batch that is not [N, C, F, H, W] latents of the model's channels and the latent's size, or clips
    shorter than ``frames`` latent frames."""
    given = [v is not None for v in videos]
    if any(given) and not all(given):
        missing = ", ".join(str(i + 1) for i, g in enumerate(given) if not g)
        raise ValueError(f"prompts {missing} have no videos while others do: give every prompt its videos, or none "
                         "(the model then rolls every prompt out itself)")
    for i, v in enumerate(videos):
        if v is None:
            continue
        if v.dim() != 5 or v.shape[1] != channels or tuple(v.shape[-2:]) != tuple(latent_size):
            raise ValueError(f"the videos of prompt {i + 1} are latents of shape {tuple(v.shape)}; the model needs "
                             f"[N, {channels}, F, {latent_size[0]}, {latent_size[1]}] (VAE Encode videos of the "
                             "latent's size)")
        if v.shape[2] < frames:
            raise ValueError(f"the videos of prompt {i + 1} have {v.shape[2]} latent frames, fewer than the "
                             f"{frames}-frame clips: lower clip_frames or give longer videos")


def watched_counts(videos: Sequence[torch.Tensor]) -> tuple[int, int]:
    """(clips, held out) of a watched run: every video one clip; held out are the held-out prompts' videos
    (with one prompt: the first quarter of its videos, at least one)."""
    total = sum(len(v) for v in videos)
    held = held_out_prompts(len(videos))
    return total, sum(len(v) for v in videos[len(videos) - held:]) if held else max(1, total // 4)


def watched_clips(contexts: Sequence[torch.Tensor], videos: Sequence[torch.Tensor], frames: int
                  ) -> tuple[list[Clip], int]:
    """Every video as a clip of its first ``frames`` latent frames with its prompt, the held-out prompts'
    videos first, and how many clips are held out (with one prompt: the first quarter of its videos).

    Args:
        contexts: per prompt [1, L, text_dim].
        videos: per prompt [N_p, C, F_p, H, W] latents, F_p >= frames.
    Returns:
        clips (latents [1, C, frames, H, W] on the CPU), held-out count.
    """
    held = held_out_prompts(len(contexts))
    order = list(range(len(contexts) - held, len(contexts))) + list(range(len(contexts) - held))
    clips = [Clip(v[None, :, :frames].float().cpu(), contexts[p].cpu()) for p in order for v in videos[p]]
    return clips, watched_counts(videos)[1]
