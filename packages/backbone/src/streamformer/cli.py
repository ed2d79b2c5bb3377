"""The `streamformer` command: info, convert, encode, stream.

streamformer info [--path PATH]               versions, devices; a checkpoint or video described
streamformer convert SOURCE OUTPUT            SigLIP directory or original checkpoint -> ours
streamformer encode VIDEO MODEL OUTPUT.safetensors [--fps 4]    features to a file
streamformer stream VIDEO MODEL [--plot stream.png]            frame by frame through the cache
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from .cache import DEFAULT_MAX_FRAMES, cache_bytes_per_frame
from .checkpoints import DTYPES, conversion_report, default_device, detect_format, from_siglip, load_model, load_original
from .model import StreamFormerModel, StreamFormerVisionModel
from .tensor_file import SafetensorsWriter
from .video import FrameSource, VideoReadError, load_clip, segment_indices, video_info

Dtype = Literal["float32", "bfloat16"]


def info(path: str | None = None) -> None:
    """Print versions and devices; with PATH, describe a checkpoint directory or a video file.

    Args:
        path: a checkpoint directory (ours, original or SigLIP) or a video file.
    """
    import transformers

    from . import __version__

    print(f"streamformer {__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"cuda available: {torch.cuda.is_available()}, threads: {torch.get_num_threads()}")
    if path is None:
        return
    if Path(path).is_file():
        meta = video_info(path)
        print(f"video {path}: {meta.frame_count} frames, {meta.fps:.2f} fps, {meta.width}x{meta.height}, {meta.duration:.2f} s")
        return
    kind = detect_format(path)
    print(f"checkpoint {path}: {kind} format")
    if kind != "siglip":
        model = StreamFormerVisionModel.from_pretrained(path)
        total = sum(p.numel() for p in model.parameters())
        lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        print(json.dumps({k: v for k, v in model.config.to_dict().items() if not k.startswith("_")}, indent=1, default=str))
        print(f"parameters: {total:,} (LoRA {lora:,})")


def convert(source: str, output: str, merge_lora: bool = False, num_frames: int = 16, hidden_act: str | None = "gelu") -> None:
    """Convert a SigLIP directory or an original StreamFormer checkpoint to our format.

    Args:
        source: SigLIP directory (a new StreamFormer initialised from it) or original checkpoint directory.
        output: directory to write (save_pretrained, safetensors).
        merge_lora: fold LoRA into the spatial weights (original checkpoints).
        num_frames: time-embedding rows (SigLIP initialisation).
        hidden_act: block activation for SigLIP initialisation ("gelu" as the original; none keeps SigLIP's).
    """
    kind = detect_format(source)
    if kind == "streamformer":
        raise ValueError(f"{source} is already in StreamFormer format")
    if kind == "siglip":
        model = from_siglip(source, num_frames=num_frames, hidden_act=hidden_act)
    else:
        model, report = load_original(source, merge_lora=merge_lora)
        print(conversion_report(source, report))
    model.save_pretrained(output)
    kind_name = "StreamFormerModel (video + text)" if isinstance(model, StreamFormerModel) else "StreamFormerVisionModel"
    print(f"wrote {kind_name} to {output}")


def stream_window(net: StreamFormerVisionModel, source: FrameSource, max_frames: int | None, dtype: str) -> None:
    """Say what an unbounded stream of this video will hold in memory (bounded ones are fine)."""
    if max_frames is None:
        total = cache_bytes_per_frame(net.config, DTYPES[dtype]) * source.frame_count
        print(
            f"unbounded window: the cache will grow to {total / 2**30:.2f} GiB at the last of {source.frame_count} frames "
            f"(attention cost grows with it); --max_frames bounds it",
            file=sys.stderr,
        )


@torch.inference_mode()
def encode(
    video: str,
    model: str,
    output: str,
    clip_length: int = 16,
    fps: float | None = None,
    chunk_size: int = 16,
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    sink_frames: int = 0,
    spatial: bool = True,
    device: str | None = None,
    dtype: Dtype = "float32",
) -> None:
    """Encode a video to spatial [T, N, D], temporal [T, D] and global [D] features (safetensors).

    Without --fps: one clip of NUM_FRAMES uniformly sampled frames, run offline. With --fps: every
    frame at that rate, streamed through the KV cache in chunks, decoded as it is consumed and
    written to the file as it is produced: memory stays flat however long the video.

    Args:
        video: video file.
        model: StreamFormer checkpoint directory.
        output: .safetensors file to write (complete, or not at all).
        clip_length: frames sampled uniformly from the video when --fps is not given.
        fps: stream the whole video at this frame rate.
        chunk_size: frames per forward call when streaming.
        max_frames: temporal window in frames (256 by default; null = unbounded, which needs
            memory in proportion to the video's length).
        sink_frames: first frames kept attendable under the window.
        spatial: also save the spatial features (the largest part).
        device: cpu, cuda, cuda:1... (default: cuda when available).
    """
    device = default_device(device)
    net = load_model(model, device, dtype)
    size, to_model = net.config.image_size, {"device": device, "dtype": DTYPES[dtype]}
    if fps is None:
        indices = segment_indices(video_info(video).frame_count, clip_length)  # the frames load_clip takes
        out = net(load_clip(video, clip_length, size)[None].to(**to_model), max_frames=max_frames, sink_frames=sink_frames)
        outputs = [out]
    else:
        source = FrameSource(video, chunk_size=chunk_size, fps=fps, size=size)
        stream_window(net, source, max_frames, dtype)
        cache = net.new_cache(max_frames=max_frames, sink_frames=sink_frames)
        bar = tqdm(source, desc=f"encode {Path(video).name}", unit="chunk", disable=None)
        outputs = (net(frames[None].to(**to_model), cache=cache) for frames, _ in bar)  # one chunk at a time
        indices = source.indices
    shapes = {"temporal": (len(indices), net.config.hidden_size), "global": (net.config.hidden_size,)}
    if spatial:
        shapes["spatial"] = (len(indices), net.config.num_patches, net.config.hidden_size)
    meta = {"video": str(video), "model": str(model), "fps": str(fps or ""), "frame_indices": json.dumps(indices)}
    with SafetensorsWriter(output, shapes, meta) as writer:
        for out in outputs:
            writer.append("temporal", out.pooler_output[0])
            if spatial:
                writer.append("spatial", out.last_hidden_state[0])
        writer.append("global", out.global_output[0])  # the last frame's pooled feature
    print(f"wrote {output}: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))


@torch.inference_mode()
def stream(
    video: str,
    model: str,
    fps: float | None = None,
    chunk_size: int = 1,
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    sink_frames: int = 0,
    plot: str | None = "stream.png",
    print_every: int = 1,
    device: str | None = None,
    dtype: Dtype = "float32",
) -> list[dict]:
    """Stream a video frame by frame through the KV cache; print per-frame outputs and timings.

    Args:
        video: video file.
        model: StreamFormer checkpoint directory.
        fps: resample the video to this rate first.
        chunk_size: frames per forward call.
        max_frames: temporal window in frames (256 by default; null = unbounded).
        sink_frames: first frames kept attendable under the window.
        plot: PNG to save per-frame latency and feature plots to (none: no plot).
        print_every: print the line of every N-th frame (all frames go to the plot and the summary).
        device: cpu, cuda, cuda:1... (default: cuda when available).
    """
    if print_every < 1:
        raise ValueError(f"print_every must be >= 1, got {print_every}")
    device = default_device(device)
    net = load_model(model, device, dtype)
    source = FrameSource(video, chunk_size=chunk_size, fps=fps, size=net.config.image_size)
    stream_window(net, source, max_frames, dtype)
    cache = net.new_cache(max_frames=max_frames, sink_frames=sink_frames)
    records, previous = [], None
    # The bar only on a terminal (disable=None): in a log it would interleave with the frame lines.
    bar = tqdm(source, desc=f"stream {Path(video).name}", unit="chunk", disable=None)
    for frames, indices in bar:
        start = time.perf_counter()
        out = net(frames[None].to(device=device, dtype=DTYPES[dtype]), cache=cache)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        latency = (time.perf_counter() - start) * 1000 / len(indices)
        for i, feature in zip(indices, out.pooler_output[0].float().cpu(), strict=True):
            cos = float(torch.cosine_similarity(feature, previous, dim=0)) if previous is not None else 1.0
            previous = feature
            record = {
                "frame": i,
                "time_s": i / source.source_fps,
                "latency_ms": latency,
                "norm": float(feature.norm()),
                "cos_prev": cos,
            }
            records.append(record)
            if (len(records) - 1) % print_every == 0:
                bar.write(
                    f"frame {i:5d}  t={record['time_s']:7.2f}s  {latency:8.2f} ms/frame  |f|={record['norm']:8.3f}  cos(prev)={cos:+.4f}"
                )
    mean = sum(r["latency_ms"] for r in records[1:]) / max(1, len(records) - 1)
    print(f"{len(records)} frames, {mean:.2f} ms per frame after the first, cache {cache.nbytes() / 2**20:.1f} MiB")
    if plot:
        plot_stream(records, plot, title=f"{Path(video).name} through {Path(model).name}")
        print(f"plot: {plot}")
    return records


def plot_stream(records: list[dict], path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["time_s"] for r in records]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    axes[0].plot(t, [r["latency_ms"] for r in records], ".-")
    axes[0].set_ylabel("latency (ms / frame)")
    axes[1].plot(t, [r["cos_prev"] for r in records], ".-", color="tab:green")
    axes[1].set_ylabel("cos(f_t, f_t-1)")
    axes[2].plot(t, [r["norm"] for r in records], ".-", color="tab:orange")
    axes[2].set_ylabel("|temporal feature|")
    axes[2].set_xlabel("video time (s)")
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def synthetic(root: str, num_train: int = 800, num_val: int = 200, seed: int = 0) -> None:
    """Write the procedural synthetic video world (videos + annotations in the original formats).

    Args:
        root: output folder.
        num_train: training videos.
        num_val: held-out videos.
        seed: the world is a deterministic function of the seed.
    """
    from .synthetic import generate_world

    summary = generate_world(root, num_train=num_train, num_val=num_val, seed=seed)
    print(f"wrote {len(summary.train_ids)} train + {len(summary.val_ids)} val videos to {root}")


def main(argv: list[str] | None = None) -> None:
    import transformers
    from jsonargparse import CLI

    transformers.utils.logging.disable_progress_bar()  # loading one checkpoint: a bar adds nothing

    try:
        CLI([info, convert, encode, stream, synthetic], args=argv, as_positional=True)
    except (VideoReadError, FileNotFoundError, ValueError) as error:
        print(f"streamformer: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
