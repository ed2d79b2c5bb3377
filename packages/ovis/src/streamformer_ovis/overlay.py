"""Reading a video for prediction in chunks, and drawing tracked instances over its frames."""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from streamformer.masks import decode_segmentation

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CHUNK = 64  # frames decoded at a time: memory stays bounded whatever the video's length


def read_video_frames(video: str) -> Callable[[], Iterator[Tensor]]:
    """A re-iterable source of uint8 frame chunks [t, H, W, 3] of a video file or frame folder."""
    path = Path(video)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{video}: no frame images ({', '.join(IMAGE_SUFFIXES)})")

        def from_folder() -> Iterator[Tensor]:
            for start in range(0, len(files), CHUNK):
                chunk = files[start : start + CHUNK]
                yield torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in chunk]))

        return from_folder
    if not path.exists():
        raise FileNotFoundError(f"{video} not found")
    from streamformer.video import FrameDecoder

    def from_file() -> Iterator[Tensor]:
        decoder = FrameDecoder(path)
        for start in range(0, decoder.frame_count, CHUNK):
            yield decoder.read(range(start, min(start + CHUNK, decoder.frame_count)))

    return from_file


def track_colour(track: int) -> tuple[int, int, int]:
    """A distinct, stable colour per track (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((track * 0.618034) % 1.0, 0.85, 1.0)
    return int(255 * r), int(255 * g), int(255 * b)


MIN_SIDE = 256  # small frames are enlarged (nearest) before drawing, so that labels stay legible


def draw_instances(frame: np.ndarray, masks: list[tuple[int, str, np.ndarray]], alpha: float = 0.5) -> Image.Image:
    """One frame with each (track number, label, bool mask) blended in its colour and labelled."""
    scale = max(1, -(-MIN_SIDE // min(frame.shape[:2])))
    if scale > 1:
        frame = frame.repeat(scale, 0).repeat(scale, 1)
        masks = [(number, label, mask.repeat(scale, 0).repeat(scale, 1)) for number, label, mask in masks]
    out = frame.astype(np.float32)
    for number, _, mask in masks:
        out[mask] = (1 - alpha) * out[mask] + alpha * np.array(track_colour(number), dtype=np.float32)
    image = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _, label, mask in masks:
        ys, xs = np.nonzero(mask)
        if len(xs):
            draw.text((int(xs.mean()), int(ys.mean())), label, fill=(255, 255, 255), anchor="mm")
    return image


def write_overlays(
    frames: Callable[[], Iterator[Tensor]],
    results: list[dict[str, Any]],
    names: dict[int, str],
    output: Path,
    strip_frames: int = 8,
    mp4: bool = True,
    min_score: float = 0.3,
) -> list[Path]:
    """`strip.png` (evenly spaced frames side by side) and `overlay.mp4`, with every result scoring
    at least `min_score` drawn as "#number class"; returns the paths written."""
    shown = [r for r in results if r["score"] >= min_score]
    total = sum(len(chunk) for chunk in frames())
    picks = set(np.linspace(0, total - 1, min(strip_frames, total)).round().astype(int).tolist())
    strip: list[Image.Image] = []
    drawn: list[np.ndarray] = []
    t = 0
    for chunk in frames():
        for frame in chunk.numpy():
            masks = []
            for number, result in enumerate(shown):
                segmentation = result["segmentations"][t]
                if segmentation is not None:
                    mask = decode_segmentation(segmentation, *frame.shape[:2]).astype(bool)
                    masks.append((number, f"#{number} {names.get(result['category_id'], result['category_id'])}", mask))
            image = draw_instances(frame, masks)
            if t in picks:
                strip.append(image)
            if mp4:
                drawn.append(np.asarray(image))
            t += 1
    output.mkdir(parents=True, exist_ok=True)
    width, height = strip[0].size
    canvas = Image.new("RGB", (width * len(strip), height))
    for i, image in enumerate(strip):
        canvas.paste(image, (i * width, 0))
    written = [output / "strip.png"]
    canvas.save(written[0])
    if mp4:
        from streamformer.video import write_video

        even = np.stack(drawn)[:, : height // 2 * 2, : width // 2 * 2]  # H.264 needs even sides
        written.append(write_video(output / "overlay.mp4", even, fps=8.0))
    return written
