"""Long synthetic streams for streaming video QA: world videos stitched end to end, with timed questions.

`write_stream` concatenates videos of one split of a world (`generate_world`) into one mp4 and
returns its timeline: which source video occupies which frames, and every action segment in
stream time (read from the world's `grounding/<split>.csv`; the objects that stay still from the
third caption of `retrieval/<split>.csv`). `write_streams` writes a benchmark set: streams of
1, 10 and 60 minutes by default, `streams.json` (the timelines) and `items.json` (the questions).

Time: a question asked at `realtime` t seconds sees the frames before t, i.e. the first
k = t * fps frames; every time written is a whole number of frames. A segment of frames
[start, end) is happening at k when start < k <= end (its frames seen so far include its
first and the latest frame is one of its frames). Segments never overlap, so at most one
is happening at a time.

Layout: `items.json` is one list in OVO-Bench's `ovo_bench_new.json` layout, so the real
benchmark's reader loads it. Backward and real-time items are
`{"id", "task", "video", "realtime", "question", "options", "answer", "gt"}` where `options`
are plain texts, `answer` is the right option's text and `gt` its index (the letter is
`chr(65 + gt)`). SSR items are `{"id", "task", "video", "all_steps", "start_time", "end_time",
"test_info": [{"realtime", "step", "type"}]}`, CRR items `{"id", "task", "video", "question",
"answer", "ask_time", "clue_time", "test_info": [{"realtime", "type"}]}`, where type 1 means the
answer at that probe is "Yes" and 0 "No". (OVO's REC items, `{"activity", "test_info":
[{"realtime", "count"}]}`, are not generated: counts need number words.) Synthetic items also
carry `"evidence": [start_s, end_s]` and SSR items a `"question"`; OVO's readers ignore both.

Tasks (OVO-Bench codes):

* EPM (backward, episodic memory): "Which object was moving left?" The answer did it in a
  segment that ended at least `min_gap_s` before the question and not since; no other option
  did it anywhere in the stream up to the question, so the past makes the answer unique.
* ASI (backward, action sequence): "What did the red square do first?" The first action of that
  object in the whole stream, ended at least `min_gap_s` before the question; the wrong options
  are preferably actions it did later (only the order rules them out). Evidence may lie at the
  very start of an hour-long stream.
* ACR (real-time, action recognition): "What is the red square doing now?" during one of its
  segments; the time-reversed action is always an option. Asked only when the name is unique
  in the current source video.
* OJR (real-time, object recognition): "Which object is moving left now?" during that segment;
  the other objects of the current source video are options.
* SSR (forward, sequential steps): "Is the red square moving left now?" asked before its next
  segment of that action; probes before the segment are "No", probes inside it "Yes" (OVO's SSR:
  yes while the step is being performed).
* CRR (forward, clues reveal responding): "Which object is moving left next?" asked when no
  segment of that action is happening; probes before the next such segment starts are "No",
  probes from its end on (the clue complete) are "Yes", and the answer is its object.

Words: every question, option and step uses the world's vocabulary (`world.json`
"vocabulary.words"; option pools keep only looks and actions whose words it has) plus
`EXTRA_WORDS`, which a word-level tokenizer must add.
"""

from __future__ import annotations

import ast
import bisect
import csv
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..video import FrameDecoder
from .world import ACTIONS, COLOURS, REVERSED_ACTION, SHAPES, words
from .writers import OBJECT_NAMES, QA_OPTIONS

EXTRA_WORDS = ("doing", "first", "is", "no", "now", "yes")  # the questions' words a world lacks
CATEGORY_TASKS = {"backward": ("EPM", "ASI"), "realtime": ("ACR", "OJR"), "forward": ("SSR", "CRR")}
DEFAULT_MINUTES = (1, 10, 60)
MIN_GAP_S = 12.0  # backward evidence ends at least this long before the question (two 6 s videos)
FORWARD_WINDOW_S = 10.0  # forward questions are asked at most this long before their evidence
TRIES_PER_ITEM = 50  # random attempts per wanted item before a task settles for fewer


@dataclass(frozen=True)
class SourceVideo:
    """One world video as the world's files describe it: its objects (looks, one per object) and
    its action segments (look, action, first frame, end frame exclusive)."""

    video_id: str
    objects: tuple[str, ...]
    segments: tuple[tuple[str, str, int, int], ...]


@dataclass(frozen=True)
class StreamSource:
    """A source video's place in the stream: frames [start, start + length)."""

    video_id: str
    start: int
    length: int
    objects: tuple[str, ...]


@dataclass(frozen=True)
class StreamSegment:
    """An action in stream frames [start, end) by an object of look `look` of source `source`."""

    look: str
    action: str
    start: int
    end: int
    source: int


@dataclass(frozen=True)
class Timeline:
    """Sources and segments of a stream in frames; segments sorted by start and never overlapping."""

    fps: int
    sources: tuple[StreamSource, ...]
    segments: tuple[StreamSegment, ...]

    @property
    def frame_count(self) -> int:
        last = self.sources[-1]
        return last.start + last.length

    def seconds(self, frames: int) -> float:
        return round(frames / self.fps, 3)

    def happening(self, k: int) -> StreamSegment | None:
        """The segment happening when the first `k` frames have been seen, if any."""
        i = bisect.bisect_left([s.start for s in self.segments], k) - 1
        return self.segments[i] if i >= 0 and k <= self.segments[i].end else None

    def seen(self, k: int) -> list[StreamSegment]:
        """The segments begun within the first `k` frames."""
        return [s for s in self.segments if s.start < k]

    def source_of(self, segment: StreamSegment) -> StreamSource:
        return self.sources[segment.source]

    def record(self) -> dict[str, Any]:
        """JSON-ready timeline: frames and seconds of every source and segment."""
        sources = [
            {**asdict(s), "objects": list(s.objects), "start_s": self.seconds(s.start), "end_s": self.seconds(s.start + s.length)}
            for s in self.sources
        ]
        segments = [
            {
                **asdict(s),
                "video_id": self.sources[s.source].video_id,
                "start_s": self.seconds(s.start),
                "end_s": self.seconds(s.end),
            }
            for s in self.segments
        ]
        return {"fps": self.fps, "frame_count": self.frame_count, "duration_s": self.seconds(self.frame_count),
                "sources": sources, "segments": segments}  # fmt: skip

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Timeline:
        sources = tuple(StreamSource(s["video_id"], s["start"], s["length"], tuple(s["objects"])) for s in record["sources"])
        segments = tuple(StreamSegment(s["look"], s["action"], s["start"], s["end"], s["source"]) for s in record["segments"])
        return cls(record["fps"], sources, segments)


# --- reading the world ------------------------------------------------------------------------


def read_world(world_root: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(world_root) / "world.json").read_text())


def read_split(world_root: str | os.PathLike, split: str) -> list[SourceVideo]:
    """Every video of `split` (in the retrieval table's order) with its objects and segments."""
    root, fps = Path(world_root), read_world(world_root)["config"]["fps"]
    segments: dict[str, list[tuple[str, str, int, int]]] = {}
    for row in _rows(root / f"grounding/{split}.csv"):
        look, action = parse_caption(row["text"])
        window = (round(float(row["start_second"]) * fps), round(float(row["end_second"]) * fps))
        segments.setdefault(row["video_id"], []).append((look, action, *window))
    videos = []
    for row in _rows(root / f"retrieval/{split}.csv"):
        own = sorted(segments.get(row["video_id"], []), key=lambda s: s[2])
        objects = (*(s[0] for s in own), *still_objects(ast.literal_eval(row["text"])))
        videos.append(SourceVideo(row["video_id"], objects, tuple(own)))
    return videos


def parse_caption(text: str) -> tuple[str, str]:
    """("red square", "moving left") from a grounding caption "a red square moving left"."""
    parts = text.removeprefix("a ").split(" ", 2)
    if len(parts) != 3 or parts[0] not in COLOURS or parts[1] not in SHAPES or parts[2] not in ACTIONS:
        raise ValueError(f"not a caption of the synthetic world: {text!r}")
    return f"{parts[0]} {parts[1]}", parts[2]


def still_objects(captions: list[str]) -> list[str]:
    """The looks of the objects that stay still: named after "next to" in the third retrieval caption."""
    if len(captions) < 3 or " next to " not in captions[2]:
        return []
    return [name.removeprefix("a ") for name in captions[2].rsplit(" next to ", 1)[1].split(" and ")]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --- the stream ---------------------------------------------------------------------------------


def pick_videos(videos: list[SourceVideo], count: int, rng: np.random.Generator) -> list[SourceVideo]:
    """`count` videos: shuffled passes over the split, so a video recurs only once all others have."""
    picked: list[SourceVideo] = []
    while len(picked) < count:
        picked += [videos[i] for i in rng.permutation(len(videos))]
    return picked[:count]


def build_timeline(videos: list[SourceVideo], length: int, fps: int) -> Timeline:
    """The videos end to end, `length` frames each, with their segments shifted to stream time."""
    sources, segments = [], []
    for i, video in enumerate(videos):
        start = i * length
        sources.append(StreamSource(video.video_id, start, length, video.objects))
        segments += [StreamSegment(look, action, start + a, start + b, i) for look, action, a, b in video.segments]
    return Timeline(fps, tuple(sources), tuple(segments))


class StreamEncoder:
    """An H.264 mp4 written chunk by chunk with `write_video`'s settings (crf 18, GOP 16, mb-tree
    off for deterministic bytes). `write_video` takes a whole array; an hour of frames must not be
    one, so this writes as frames arrive, to `<path>.partial`, renamed when closed cleanly."""

    def __init__(self, path: str | os.PathLike, fps: int, size: int) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.container = av.open(str(self.partial), mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = size, size, "yuv420p"
        self.stream.options = {"crf": "18", "g": "16", "x264-params": "mbtree=0"}
        self.frames = 0

    def write(self, frames: np.ndarray) -> None:
        import av

        for frame in frames:
            self.container.mux(self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        self.frames += len(frames)

    def __enter__(self) -> StreamEncoder:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            self.container.mux(self.stream.encode())
        self.container.close()
        if error_type is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


def encode_stream(world_root: str | os.PathLike, timeline: Timeline, path: str | os.PathLike, size: int) -> int:
    """Decode each source (the backbone's `FrameDecoder`) and append it to the stream; one source
    video is in memory at a time. Returns the frames written."""
    with StreamEncoder(path, timeline.fps, size) as encoder:
        for source in timeline.sources:
            decoder = FrameDecoder(Path(world_root) / "videos" / f"{source.video_id}.mp4")
            if decoder.frame_count != source.length:
                raise ValueError(f"{source.video_id} has {decoder.frame_count} frames, the world says {source.length}")
            encoder.write(decoder.read(range(source.length)).numpy())
    return encoder.frames


def write_stream(
    world_root: str | os.PathLike, out_dir: str | os.PathLike, name: str, minutes: float, seed: int, split: str = "val"
) -> dict[str, Any]:
    """Write `<out_dir>/videos/<name>.mp4`, `minutes` long (rounded up to whole source videos), from
    videos of `split` picked with `seed`; returns its record (name, video path relative to
    `out_dir`, split, seed, and the timeline of `Timeline.record`)."""
    config = read_world(world_root)["config"]
    fps, length = config["fps"], config["num_frames"]
    count = max(1, math.ceil(minutes * 60 * fps / length))
    rng = np.random.default_rng([seed, count])
    timeline = build_timeline(pick_videos(read_split(world_root, split), count, rng), length, fps)
    video = f"videos/{name}.mp4"
    encode_stream(world_root, timeline, Path(out_dir) / video, config["size"])
    return {"name": name, "video": video, "minutes": minutes, "split": split, "seed": seed, **timeline.record()}


# --- questions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pools:
    """The looks and actions options may name: those whose every word is in the world's vocabulary."""

    looks: tuple[str, ...]
    actions: tuple[str, ...]

    @classmethod
    def of(cls, vocabulary: list[str]) -> Pools:
        known = set(vocabulary)
        return cls(
            tuple(n for n in OBJECT_NAMES if set(n.split()) <= known), tuple(a for a in ACTIONS if set(a.split()) <= known)
        )


@dataclass(frozen=True)
class Asker:
    """What every task generator needs: the timeline, the option pools, the random source and the gap."""

    timeline: Timeline
    pools: Pools
    rng: np.random.Generator
    gap: int  # backward evidence ends at least this many frames before the question

    def pick(self, items: Sequence[Any], count: int) -> list[Any]:
        """`count` distinct items in random order."""
        return [items[i] for i in self.rng.choice(len(items), count, replace=False)]

    def inside(self, segment: StreamSegment) -> int:
        """A question time (frames seen) well inside `segment`: not at its first or last frame."""
        return int(self.rng.integers(segment.start + 2, segment.end))

    def multiple_choice(
        self, task: str, k: int, question: str, answer: str, wrong: list[str], evidence: StreamSegment
    ) -> dict[str, Any]:
        options = self.pick([answer, *wrong], QA_OPTIONS)
        seconds = self.timeline.seconds
        return {"task": task, "realtime": seconds(k), "question": question, "options": options, "answer": answer,
                "gt": options.index(answer), "evidence": [seconds(evidence.start), seconds(evidence.end)]}  # fmt: skip


def epm_item(asker: Asker) -> dict[str, Any] | None:
    """EPM, "Which object was <action>?": evidence ended >= gap ago and not since; no wrong option ever did it."""
    timeline, rng = asker.timeline, asker.rng
    k = int(rng.integers(asker.gap + 1, timeline.frame_count + 1))
    seen = timeline.seen(k)
    candidates = [s for s in seen if s.end <= k - asker.gap and s.action in asker.pools.actions]
    rng.shuffle(candidates)
    for evidence in candidates:
        same = [s for s in seen if (s.look, s.action) == (evidence.look, evidence.action)]
        if any(s.end > k - asker.gap for s in same):
            continue  # done again lately: not a memory question
        did = {s.look for s in seen if s.action == evidence.action}
        wrong = [n for n in asker.pools.looks if n not in did]
        if len(wrong) >= QA_OPTIONS - 1:
            question = f"Which object was {evidence.action}?"
            return asker.multiple_choice("EPM", k, question, evidence.look, asker.pick(wrong, QA_OPTIONS - 1), same[-1])
    return None


def asi_item(asker: Asker) -> dict[str, Any] | None:
    """ASI, "What did the <look> do first?": its first action in the stream, ended >= gap ago."""
    timeline, rng = asker.timeline, asker.rng
    k = int(rng.integers(asker.gap + 1, timeline.frame_count + 1))
    firsts: dict[str, StreamSegment] = {}
    for segment in timeline.seen(k):
        firsts.setdefault(segment.look, segment)
    candidates = [s for s in firsts.values() if s.end <= k - asker.gap and s.action in asker.pools.actions]
    if not candidates:
        return None
    first = candidates[int(rng.integers(len(candidates)))]
    later = list(dict.fromkeys(s.action for s in timeline.seen(k) if s.look == first.look and s.action != first.action))
    later = [a for a in later if a in asker.pools.actions]
    others = [a for a in asker.pools.actions if a != first.action and a not in later]
    wrong = asker.pick(later, min(len(later), QA_OPTIONS - 1))
    if len(wrong) + len(others) < QA_OPTIONS - 1:
        return None
    wrong += asker.pick(others, QA_OPTIONS - 1 - len(wrong))
    return asker.multiple_choice("ASI", k, f"What did the {first.look} do first?", first.action, wrong, first)


def acr_item(asker: Asker) -> dict[str, Any] | None:
    """ACR, "What is the <look> doing now?" inside its segment; the reversed action is always an option."""
    segment = asker.pick(asker.timeline.segments, 1)[0]
    reverse = REVERSED_ACTION[segment.action]
    others = [a for a in asker.pools.actions if a not in (segment.action, reverse)]
    if asker.timeline.source_of(segment).objects.count(segment.look) > 1 or reverse not in asker.pools.actions:
        return None  # "the red square" must name one object
    if segment.action not in asker.pools.actions or len(others) < QA_OPTIONS - 2:
        return None
    wrong = [reverse, *asker.pick(others, QA_OPTIONS - 2)]
    question = f"What is the {segment.look} doing now?"
    return asker.multiple_choice("ACR", asker.inside(segment), question, segment.action, wrong, segment)


def ojr_item(asker: Asker) -> dict[str, Any] | None:
    """OJR, "Which object is <action> now?" inside its segment; the other objects in view are options."""
    segment = asker.pick(asker.timeline.segments, 1)[0]
    present = [n for n in dict.fromkeys(asker.timeline.source_of(segment).objects) if n != segment.look]
    fillers = [n for n in asker.pools.looks if n != segment.look and n not in present]
    if segment.look not in asker.pools.looks or len(present) + len(fillers) < QA_OPTIONS - 1:
        return None
    wrong = present + asker.pick(fillers, QA_OPTIONS - 1 - len(present))
    question = f"Which object is {segment.action} now?"
    return asker.multiple_choice("OJR", asker.inside(segment), question, segment.look, wrong, segment)


def ssr_item(asker: Asker) -> dict[str, Any] | None:
    """SSR, "Is the <look> <action> now?" asked before its next such segment: No before it, Yes inside."""
    timeline, rng = asker.timeline, asker.rng
    index = int(rng.integers(len(timeline.segments)))
    target = timeline.segments[index]
    earlier = [s for s in timeline.segments[:index] if (s.look, s.action) == (target.look, target.action)]
    lowest = max(earlier[-1].end + 1 if earlier else 1, target.start - round(FORWARD_WINDOW_S * timeline.fps))
    if target.start - 1 - lowest < 1 or target.end - target.start < 3:
        return None  # room for two "No" probes one frame clear of the segment, and a "Yes" inside it
    no = sorted(int(k) for k in asker.pick(range(lowest, target.start), 2))
    yes = sorted(int(k) for k in asker.pick(range(target.start + 2, target.end), min(3, target.end - target.start - 2)))
    step = f"a {target.look} {target.action}"
    probes = [{"realtime": timeline.seconds(k), "step": step, "type": int(k in yes)} for k in no + yes]
    return {"task": "SSR", "question": f"Is the {target.look} {target.action} now?", "all_steps": [step],
            "start_time": [timeline.seconds(target.start)], "end_time": [timeline.seconds(target.end)],
            "test_info": probes, "evidence": [timeline.seconds(target.start), timeline.seconds(target.end)]}  # fmt: skip


def crr_item(asker: Asker) -> dict[str, Any] | None:
    """CRR, "Which object is <action> next?" asked when no such segment is happening: No until the next
    one starts, Yes from its end (the clue complete); the answer is its object."""
    timeline, rng = asker.timeline, asker.rng
    index = int(rng.integers(len(timeline.segments)))
    clue = timeline.segments[index]
    earlier = [s for s in timeline.segments[:index] if s.action == clue.action]
    lowest = max(earlier[-1].end + 1 if earlier else 1, clue.start - round(FORWARD_WINDOW_S * timeline.fps))
    if clue.start - lowest < 1:
        return None
    ask, waiting = sorted(int(k) for k in asker.pick(range(lowest, clue.start + 1), 2))
    after = sorted({min(clue.end + round(s * timeline.fps), timeline.frame_count) for s in (0, 2, 5)})
    probes = [{"realtime": timeline.seconds(k), "type": int(k >= clue.end)} for k in (ask, waiting, *after)]
    return {"task": "CRR", "question": f"Which object is {clue.action} next?", "answer": clue.look,
            "ask_time": timeline.seconds(ask), "clue_time": timeline.seconds(clue.end), "test_info": probes,
            "evidence": [timeline.seconds(clue.start), timeline.seconds(clue.end)]}  # fmt: skip


TASKS: dict[str, Callable[[Asker], dict[str, Any] | None]] = {
    "EPM": epm_item, "ASI": asi_item, "ACR": acr_item, "OJR": ojr_item, "SSR": ssr_item, "CRR": crr_item,
}  # fmt: skip


def item_key(item: dict[str, Any]) -> str:
    """Items with the same key ask the same thing at the same time: kept once."""
    times = [probe["realtime"] for probe in item.get("test_info", [])]
    return json.dumps([item["task"], item["question"], item.get("realtime"), times])


def task_items(asker: Asker, task: str, count: int) -> Iterator[dict[str, Any]]:
    """Up to `count` distinct items of `task` (fewer when `TRIES_PER_ITEM * count` attempts do not find them)."""
    keys: set[str] = set()
    for _ in range(TRIES_PER_ITEM * count):
        if len(keys) == count:
            return
        item = TASKS[task](asker)
        if item is not None and item_key(item) not in keys:
            keys.add(item_key(item))
            yield item


def stream_items(
    record: dict[str, Any], vocabulary: list[str], items_per_category: int, seed: int, min_gap_s: float = MIN_GAP_S
) -> list[dict[str, Any]]:
    """The questions of one stream (its `write_stream` record), `items_per_category` per category
    spread evenly over the category's tasks, sorted by task then time; ids are left to the caller."""
    timeline = Timeline.from_record(record)
    items = []
    for number, (_category, tasks) in enumerate(CATEGORY_TASKS.items()):
        for i, task in enumerate(tasks):
            rng = np.random.default_rng([seed, timeline.frame_count, number, i])
            asker = Asker(timeline, Pools.of(vocabulary), rng, math.ceil(min_gap_s * timeline.fps))
            count = items_per_category // len(tasks) + (i < items_per_category % len(tasks))
            found = sorted(task_items(asker, task, count), key=question_time)
            items += [{"task": task, "video": record["video"], **item} for item in found]
    return items


def question_time(item: dict[str, Any]) -> float:
    """When the question is asked: `realtime`, or a forward item's first probe."""
    return item["realtime"] if "realtime" in item else item["test_info"][0]["realtime"]


def write_streams(
    world_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    minutes: tuple[float, ...] = DEFAULT_MINUTES,
    items_per_category: int = 30,
    seed: int = 0,
    split: str = "val",
    min_gap_s: float = MIN_GAP_S,
) -> dict[str, Any]:
    """A benchmark set: one stream per entry of `minutes` (`<out_dir>/videos/stream_<m>min.mp4`),
    `streams.json` (their records) and `items.json` (every stream's questions, OVO-Bench layout,
    ids numbered from 0). Deterministic in `seed`. Returns {"streams": {name: frames},
    "items": {name: {task: count}}}."""
    out, vocabulary = Path(out_dir), read_world(world_root)["vocabulary"]["words"]
    records, items = [], []
    for length in minutes:
        records.append(write_stream(world_root, out, f"stream_{length:g}min", length, seed, split))
        items += stream_items(records[-1], vocabulary, items_per_category, seed, min_gap_s)
    items = [{"id": i, **item} for i, item in enumerate(items)]
    (out / "streams.json").write_text(json.dumps(records, indent=1))
    (out / "items.json").write_text(json.dumps(items, indent=1))
    counts: dict[str, dict[str, int]] = {r["name"]: {} for r in records}
    for item in items:
        name = Path(item["video"]).stem
        counts[name][item["task"]] = counts[name].get(item["task"], 0) + 1
    return {"streams": {r["name"]: r["frame_count"] for r in records}, "items": counts}


def question_words(items: list[dict[str, Any]]) -> list[str]:
    """Every word of the items' questions, options, steps and answers (for the tokenizer check)."""
    texts = []
    for item in items:
        texts += [item.get("question", ""), *item.get("options", []), *item.get("all_steps", [])]
        texts += [item["answer"]] if isinstance(item.get("answer"), str) else []
    return words(texts)
