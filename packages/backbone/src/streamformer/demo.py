"""`make stream-demo`: write a synthetic video, stream it through a tiny StreamFormer with the cache.

Prints per-frame outputs and timings and saves a plot. (The pretraining package replaces the
random tiny model with one trained on the synthetic world.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from .cli import stream
from .config import StreamFormerConfig
from .model import StreamFormerVisionModel
from .video import write_video


def moving_square_video(length: int = 48, size: int = 64, seed: int = 0) -> np.ndarray:
    """A square that drifts right, pauses (background), then grows: changes only time can show."""
    rng = np.random.default_rng(seed)
    frames = np.full((length, size, size, 3), 30, np.uint8)
    colour = rng.integers(120, 255, 3)
    for t in range(length):
        phase = t / length
        if phase < 0.4:
            x, side = int(4 + phase / 0.4 * (size - 24)), 12
        elif phase < 0.6:
            continue  # empty frames
        else:
            x, side = size // 2 - 6, int(12 + (phase - 0.6) / 0.4 * 20)
        y = size // 2 - side // 2
        frames[t, y : y + side, x : x + side] = colour
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="runs/demo", help="folder for the video, model and plot")
    parser.add_argument("--frames", type=int, default=48)
    args = parser.parse_args()
    out = Path(args.output)
    torch.manual_seed(0)
    video = write_video(out / "moving_square.mp4", moving_square_video(args.frames), fps=12)
    config = StreamFormerConfig(
        image_size=64,
        patch_size=8,
        num_frames=16,
        hidden_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=384,
        lora_rank=8,
        lora_alpha=8.0,
    )
    model = StreamFormerVisionModel(config)
    with torch.no_grad():  # open the temporal gates so frames visibly interact
        for layer in model.encoder.layer:
            layer.temporal_attention_gating.fill_(0.5)
    model.save_pretrained(out / "tiny-streamformer")
    stream(str(video), str(out / "tiny-streamformer"), max_frames=16, sink_frames=1, plot=str(out / "stream.png"))


if __name__ == "__main__":
    main()
