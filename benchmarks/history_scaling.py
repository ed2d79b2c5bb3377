"""Per-frame latency and memory against the number of frames seen (the paper's Figure 3), measured.

ViT-B/16 at 224 px, random weights (cost does not depend on the values), one process, fp32 by
default. When frame h arrives after h - 1 frames:

  cached, unbounded   ours: one forward of the new frame through the KV cache holding every
                      earlier frame (attention over h frames; the cache grows by one frame)
  cached, window 16   ours: the same with a 16-frame window (the cache stops growing)
  recompute           a bidirectional model (StreamFormer with enable_causal_temporal=False) must
                      re-encode all h frames to update its output: one offline forward of h frames

Frames seen run over 1, 2, 4, ..., 4096. The unbounded cache is filled by really streaming the
frames (in chunks; its cost does not depend on their content) and timed on three consecutive
single frames at each length (median). A length is not run when it would pass the budgets
(`--max_seconds` for one recompute call, `--max_cache_gib` for the unbounded cache, judged from
the last length run and the doubling); such cells say "not run", never an extrapolation.

Memory: "held" is what stays allocated between frames (the cache buffers as allocated; a recompute
keeps no state but needs the frames themselves), "peak" is the rise of the process's peak resident memory during the
call on CPU (VmHWM, reset before it) or of CUDA's peak allocation.

    python benchmarks/history_scaling.py --output docs/benchmarks/history_scaling.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import torch
from streaming_latency import timed_with_peak  # the script beside this one (benchmarks/ is on sys.path)

from streamformer import StreamFormerConfig, StreamFormerVisionModel
from streamformer.cache import cache_bytes_per_frame

LENGTHS = [2**i for i in range(13)]  # 1 .. 4096
VIT_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, add_lora_spatial=False)
CURVES = ("cached, unbounded", "cached, window 16", "recompute (bidirectional)")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def time_new_frames(model, cache, frame: torch.Tensor, device: str, count: int = 3) -> tuple[float, float]:
    """Median milliseconds and largest peak MiB of `count` consecutive single frames through `cache`."""
    timings = [timed_with_peak(lambda: model(frame, cache=cache), device) for _ in range(count)]
    return statistics.median(t[0] for t in timings), max(t[1] for t in timings)


@torch.inference_mode()
def run(args: argparse.Namespace) -> dict[str, dict[int, dict[str, float]]]:
    dtype = DTYPES[args.dtype]
    causal = StreamFormerVisionModel(StreamFormerConfig(**VIT_B)).to(args.device, dtype).eval()
    bidirectional = (
        StreamFormerVisionModel(StreamFormerConfig(**VIT_B, enable_causal_temporal=False)).to(args.device, dtype).eval()
    )
    generator = torch.Generator().manual_seed(0)

    def frames(n: int) -> torch.Tensor:
        return torch.randn(1, n, 3, 224, 224, generator=generator).to(args.device, dtype)

    results: dict[str, dict[int, dict[str, float]]] = {name: {} for name in CURVES}

    # Cached, unbounded. Below 16 frames each repetition gets a fresh cache holding exactly h - 1
    # frames; from 16 on, the stream goes on and frames h, h + 1, h + 2 are timed (within 12% of h).
    frame_bytes = cache_bytes_per_frame(causal.config, DTYPES[args.dtype])
    cache = causal.new_cache()
    for h in LENGTHS:
        if (h + 2) * frame_bytes > args.max_cache_gib * 2**30:
            break
        if h < 16:
            timings = []
            for _ in range(3):
                cache = causal.new_cache()
                if h > 1:
                    causal(frames(h - 1), cache=cache)
                timings.append(time_new_frames(causal, cache, frames(1), args.device, count=1))
            ms, peak = statistics.median(t[0] for t in timings), max(t[1] for t in timings)
        else:
            while cache.next_frame < h - 1:
                causal(frames(min(args.fill_chunk, h - 1 - cache.next_frame)), cache=cache)
            ms, peak = time_new_frames(causal, cache, frames(1), args.device)
        results["cached, unbounded"][h] = {"ms": ms, "peak_mib": peak, "held_mib": cache.nbytes() / 2**20}
        print(f"cached, unbounded  h={h:5d}: {ms:8.1f} ms", flush=True)
    cache = None  # free it before the next curves

    # Cached, window 16: the cache's counter and positions are those of an h-frame stream, and it
    # holds min(h - 1, 15) earlier frames (the work per frame is that of any stream this long).
    for h in LENGTHS:
        fill = min(h - 1, 15)
        cache = causal.new_cache(max_frames=16, start_frame=h - 1 - fill)
        if fill:
            causal(frames(fill), cache=cache)
        ms, peak = time_new_frames(causal, cache, frames(1), args.device)
        results["cached, window 16"][h] = {"ms": ms, "peak_mib": peak, "held_mib": cache.nbytes() / 2**20}
        print(f"cached, window 16  h={h:5d}: {ms:8.1f} ms", flush=True)

    # Recompute: one offline forward of all h frames (the clip itself is the input, not timed).
    last_seconds = 0.0
    for h in LENGTHS:
        if last_seconds * 2.2 > args.max_seconds:  # the next length roughly doubles the time
            break
        clip = frames(h)
        ms, peak = timed_with_peak(lambda clip=clip: bidirectional(clip), args.device)
        last_seconds = ms / 1000
        results["recompute (bidirectional)"][h] = {
            "ms": ms,
            "peak_mib": peak,
            "held_mib": clip.numel() * clip.element_size() / 2**20,
        }
        print(f"recompute          h={h:5d}: {ms:8.1f} ms", flush=True)
        del clip
    return results


def report(results: dict, args: argparse.Namespace, image: str) -> str:
    frame_mib = cache_bytes_per_frame(StreamFormerConfig(**VIT_B), DTYPES[args.dtype]) / 2**20
    lines = [
        "# Per-frame latency and memory against frames seen (paper Figure 3, measured here)",
        "",
        "Produced by `make bench` (`python benchmarks/history_scaling.py`); one run, ViT-B/16 at 224 px,",
        f"{args.dtype}, random weights. Machine: {platform.processor() or platform.machine()}, device `{args.device}`,",
        f"{torch.get_num_threads()} threads, torch {torch.__version__}. Budgets: {args.max_seconds:.0f} s for one",
        f"recompute call, {args.max_cache_gib:g} GiB for the unbounded cache's keys and values (its buffer doubles, so it may hold up to twice that); cells past them say *not run*",
        "(never extrapolated).",
        "",
        f"![latency and memory against frames seen]({Path(image).name})",
        "",
        "| frames seen | " + " | ".join(f"{c}: ms / frame | held MiB | peak MiB" for c in CURVES) + " |",
        "|---:|" + "---:|---:|---:|" * len(CURVES),
    ]
    for h in LENGTHS:
        cells = []
        for c in CURVES:
            r = results[c].get(h)
            cells.append("*not run* | | " if r is None else f"{r['ms']:.1f} | {r['held_mib']:.0f} | {r['peak_mib']:.0f}")
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    unbounded, window, recompute = (results[c] for c in CURVES)
    longest = max(recompute)
    lines += [
        "",
        "How to read it:",
        f"- recompute grows with the history: {recompute[1]['ms']:.0f} ms for one frame, {recompute[longest]['ms'] / 1000:.1f} s "
        f"at {longest} frames ({recompute[longest]['ms'] / window[longest]['ms']:.0f}x the windowed cached frame there).",
        f"- the windowed cache stays flat: {window[1]['ms']:.0f} ms at 1 frame, {window[4096]['ms']:.0f} ms at 4096, "
        f"holding {window[4096]['held_mib']:.0f} MiB.",
        f"- the unbounded cache needs {frame_mib:.1f} MiB per frame seen (keys and values of every layer; the buffer "
        f"doubles when it grows, so it holds up to twice that) and its per-frame time rises with the attention over "
        f"all of them ({unbounded[1]['ms']:.0f} ms at 1, {unbounded[max(unbounded)]['ms']:.0f} ms at {max(unbounded)}); "
        f"an hour at 4 fps would need {frame_mib * 14400 / 1024:.0f} GiB, hence a window for long videos.",
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    for curve, style in zip(CURVES, ("o-", "s-", "^-"), strict=True):
        lengths = sorted(results[curve])
        latency.plot(lengths, [results[curve][h]["ms"] for h in lengths], style, label=curve)
        memory.plot(lengths, [max(1e-1, results[curve][h]["held_mib"]) for h in lengths], style, label=curve)
    for axis, label in ((latency, "latency per new frame (ms)"), (memory, "memory held between frames (MiB)")):
        axis.set(xscale="log", yscale="log", xlabel="frames seen", ylabel=label)
        axis.set_xticks(LENGTHS[::2], [str(h) for h in LENGTHS[::2]])
        axis.grid(True, which="both", alpha=0.3)
    latency.legend()
    figure.suptitle("ViT-B/16, 224 px: a new frame through the cache vs recomputing the history (missing points: not run)")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="docs/benchmarks/history_scaling.md")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max_seconds", type=float, default=150.0, help="budget of one recompute call")
    parser.add_argument(
        "--max_cache_gib",
        type=float,
        default=8.0,
        help="budget of the unbounded cache's keys and values (the buffer may hold up to twice that)",
    )
    parser.add_argument("--fill_chunk", type=int, default=16, help="frames per call while filling the cache")
    args = parser.parse_args()
    results = run(args)
    image = str(Path(args.output).with_suffix(".png"))
    plot(results, image)
    text = report(results, args, image)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
