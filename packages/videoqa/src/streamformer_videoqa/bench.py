"""The memory benchmark (`streamformer-videoqa bench-memory`): every memory policy on the same
timed questions of the same streams, timed side by side.

For each stream (by default the synthetic world's 1-, 10- and 60-minute streams of
`streamformer.synthetic.streams`) and each policy, one `StreamingSession` watches the whole
stream and answers each question at its time: a multiple-choice question once, a forward
question once per probe (yes / no at each probe time). Reported per policy:

* accuracy per category (backward / real-time / forward) by OVO-Bench's aggregation (per task,
  then the mean of each category's tasks, then the mean of the categories), chance beside it;
* tokens kept (the LM cache plus a policy's own memory; the most over the stream), the peak bytes
  of both caches, per-frame latency, and per-answer latency (time to the first answer token);
* how each grows with the stream's length, and the per-frame cost after the longest stream over
  that of a fresh stream's first minute, measured side by side on alternating frames so that the
  machine's drift cancels (bounded policies should stay flat: at most 1.2).

Questions the LM's context cannot take (the `full` policy on long streams) count as wrong and are
counted in `unanswered`.
"""

from __future__ import annotations

import json
import os
import statistics
import string
from collections import defaultdict
from pathlib import Path
from typing import Any

from .benchmarks import CATEGORIES, Outcome, TimedQuestion, aggregate, outcomes, read_ovo_bench
from .memory import build_policy
from .model import StreamFormerForVideoQA
from .session import StreamingSession, run_stream, video_frames

FLAT_RATIO = 1.2  # per-frame cost after the longest stream over a fresh stream's, that a bounded policy must stay within
PAIR_EVERY = 10  # every 10th frame of a stream is also timed on a fresh session


def questions_to_ask(question: TimedQuestion) -> list[dict[str, Any]]:
    """The asks of one question: a multiple-choice question at its time (options lettered), or a
    forward question at each probe time."""
    if question.probes is None:
        letters = string.ascii_uppercase
        options = [f"{letters[i]}. {option}" for i, option in enumerate(question.options)]
        return [{"id": question.id, "time_s": question.time_s, "question": question.question, "options": options}]
    return [
        {
            "id": f"{question.id}/{k}",
            "time_s": probe.time_s,
            "question": question.question + (f" {probe.step}" if probe.step else ""),
        }
        for k, probe in enumerate(question.probes)
    ]


def chance_outcomes(question: TimedQuestion) -> list[Outcome]:
    """What guessing scores on each unit: 1 / options, or one half for a yes / no probe."""
    if question.probes is None:
        return [Outcome(question.category, question.task, 1 / len(question.options))]
    return [Outcome(question.category, question.task, 0.5) for _ in question.probes]


def run_policy(
    model: StreamFormerForVideoQA,
    tokenizer,
    policy: str,
    budgets: dict[str, Any],
    video: str | os.PathLike,
    questions: list[TimedQuestion],
    fps: float,
    vision_window: int | None,
    max_new_tokens: int,
    pair_every: int = PAIR_EVERY,
    fresh_frames: int = 60,
) -> dict[str, Any]:
    """One policy over one stream: its outcomes and its costs.

    Past its first `fresh_frames` frames, every `pair_every`-th frame of the stream is also fed
    to a fresh session of the same policy (restarted every `fresh_frames` frames), right after:
    the two per-frame costs, measured side by side, give how much the stream's length has added
    (`paired_ratio`, the median of one over the median of the other), whatever the machine's
    load does meanwhile."""

    def new_session() -> StreamingSession:
        return StreamingSession(model, tokenizer, build_policy(policy, **budgets), vision_window, max_new_tokens)

    session = new_session()
    asks = [ask for question in questions for ask in questions_to_ask(question)]
    peak = {"tokens": 0, "bytes": 0}
    latest: dict[str, Any] = {}
    fresh: dict[str, Any] = {"session": None}
    paired: list[tuple[int, float]] = []  # (frame index in the stream, the fresh session's seconds)

    def remember(frames):
        for time_s, frame in frames:
            latest["frame"] = frame
            yield time_s, frame

    def track(stream: StreamingSession) -> None:
        stats = stream.stats()
        peak["tokens"] = max(peak["tokens"], stats["lm_tokens"] + stats["memory_tokens"])
        peak["bytes"] = max(peak["bytes"], stats["lm_bytes"] + stats["vision_bytes"])
        if pair_every and stream.frames_seen > fresh_frames and stream.frames_seen % pair_every == 0:
            if fresh["session"] is None or fresh["session"].frames_seen >= fresh_frames:
                fresh["session"] = new_session()
            other = fresh["session"]
            paired.append((stream.frames_seen - 1, other.add_frame(latest["frame"], float(other.frames_seen) / fps)))

    frames = remember(video_frames(video, fps, model.config.vision_config.image_size))
    answers, latencies = run_stream(session, frames, asks, on_frame=track)
    replies = {answer.id: answer for answer in answers}
    results: list[Outcome] = []
    for question in questions:
        got = [replies[ask["id"]].reply for ask in questions_to_ask(question)]
        results += outcomes(question, got[0] if question.probes is None else got)
    answered = [a for a in answers if a.error is None]
    paired = [(i, fresh_s) for i, fresh_s in paired if i < len(latencies)]
    ratio = statistics.median(latencies[i] for i, _ in paired) / statistics.median(f for _, f in paired) if paired else None
    return {
        "outcomes": results,
        "frames": len(latencies),
        "frame_ms": 1000 * sum(latencies) / max(1, len(latencies)),
        "paired_ratio": ratio,
        "pairs": len(paired),
        "first_token_ms": 1000 * sum(a.prefill_s for a in answered) / max(1, len(answered)),
        "answer_ms": 1000 * sum(a.answer_s for a in answered) / max(1, len(answered)),
        "unanswered": len(answers) - len(answered),
        "asks": len(answers),
        "peak_tokens": peak["tokens"],
        "peak_mib": peak["bytes"] / 2**20,
    }


def bench_memory(
    model: str,
    streams: str,
    world: str | None = None,
    minutes: list[float] = [1, 10, 60],  # noqa: B006 (jsonargparse reads the default)
    output: str = "docs/videoqa/memory.md",
    policies: dict[str, dict[str, Any]] | None = None,
    extra_rows: dict[str, dict[str, Any]] | None = None,
    fps: float = 1.0,
    vision_window: int | None = 256,
    max_new_tokens: int = 4,
    fresh_seconds: float = 60.0,
    device: str | None = None,
) -> dict[str, Any]:
    """Run every policy on every stream's questions; write the tables (`output`), the figures
    (`.json` beside it) and a plot (`.png`).

    Args:
        model: a video QA model folder (its tokenizer inside), e.g. `make videoqa-demo`'s.
        streams: a folder of streams and OVO-layout items (`streamformer.synthetic.streams.write_streams`:
            `items.json`, `videos/`), or OVO-Bench's own (`items.json` with videos by relative path).
        world: a synthetic world to write the streams from when `streams` has no `items.json` yet.
        minutes: the lengths of the streams written from `world`.
        policies: {name: budgets}; default: every policy at its defaults.
        extra_rows: more rows, {row name: {"policy", "budgets", "model"}}: a policy with another
            model (e.g. one trained on that policy's contexts, `aligned.train_aligned`).
        fps: frames per second taken from the streams.
        vision_window: the backbone's temporal window, in frames.
        max_new_tokens: longest answer (a letter or yes / no).
        fresh_seconds: the fresh stream that per-frame costs are compared with, side by side
            (`run_policy`): its first this many seconds.
        device: where the model runs (default: CUDA when available).
    """
    from transformers import AutoTokenizer

    from streamformer.checkpoints import default_device

    policies = policies or {name: {} for name in ("full", "recent", "streamingvlm", "streamforest")}
    rows = {name: (name, budgets, model) for name, budgets in policies.items()}
    for name, row in (extra_rows or {}).items():
        if set(row) - {"policy", "budgets", "model"} or "policy" not in row:
            raise ValueError(f"extra row {name!r} needs 'policy' (and optionally 'budgets', 'model'), got {sorted(row)}")
        rows[name] = (row["policy"], row.get("budgets", {}), row.get("model", model))
    loaded: dict[str, tuple[StreamFormerForVideoQA, Any]] = {}
    for path in {path for _, _, path in rows.values()}:
        net = StreamFormerForVideoQA.from_pretrained(path).to(default_device(device)).eval()
        loaded[path] = (net, AutoTokenizer.from_pretrained(path))
    root = Path(streams)
    if not (root / "items.json").exists():
        if world is None:
            raise FileNotFoundError(f"{root / 'items.json'} not found (give --world to write synthetic streams there)")
        from streamformer.synthetic.streams import write_streams

        write_streams(world, root, tuple(minutes))
    questions = read_ovo_bench(root / "items.json")
    by_video: dict[str, list[TimedQuestion]] = defaultdict(list)
    for question in questions:
        by_video[question.video].append(question)
    runs: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in rows}
    durations = {video: _minutes(root, video) for video in by_video}  # each video's length, read once
    for video, asked in sorted(by_video.items(), key=lambda kv: durations[kv[0]]):
        for name, (policy, budgets, path) in rows.items():
            print(f"{name} on {video} ({len(asked)} questions)", flush=True)
            runs[name][video] = run_policy(
                *loaded[path], policy, budgets, root / video, asked, fps, vision_window, max_new_tokens,
                fresh_frames=max(1, round(fresh_seconds * fps)),
            )  # fmt: skip
    settings = {name: {"policy": p, "budgets": b, "model": m} for name, (p, b, m) in rows.items()}
    report = summarise(runs, questions, durations, settings, fps, fresh_seconds)
    write_report(report, output)
    return report


def _minutes(root: Path, video: str) -> float:
    from streamformer.video import video_info

    return video_info(root / video).duration / 60


def summarise(runs, questions, durations: dict[str, float], policies, fps: float, fresh_seconds: float) -> dict[str, Any]:
    chance = aggregate(o for q in questions for o in chance_outcomes(q))
    rows = {}
    for name, per_video in runs.items():
        scores = aggregate(o for run in per_video.values() for o in run["outcomes"])
        lengths = sorted(per_video, key=durations.__getitem__)
        growth = [
            {"video": v, "minutes": round(durations[v], 2), **{k: per_video[v][k] for k in (
                "frames", "frame_ms", "paired_ratio", "pairs", "first_token_ms", "answer_ms", "peak_tokens", "peak_mib", "unanswered", "asks")},
             "accuracy": aggregate(per_video[v]["outcomes"]).overall}
            for v in lengths
        ]  # fmt: skip
        ratio = growth[-1]["paired_ratio"]  # the longest stream against fresh sessions, side by side
        rows[name] = {"setting": policies[name], "categories": scores.categories, "overall": scores.overall,
                      "growth": growth, "frame_ms_ratio": ratio}  # fmt: skip
    return {
        "fps": fps,
        "fresh_seconds": fresh_seconds,
        "chance": {"categories": chance.categories, "overall": chance.overall},
        "policies": rows,
    }


def write_report(report: dict[str, Any], output: str) -> None:
    categories = [c for c in CATEGORIES if c in report["chance"]["categories"]]
    lines = [
        "# Streaming video QA: memory policies side by side",
        "",
        "Produced by `streamformer-videoqa bench-memory` (`make streaming-qa-demo`). Every policy watched the same",
        f"streams at {report['fps']:g} fps and answered the same questions at their times. Accuracy is OVO-Bench's",
        "aggregation (per task, then per category, then the mean of the categories). A question the LM's context",
        "could not take counts as wrong (`unanswered`). Timings are one CPU run: compare them within the table.",
        "",
        "| policy | " + " | ".join(categories) + " | overall | most tokens kept | peak cache MiB | unanswered |",
        "|---|" + "---|" * (len(categories) + 4),
        "| chance | "
        + " | ".join(f"{report['chance']['categories'][c]:.3f}" for c in categories)
        + f" | {report['chance']['overall']:.3f} | | | |",
    ]
    for name, row in report["policies"].items():
        cells = " | ".join(f"{row['categories'].get(c, float('nan')):.3f}" for c in categories)
        tokens = max(g["peak_tokens"] for g in row["growth"])
        mib = max(g["peak_mib"] for g in row["growth"])
        unanswered = sum(g["unanswered"] for g in row["growth"])
        asks = sum(g["asks"] for g in row["growth"])
        lines.append(f"| {name} | {cells} | {row['overall']:.3f} | {tokens} | {mib:.2f} | {unanswered} of {asks} |")
    lines += [
        "",
        "## Growth with the stream's length",
        "",
        "| policy | stream (min) | frames | ms per frame | ms to first answer token | ms per answer | tokens kept | "
        "peak cache MiB | accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["policies"].items():
        for g in row["growth"]:
            lines.append(
                f"| {name} | {g['minutes']:g} | {g['frames']} | {g['frame_ms']:.2f} | {g['first_token_ms']:.1f} | "
                f"{g['answer_ms']:.1f} | {g['peak_tokens']} | {g['peak_mib']:.2f} | {g['accuracy']:.3f} |"
            )
    lines += [
        "",
        f"Per-frame cost after the longest stream over that of a fresh stream's first {report['fresh_seconds']:g} s, "
        f"measured side by side (every {PAIR_EVERY}th frame of the long stream is also fed to a fresh session, "
        f"restarted every {report['fresh_seconds']:g} s; ratio of the medians; flat: at most {FLAT_RATIO}). The "
        "`ms per frame` means above come from runs minutes apart and carry the machine's drift; these ratios do not:",
        "",
    ]
    for name, row in report["policies"].items():
        ratio = row["frame_ms_ratio"]
        if ratio is None:
            lines.append(f"- {name}: no stream longer than {report['fresh_seconds']:g} s")
            continue
        last = row["growth"][-1]
        verdict = "flat" if ratio <= FLAT_RATIO else "grows"
        note = (
            f" (stopped after {last['frames']} frames, when the LM's context filled)"
            if last["unanswered"] and name == "full"
            else ""
        )
        lines.append(f"- {name}: {ratio:.2f} at {last['minutes']:g} min ({last['pairs']} pairs), {verdict}{note}")
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot_report(report, path.with_suffix(".png"))
    print("\n".join(lines))


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["policies"])
    categories = [c for c in CATEGORIES if c in report["chance"]["categories"]]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [report["policies"][name]["categories"].get(c, 0.0) for c in categories]
        axes[0].bar([k + i * width for k in range(len(categories))], values, width, label=name)
    for k, c in enumerate(categories):
        axes[0].hlines(report["chance"]["categories"][c], k - width / 2, k + 0.8 - width / 2, colors="k", linestyles="dashed")
    axes[0].set_xticks([k + 0.4 - width / 2 for k in range(len(categories))], categories)
    axes[0].set_ylabel("accuracy (dashed: chance)")
    axes[0].legend()
    for name in names:
        growth = report["policies"][name]["growth"]
        minutes = [g["minutes"] for g in growth]
        axes[1].plot(minutes, [g["frame_ms"] for g in growth], marker="o", label=name)
        axes[2].plot(minutes, [g["peak_tokens"] for g in growth], marker="o", label=name)
    for axis, label in ((axes[1], "ms per frame"), (axes[2], "most tokens kept")):
        axis.set_xscale("log")
        axis.set_xlabel("stream length (minutes)")
        axis.set_ylabel(label)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
