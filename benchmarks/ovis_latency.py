"""Per-frame cost of online VIS: StreamFormer-B/16 + ViT-Adapter + Mask2Former head at 224 px.

Random weights (the cost does not depend on the values), the original's sizes: ViT-B/16 with
LoRA, the adapter's defaults (4 interactions, 2 extra extractors, no injector), the head of the
original recipe (100 queries, width 256, 6 deformable encoder layers, 9 decoder layers). Frames
stream one at a time through the backbone's cache (16-frame window, full after warm-up). Each part
is timed inside the same calls (the shares add up to the total), and so is every call of the
pure-PyTorch multi-scale deformable attention (grid_sample per level), wherever it runs: the
adapter's extractors and the pixel decoder's encoder.

    python benchmarks/ovis_latency.py --output docs/benchmarks/ovis_latency.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers.models.mask2former import modeling_mask2former

from streamformer import StreamFormerConfig, StreamFormerVisionModel
from streamformer_ovis.adapter import AdapterConfig, StreamFormerAdapter
from streamformer_ovis.head import CTVISHead, head_config
from streamformer_ovis.model import OnlineVISModel

TIMES: dict[str, list[float]] = defaultdict(list)


def timed(name: str, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            TIMES[name].append(time.perf_counter() - start)

    return wrapper


def build(threads: int) -> OnlineVISModel:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    backbone = StreamFormerVisionModel(StreamFormerConfig(lora_rank=32)).eval()
    adapter = StreamFormerAdapter(backbone, AdapterConfig(temporal_window=16))
    head = CTVISHead(head_config(40), adapter.output_channels)
    model = OnlineVISModel(adapter, head).eval()
    # Every part's forward timed where it runs; the adapter's own work is the total minus the rest.
    backbone.forward_layers = timed("backbone blocks", backbone.forward_layers)
    backbone.embed = timed("backbone blocks", backbone.embed)
    head.pixel_decoder.forward = timed("head: pixel decoder", head.pixel_decoder.forward)
    head.decoder.forward = timed("head: masked-attention decoder", head.decoder.forward)
    modeling_mask2former.multi_scale_deformable_attention = timed(
        "deformable attention (inside adapter and pixel decoder)", modeling_mask2former.multi_scale_deformable_attention
    )
    return model


def run(frames: int, warmup: int, threads: int) -> dict[str, float]:
    model = build(threads)
    cache = model.adapter.new_cache(1)
    x = torch.rand(1, 1, 3, 224, 224) * 2 - 1
    totals = []
    with torch.inference_mode():
        for i in range(warmup + frames):
            if i == warmup:
                TIMES.clear()
            start = time.perf_counter()
            model(x, cache=cache)
            if i >= warmup:
                totals.append(time.perf_counter() - start)
    per_frame = {name: sum(values) / frames for name, values in TIMES.items()}
    per_frame["total"] = statistics.mean(totals)
    nested = "deformable attention (inside adapter and pixel decoder)"
    per_frame["adapter (SPM, extractors, outputs)"] = per_frame["total"] - sum(
        v for k, v in per_frame.items() if k not in ("total", nested)
    )
    return per_frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=17, help="frames before timing (the 16-frame window fills)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    figures = run(args.frames, args.warmup, args.threads)
    total = figures["total"]
    order = ["backbone blocks", "adapter (SPM, extractors, outputs)", "head: pixel decoder", "head: masked-attention decoder"]
    lines = [
        "# Online VIS: per-frame cost on CPU",
        "",
        "Produced by `python benchmarks/ovis_latency.py` (`make bench`): StreamFormer-B/16 + ViT-Adapter + the "
        "original recipe's Mask2Former head, 224 px, random weights, one frame at a time through the "
        f"backbone's cache (16-frame window, full); mean of {args.frames} frames after {args.warmup} warm-up "
        f"frames, {args.threads} threads, {platform.processor() or platform.machine()}, torch {torch.__version__}.",
        "",
        "| part | ms per frame | share |",
        "|---|---|---|",
    ]
    for name in order:
        lines.append(f"| {name} | {1000 * figures[name]:.0f} | {figures[name] / total:.0%} |")
    lines.append(f"| **total** | **{1000 * total:.0f}** | 100% |")
    nested = "deformable attention (inside adapter and pixel decoder)"
    lines += [
        "",
        f"Of which the pure-PyTorch multi-scale deformable attention (`grid_sample` per level; no compiled op): "
        f"{1000 * figures[nested]:.0f} ms per frame, {figures[nested] / total:.0%} of the total.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
