"""Per-new-frame latency of StreamFormer streaming against the alternatives, measured side by side.

All models are ViT-B/16 sized with random weights at 224 px (the cost does not depend on the
values). For every new frame of a stream:

  (a) ours, cached: one forward of the new frame through the KV cache (16-frame window)
  (b) transformers' SiglipVisionModel on that one frame (the image-model floor)
  (c) ours without cache: re-run the last 16 frames offline
  (d) transformers' TimesformerModel on the last 8 frames

Rounds interleave the methods so machine noise hits them alike; each figure is a median. (a) is
timed at stream histories 1, 16, 256 and 4096: the cache is started at absolute frame h - f and
filled with f = min(h, 15) frames (its counter, window and positions then are those of an
h-frame stream; the cached values differ, the work per frame does not). Peak memory is the rise of
the process's peak resident memory (CPU; /proc/self/clear_refs) or of CUDA's peak allocation
during one call.

    python benchmarks/streaming_latency.py --output docs/benchmarks/streaming_latency.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import SiglipVisionConfig, SiglipVisionModel, TimesformerConfig, TimesformerModel

from streamformer import StreamFormerConfig, StreamFormerVisionModel

HISTORIES = (1, 16, 256, 4096)
WINDOW = 16
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGETS = [
    ("(a) / (b), history 16", "<= 1.45"),
    ("(a) at 4096 / (a) at 16", "<= 1.10"),
    ("(c) / (a), history 16", ">= 10"),
    ("(a) fp32 / (a) bf16, history 16", ">= 1.8"),
]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1000


def timed_with_peak(fn: Callable[[], object], device: str) -> tuple[float, float]:
    """Milliseconds of one call, and how far it raises peak memory (MiB) above what was in use
    before it: the process's peak resident memory on CPU (VmHWM, reset first), CUDA's peak
    allocation on a GPU."""

    def status(field: str) -> int:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

    sync(device)
    if device == "cuda":
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = status("VmRSS:")
    ms = timed(fn, device)
    if device == "cuda":
        return ms, (torch.cuda.max_memory_allocated() - before) / 2**20
    return ms, (status("VmHWM:") - before) / 1024


def op_breakdown(fn: Callable[[], object], calls: int = 3) -> dict[str, float]:
    """Self time per call (ms) of linear layers, attention kernels and everything else."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    split = {"linear": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        name = event.key
        kind = (
            "linear"
            if name in ("aten::addmm", "aten::mm")
            else "attention"
            if ("scaled_dot_product" in name or name in ("aten::bmm", "aten::_softmax"))
            else "other"
        )
        split[kind] += event.self_cpu_time_total / 1000 / calls
    return split


def build(dtype: torch.dtype, device: str):
    base = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    ours = StreamFormerVisionModel(StreamFormerConfig(**base, add_lora_spatial=False, num_frames=16))
    siglip = SiglipVisionModel(SiglipVisionConfig(**base, image_size=224, patch_size=16))
    timesformer = TimesformerModel(TimesformerConfig(**base, image_size=224, patch_size=16, num_frames=8))
    return [m.to(device=device, dtype=dtype).eval() for m in (ours, siglip, timesformer)]


@torch.inference_mode()
def measure(dtype_name: str, device: str, rounds: int) -> dict:
    dtype = DTYPES[dtype_name]
    ours, siglip, timesformer = build(dtype, device)

    def frames(n: int) -> torch.Tensor:
        return torch.randn(1, n, 3, 224, 224, device=device, dtype=dtype)

    caches = {}
    for h in HISTORIES:
        fill = min(h, WINDOW - 1)
        caches[h] = ours.new_cache(max_frames=WINDOW, start_frame=h - fill)
        ours(frames(fill), cache=caches[h])
    frame, clip16, clip8 = frames(1), frames(16), frames(8)
    methods = {f"(a) cached, history {h}": (lambda h=h: ours(frame, cache=caches[h])) for h in HISTORIES}
    methods["(b) SigLIP one frame"] = lambda: siglip(pixel_values=frame[0])
    methods["(c) ours, 16-frame window, no cache"] = lambda: ours(clip16)
    methods["(d) TimeSformer, 8-frame window"] = lambda: timesformer(pixel_values=clip8)

    for fn in methods.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(rounds):
        for name, fn in methods.items():
            times[name].append(timed(fn, device))
        print(
            f"  {dtype_name} round {r + 1}/{rounds}: " + ", ".join(f"{statistics.median(t):.0f}" for t in times.values()),
            flush=True,
        )
    memory = {name: timed_with_peak(fn, device)[1] for name, fn in methods.items()}
    breakdown = {name: op_breakdown(methods[name]) for name in ("(a) cached, history 16", "(b) SigLIP one frame")}
    cache_mib = caches[16].nbytes() / 2**20
    latency = {k: statistics.median(v) for k, v in times.items()}
    return {"latency": latency, "memory": memory, "cache_mib": cache_mib, "breakdown": breakdown}


def report(results: dict, device: str, rounds: int) -> str:
    a = {d: {h: results[d]["latency"][f"(a) cached, history {h}"] for h in HISTORIES} for d in results}
    lines = [
        "# Streaming latency per new frame (ViT-B/16, 224 px, random weights)",
        "",
        "Produced by `make bench` (`python benchmarks/streaming_latency.py`); every number below comes",
        f"from one run of it, all methods interleaved round by round (median of {rounds} rounds).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, device `{device}`, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}.",
        "",
        "| method | " + " | ".join(f"{d} ms / frame | {d} peak MiB" for d in results) + " |",
        "|---|" + "---:|---:|" * len(results),
    ]
    for name in next(iter(results.values()))["latency"]:
        cells = " | ".join(f"{results[d]['latency'][name]:.1f} | {results[d]['memory'][name]:.0f}" for d in results)
        lines.append(f"| {name} | {cells} |")
    lines += [
        "",
        "Peak MiB: rise of peak memory during one call above what the process already held. On CPU a",
        "0 means the call fit in memory the allocator kept from earlier, larger calls: the working set",
        "of one cached frame is a single image forward plus the cache below.",
    ]
    lines += [
        "",
        "Cache held for a 16-frame window: " + ", ".join(f"{d} {results[d]['cache_mib']:.0f} MiB" for d in results) + ".",
        "",
    ]
    lines += ["| ratio | target | " + " | ".join(results) + " |", "|---|---|" + "---:|" * len(results)]
    ratios = {
        "(a) / (b), history 16": {d: a[d][16] / results[d]["latency"]["(b) SigLIP one frame"] for d in results},
        "(a) at 4096 / (a) at 16": {d: a[d][4096] / a[d][16] for d in results},
        "(c) / (a), history 16": {d: results[d]["latency"]["(c) ours, 16-frame window, no cache"] / a[d][16] for d in results},
        "(d) / (a), history 16": {d: results[d]["latency"]["(d) TimeSformer, 8-frame window"] / a[d][16] for d in results},
    }
    targets = dict(TARGETS)
    for name, values in ratios.items():
        lines.append(f"| {name} | {targets.get(name, '-')} | " + " | ".join(f"{v:.2f}" for v in values.values()) + " |")
    if {"fp32", "bf16"} <= set(results):
        speedup = a["fp32"][16] / a["bf16"][16]
        lines.append(f"| (a) fp32 / (a) bf16, history 16 | >= 1.8 | {speedup:.2f} (both columns) |")
    lines += [
        "",
        "## Where (a) spends more than (b)",
        "",
        "Self time per frame from torch.profiler (ms; profiling adds a little overhead). Linear layers",
        "are `addmm`/`mm`; attention is the SDPA kernels and the matmuls of the cached single-query",
        "temporal attention.",
        "",
        "| dtype | part | (a) ours, cached | (b) SigLIP | (a) / (b) |",
        "|---|---|---:|---:|---:|",
    ]
    for d in results:
        ours, siglip = results[d]["breakdown"]["(a) cached, history 16"], results[d]["breakdown"]["(b) SigLIP one frame"]
        for part in ("linear", "attention", "other"):
            lines.append(f"| {d} | {part} | {ours[part]:.1f} | {siglip[part]:.1f} | {ours[part] / max(siglip[part], 1e-9):.2f} |")
    lines += [
        "",
        "What sets the floor: at inference each block adds four D x D matrix products per token to",
        "SigLIP's twelve (temporal qkv = 3, and one for the temporal output projection and",
        "`temporal_dense`, which have no nonlinearity between them and are folded into one matrix",
        "together with the tanh gate; training keeps them apart), against qkv 3 + output 1 + MLP 8:",
        "16 / 12 = 1.33 times the linear work (17 / 12 = 1.42 unfolded). Spatial LoRA is merged into",
        "its base weights (`load_model` does the same). What remains above the floor is the temporal",
        "attention, which must read the cached keys and values of the window in every layer",
        "(memory-bound: the cache size above, per frame; its matmuls are in `attention`), and one",
        "extra LayerNorm, residual add and cache write per block (`other`).",
    ]
    worst = max(a[d][16] / results[d]["latency"]["(b) SigLIP one frame"] for d in results)
    verdict = "meets" if worst <= 1.45 else "misses"
    lines.append(f"In this run (a) / (b) {verdict} the 1.45 target (worst dtype: {worst:.2f}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="docs/benchmarks/streaming_latency.md")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    results = {}
    for name in args.dtypes:
        print(f"measuring {name} on {args.device} ...", flush=True)
        results[name] = measure(name, args.device, args.rounds)
    text = report(results, args.device, args.rounds)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
