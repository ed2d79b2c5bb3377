"""Long synthetic streams: the stream is its sources end to end, its timeline is the world's
annotations moved to stream time, and every question's answer follows from that timeline (checked
here from `streams.json` alone, without the module's own helpers)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamformer.synthetic import WorldConfig, generate_world
from streamformer.synthetic.streams import CATEGORY_TASKS, EXTRA_WORDS, MIN_GAP_S, question_words, write_streams
from streamformer.video import FrameDecoder

MINUTES = (0.5, 1.5)  # 10 and 30 source videos of 3 s
PER_CATEGORY = 8


def decoded(path: Path) -> np.ndarray:
    decoder = FrameDecoder(path)
    return decoder.read(range(decoder.frame_count)).numpy()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    generate_world(root, num_train=4, num_val=6, seed=0, config=WorldConfig(num_frames=24), progress=False)
    return root


@pytest.fixture(scope="module")
def bench(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("streams")
    write_streams(world, out, minutes=MINUTES, items_per_category=PER_CATEGORY, seed=0)
    return out


@pytest.fixture(scope="module")
def records(bench) -> dict[str, dict[str, Any]]:
    return {record["video"]: record for record in json.loads((bench / "streams.json").read_text())}


@pytest.fixture(scope="module")
def items(bench) -> list[dict[str, Any]]:
    return json.loads((bench / "items.json").read_text())


def frames_seen(record: dict[str, Any], seconds: float) -> int:
    k = seconds * record["fps"]
    assert k == round(k), f"{seconds} s is not a whole number of frames"
    return round(k)


def happening(record: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """Segments of which some frame, and the latest frame, is among the first k."""
    return [s for s in record["segments"] if s["start"] < k <= s["end"]]


def test_stream_is_its_sources_end_to_end(world, bench, records):
    for video, record in records.items():
        stream = decoded(bench / video)
        lengths = [source["length"] for source in record["sources"]]
        assert len(stream) == record["frame_count"] == sum(lengths) == math.ceil(record["minutes"] * 60 / 3) * 24
        for source in record["sources"]:
            original = decoded(world / "videos" / f"{source['video_id']}.mp4").astype(int)
            start, end = source["start"], source["start"] + source["length"]
            error = np.abs(stream[start:end].astype(int) - original)
            # Encoded a second time (crf 18): about 1.6 grey levels off on average; a frame off, 3.3.
            assert error.mean() < 2.5 and np.percentile(error, 99) < 12, (source, error.mean(), error.max())
            if end < len(stream):
                assert error.mean() < np.abs(stream[start + 1 : end + 1].astype(int) - original).mean()


def test_timeline_is_the_world_annotations_in_stream_time(world, records):
    with open(world / "grounding/val.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    val_ids = json.loads((world / "oad/data_info.json").read_text())["Synthetic"]["test_session_set"]
    for record in records.values():
        assert {s["video_id"] for s in record["sources"]} <= set(val_ids)
        for index, source in enumerate(record["sources"]):
            own = [s for s in record["segments"] if s["source"] == index]
            expected = [
                (r["text"], float(r["start_second"]), float(r["end_second"])) for r in rows if r["video_id"] == source["video_id"]
            ]
            shifted = [
                (f"a {s['look']} {s['action']}", s["start_s"] - source["start_s"], s["end_s"] - source["start_s"]) for s in own
            ]
            assert sorted(shifted) == sorted(expected)  # times are whole frames at 8 fps: exact in binary
            assert all(s["look"] in source["objects"] for s in own)


def test_every_category_has_its_tasks_in_the_ovo_layout(items, records):
    assert set(records) == {f"videos/stream_{m:g}min.mp4" for m in MINUTES}
    assert [item["id"] for item in items] == list(range(len(items)))
    for video in records:
        tasks = [item["task"] for item in items if item["video"] == video]
        assert sorted(tasks) == sorted(
            task for group in CATEGORY_TASKS.values() for task in group for _ in range(PER_CATEGORY // 2)
        )
    for item in items:
        if item["task"] in CATEGORY_TASKS["forward"]:
            assert item["test_info"] and all(set(p) >= {"realtime", "type"} for p in item["test_info"])
        else:
            assert set(item) >= {"id", "task", "video", "realtime", "question", "options", "answer", "gt"}
            assert len(set(item["options"])) == 4 and item["options"][item["gt"]] == item["answer"]


def test_backward_answers_follow_from_the_past_alone(items, records):
    for item in (i for i in items if i["task"] in CATEGORY_TASKS["backward"]):
        record = records[item["video"]]
        k, gap = frames_seen(record, item["realtime"]), math.ceil(MIN_GAP_S * record["fps"])
        past = [s for s in record["segments"] if s["start"] < k]
        assert item["evidence"][1] <= item["realtime"] - MIN_GAP_S
        if item["task"] == "EPM":
            action = item["question"].removeprefix("Which object was ").removesuffix("?")
            done = [s for s in past if (s["look"], s["action"]) == (item["answer"], action)]
            assert done and all(s["end"] <= k - gap for s in done)  # long ago, and not since
            assert not {s["look"] for s in past if s["action"] == action} & (set(item["options"]) - {item["answer"]})
        else:
            look = item["question"].removeprefix("What did the ").removesuffix(" do first?")
            first = next(s for s in record["segments"] if s["look"] == look)
            assert first["action"] == item["answer"] and first["end"] <= k - gap


def test_realtime_answers_are_what_happens_now(items, records):
    for item in (i for i in items if i["task"] in CATEGORY_TASKS["realtime"]):
        record = records[item["video"]]
        (now,) = happening(record, frames_seen(record, item["realtime"]))
        if item["task"] == "ACR":
            look = item["question"].removeprefix("What is the ").removesuffix(" doing now?")
            assert (now["look"], now["action"]) == (look, item["answer"])
            assert record["sources"][now["source"]]["objects"].count(look) == 1
        else:
            action = item["question"].removeprefix("Which object is ").removesuffix(" now?")
            assert (now["look"], now["action"]) == (item["answer"], action)


def test_forward_probes_flip_from_no_to_yes_at_the_evidence(items, records):
    for item in (i for i in items if i["task"] in CATEGORY_TASKS["forward"]):
        record = records[item["video"]]
        times = [probe["realtime"] for probe in item["test_info"]]
        types = [probe["type"] for probe in item["test_info"]]
        assert times == sorted(times) and types == sorted(types) and types[0] == 0 and types[-1] == 1
        if item["task"] == "SSR":
            look, action = _ssr(item)
            for probe in item["test_info"]:
                now = happening(record, frames_seen(record, probe["realtime"]))
                assert probe["type"] == int(any((s["look"], s["action"]) == (look, action) for s in now))
                assert probe["step"] == item["all_steps"][0] == f"a {look} {action}"
        else:
            action = item["question"].removeprefix("Which object is ").removesuffix(" next?")
            ask = frames_seen(record, item["ask_time"])
            assert not any(s["action"] == action for s in happening(record, ask))
            clue = next(s for s in record["segments"] if s["action"] == action and s["start"] >= ask)
            assert item["answer"] == clue["look"] and item["clue_time"] == clue["end_s"]
            assert types == [int(frames_seen(record, t) >= clue["end"]) for t in times]


def _ssr(item: dict[str, Any]) -> tuple[str, str]:
    """(look, action) of "Is the <colour> <shape> <action> now?"."""
    colour, shape, action = item["question"].removeprefix("Is the ").removesuffix(" now?").split(" ", 2)
    return f"{colour} {shape}", action


def test_questions_use_the_world_vocabulary_and_the_extra_words(world, items):
    vocabulary = set(json.loads((world / "world.json").read_text())["vocabulary"]["words"])
    assert set(question_words(items)) <= vocabulary | set(EXTRA_WORDS)
    assert not set(EXTRA_WORDS) & vocabulary


def test_same_seed_same_benchmark_other_seed_differs(world, bench, items, tmp_path):
    write_streams(world, tmp_path / "again", minutes=MINUTES, items_per_category=PER_CATEGORY, seed=0)
    for name in ("items.json", "streams.json"):
        assert (tmp_path / "again" / name).read_text() == (bench / name).read_text()
    for video in json.loads((bench / "streams.json").read_text()):
        assert np.array_equal(decoded(tmp_path / "again" / video["video"]), decoded(bench / video["video"]))
    write_streams(world, tmp_path / "other", minutes=MINUTES[:1], items_per_category=PER_CATEGORY, seed=1)
    other = json.loads((tmp_path / "other" / "streams.json").read_text())[0]
    assert [s["video_id"] for s in other["sources"]] != [
        s["video_id"] for s in json.loads((bench / "streams.json").read_text())[0]["sources"]
    ]
