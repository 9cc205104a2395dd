"""Pictures of rollouts: charts drawn with matplotlib (Agg, no display), token maps as images.

``render_curves``: cache memory and chunk time against the frame index, one line per rollout, the
budget marked (the report node and the demo). ``render_token_heatmaps``:
for every frame, which of its tokens the cache still holds at the end (share of layers), optionally
blended over the decoded frames.
"""

from __future__ import annotations

import numpy as np
import torch

from .report import CacheReport


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _to_array(fig) -> np.ndarray:
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    _pyplot().close(fig)
    return img


def render_curves(reports: list[CacheReport], width: int = 900, height: int = 560,
                  timing_note: str = "") -> np.ndarray:
    """[H, W, 3] uint8: K/V held (MiB) and chunk time (ms) per generated frame, one line per report;
    dashed lines mark each budget's K/V. Rollouts whose memory curves are identical (every bounded
    policy at one budget holds the same K/V by design) share one line and one label. ``timing_note``
    qualifies the time panel (e.g. "shared machine, indicative")."""
    plt = _pyplot()
    dpi = 100
    fig, (mem, tim) = plt.subplots(2, 1, figsize=(width / dpi, height / dpi), dpi=dpi, sharex=True)
    budgets, memory_lines = {}, {}
    for i, rep in enumerate(reports):
        color = f"C{i % 10}"
        ends = [c.frame_start + c.frames for c in rep.chunks]
        held = tuple(c.kv_bytes for c in rep.chunks)
        memory_lines.setdefault((tuple(ends), held), []).append((rep.policy, color))
        tim.plot(ends, [c.chunk_ms for c in rep.chunks], color=color, lw=1.5, label=rep.policy)
        sized = [c for c in rep.chunks if c.tokens_per_layer]
        if sized and rep.budget_tokens < rep.total_frames * rep.tokens_per_frame:
            per_token = sized[0].kv_bytes / sized[0].tokens_per_layer
            budgets[round(rep.budget_tokens * per_token / 2**20, 6)] = rep.budget_tokens / rep.tokens_per_frame
    for (ends, held), owners in memory_lines.items():
        names = [name for name, _ in owners]
        label = names[0] if len(names) == 1 else f"{', '.join(names)} (identical by design: one budget)"
        mem.plot(ends, [b / 2**20 for b in held], color=owners[0][1], lw=2, label=label)
    for mib, frames in budgets.items():            # one dashed line per distinct budget
        mem.axhline(mib, color="k", ls="--", lw=1, label=f"budget: {frames:g} latent frames")
    mem.set_title("K/V held by the cache")
    mem.set_ylabel("MiB")
    tim.set_title("time per chunk (all denoising passes + the cache-writing pass)"
                  + (f" - {timing_note}" if timing_note else ""))
    tim.set_ylabel("ms")
    tim.set_xlabel("latent frame")
    mem.set_ylim(bottom=0)
    tim.set_ylim(bottom=0)
    for ax in (mem, tim):
        ax.grid(alpha=0.3)
    mem.legend(fontsize=8, loc="upper left")
    tim.legend(fontsize=8, loc="upper left", ncol=3)
    fig.tight_layout()
    return _to_array(fig)


#: brightness left to a token that no layer kept (a kept token keeps its own colours)
EVICTED_BRIGHTNESS = 0.12


def _heat(values: np.ndarray) -> np.ndarray:
    """[...] in [0, 1] -> [..., 3] grey in [0, 1]: black (dropped everywhere) to white (kept by all)."""
    return np.repeat(np.clip(values, 0, 1)[..., None], 3, axis=-1)


def render_token_heatmaps(report: CacheReport, grid_hw: tuple[int, int], frames: torch.Tensor | None = None,
                          scale: int = 8) -> torch.Tensor:
    """[F, H, W, 3] float in [0, 1]: per frame, the share of layers still holding each token at the
    end of the rollout. With ``frames`` ([F, H, W, 3] in [0, 1], ComfyUI IMAGE) the map dims them at
    their resolution: a token every layer kept shows its own colours, one none kept goes nearly black
    (no false colour to mix with the frame's); otherwise a grey map, each token a ``scale`` x ``scale``
    block."""
    if report.final_kept is None:
        raise ValueError("this report has no token map (it was made before the rollout finished)")
    gh, gw = grid_hw
    kept = report.final_kept.float().mean(dim=0).view(report.total_frames, gh, gw).numpy()
    heat = torch.from_numpy(_heat(kept)).float()                         # [F, gh, gw, 3]
    if frames is None:
        return heat.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    check_frames_match(report, frames)
    if frames.shape[0] != heat.shape[0]:
        # a decoded Wan video has 4 frames per latent frame (and 1 for the first): map them back
        heat = heat[torch.clamp((torch.arange(frames.shape[0]) + 3) // 4, max=heat.shape[0] - 1)]
    up = torch.nn.functional.interpolate(heat.permute(0, 3, 1, 2), size=frames.shape[1:3], mode="nearest")
    return frames[..., :3].float() * (EVICTED_BRIGHTNESS + (1 - EVICTED_BRIGHTNESS) * up.permute(0, 2, 3, 1))


def check_frames_match(report: CacheReport, frames: torch.Tensor) -> None:
    """Frames drawn under a token map must be that video's: one per latent frame (or the 4x - 3 of a
    decoded Wan video) with the aspect ratio of the token grid."""
    latent = report.total_frames
    counts = {latent, 4 * (latent - 1) + 1}
    if frames.ndim != 4 or frames.shape[0] not in counts:
        raise ValueError(f"the frames do not belong to this report's video: it has {latent} latent frames, so "
                         f"{' or '.join(str(c) for c in sorted(counts))} frames, got {frames.shape[0] if frames.ndim == 4 else tuple(frames.shape)}")
    gh, gw = report.grid_hw
    h, w = frames.shape[1:3]
    if abs(h * gw - w * gh) > 0.05 * w * gh:
        raise ValueError(f"the frames are {w}x{h} but this report's video is {gw}x{gh} tokens (aspect ratio "
                         "differs): connect the decoded frames of the same video")


def render_fidelity(per_frame: dict[str, list[float]], budget: float, width: int = 900, height: int = 420) -> np.ndarray:
    """[H, W, 3] uint8: PSNR to keep-all per latent frame, one line per policy (a distilled head's report:
    the quality signal that needs no truth). Frames identical to keep-all (inf) are left out."""
    plt = _pyplot()
    dpi = 100
    fig, ax = plt.subplots(figsize=(width / dpi, height / dpi), dpi=dpi)
    for i, (name, values) in enumerate(per_frame.items()):
        frames = [f for f, v in enumerate(values) if np.isfinite(v)]
        finite = [values[f] for f in frames]
        mean = sum(finite) / len(finite) if finite else float("nan")
        ax.plot(frames, finite, color=f"C{i % 10}", lw=2 if name == "pafu" else 1.2,
                label=f"{name} (mean {mean:.1f} dB)")
    ax.set_title(f"fidelity to keep-all with the same noise, budget {100 * budget:g}% of the clip (higher is closer)")
    ax.set_xlabel("latent frame")
    ax.set_ylabel("PSNR (dB, latent space)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _to_array(fig)
