"""Videos a person can read: labelled side-by-side panels, frame counter, return markers, MP4.

Frames are scaled up with nearest-neighbour (the tiny world is 16x16 pixels); MP4 is written with
PyAV (H.264), which ComfyUI already depends on.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

GREEN, RED, WHITE, GREY = (40, 180, 70), (220, 50, 40), (255, 255, 255), (110, 110, 110)


def to_uint8(frames: torch.Tensor, scale: int) -> np.ndarray:
    """[F, 3, H, W] in [-1, 1] -> [F, H*scale, W*scale, 3] uint8, nearest-neighbour."""
    x = ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    return x.permute(0, 2, 3, 1).numpy()


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:          # Pillow < 10.1
        return ImageFont.load_default()


def panels(videos: dict[str, np.ndarray], marks: dict[str, dict[int, bool]] | None = None,
           events: dict[int, str] | None = None, gap: int = 8, label_h: int = 26, footer_h: int = 24) -> np.ndarray:
    """Videos [F, H, W, 3] side by side, each with its label above; a frame counter and the event of the
    frame (e.g. "objects return") below. ``marks[label][f]`` draws a green (True) or red (False) frame
    around that panel at frame f."""
    marks, events = marks or {}, events or {}
    names = list(videos)
    f, h, w, _ = videos[names[0]].shape
    width = len(names) * (w + gap) + gap
    font, small = _font(15), _font(13)
    wrapped = {t: _wrap(text, small, width - 2 * gap) for t, text in events.items()}
    footer_h = max([footer_h] + [18 * (1 + len(lines)) + 6 for lines in wrapped.values()])
    out = np.full((f, label_h + h + footer_h + 2 * gap, width, 3), 255, dtype=np.uint8)
    header = Image.new("RGB", (width, label_h), WHITE)
    draw = ImageDraw.Draw(header)
    for i, name in enumerate(names):
        draw.text((gap + i * (w + gap) + 2, 5), name, fill=(0, 0, 0), font=font)
    out[:, :label_h] = np.asarray(header)
    for i, name in enumerate(names):
        x0 = gap + i * (w + gap)
        out[:, label_h + gap:label_h + gap + h, x0:x0 + w] = videos[name]
    for t in range(f):
        footer = Image.new("RGB", (width, footer_h), WHITE)
        draw = ImageDraw.Draw(footer)
        draw.text((gap, 4), f"frame {t + 1}/{f}", fill=GREY, font=small)
        for k, line in enumerate(wrapped.get(t, ())):          # under the counter, wrapped to the width
            draw.text((gap, 22 + 18 * k), line, fill=(0, 0, 0), font=small)
        out[t, label_h + h + 2 * gap:] = np.asarray(footer)
        for i, name in enumerate(names):
            ok = marks.get(name, {}).get(t)
            if ok is None:
                continue
            x0, y0 = gap + i * (w + gap), label_h + gap
            color = np.array(GREEN if ok else RED, dtype=np.uint8)
            for edge in (slice(y0 - 4, y0), slice(y0 + h, y0 + h + 4)):
                out[t, edge, x0 - 4:x0 + w + 4] = color
            out[t, y0 - 4:y0 + h + 4, x0 - 4:x0] = color
            out[t, y0 - 4:y0 + h + 4, x0 + w:x0 + w + 4] = color
    return out


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap of ``text`` into lines no wider than ``width`` pixels in ``font``."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and measure(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line else lines


def write_mp4(frames: np.ndarray, path: str, fps: int = 12, desc: str | None = None) -> None:
    """[F, H, W, 3] uint8 -> H.264 MP4 (sides padded to even sizes)."""
    import av
    f, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in tqdm(frames, desc=desc or f"writing {path}", leave=False):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
