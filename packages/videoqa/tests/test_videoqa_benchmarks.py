"""Streaming benchmarks: each reader on a small file in the benchmark's published layout, OVO-Bench's
scoring rules and aggregation on hand-worked cases, and the synthetic streams read as OVO-Bench."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamformer.synthetic import WorldConfig, generate_world
from streamformer.synthetic.streams import write_streams
from streamformer_videoqa.benchmarks import (
    Outcome,
    Probe,
    aggregate,
    odv_category,
    outcomes,
    read_odv_bench,
    read_ovo_bench,
    read_streaming_bench,
    score_choice,
    score_count,
    score_yes_no,
)

OVO_ITEMS = [
    {"id": 0, "task": "EPM", "video": "Ego4D/clips/a.mp4", "realtime": 215, "question": "Who did I talk to?",
     "answer": "a person with blue shirt", "options": ["a person with brown shirt", "a person with green shirt",
     "a person with blue shirt", "a person with white shirt"], "gt": 2},
    {"id": 1210, "task": "ACR", "video": "Ego4D/video/b.mp4", "realtime": 201.93, "question": "What is he doing?",
     "answer": "He is inflating a tire.", "options": ["Repairing.", "Lifting.", "Tightening.", "He is inflating a tire."], "gt": 3},
    {"id": 1516, "task": "SSR", "video": "COIN/c.mp4", "tutorial": "PutOnHairExtensions", "all_steps": ["pull up the hair", "put on"],
     "start_time": [25, 31], "end_time": [30, 49], "test_info": [{"realtime": 27, "step": "pull up the hair", "type": 1},
     {"realtime": 26, "step": "put on", "type": 0}, {"realtime": 33, "step": "put on", "type": 1}]},
    {"id": 1468, "task": "CRR", "video": "MovieNet/d.mp4", "question": "What does she do to the car?", "answer": "She walks past.",
     "ask_time": 297, "clue_time": 308, "test_info": [{"realtime": 297, "type": 0}, {"realtime": 310, "type": 1}]},
    {"id": 1558, "task": "REC", "video": "perception_test/e.mp4", "activity": "breaking something", "start_times": [6],
     "end_times": [17], "test_info": [{"realtime": 17, "count": 1}, {"realtime": 32.0, "count": 1}]},
]  # fmt: skip

STREAMING_BENCH = [
    {"time": "[0:03:17 - 0:03:27]", "video_categories": "preparation_of_meals", "video_path": "./videos/sample_348_real.mp4",
     "questions": [{"task_type": "Clips Summarize", "question": "What did the individual do just now?", "time_stamp": "00:03:26",
                    "answer": "A", "options": ["A. Prepared a burger.", "B. Cleaned.", "C. Baked buns.", "D. Wrapped."],
                    "required_ability": "episodic memory"}]},
    {"time": "[0:01:00 - 0:02:00]", "video_categories": "table_tennis", "video_path": "./videos/sample_17_real.mp4",
     "questions": [{"task_type": "Object Recognition", "question": "Who serves now?", "time_stamp": "01:00:36", "answer": "B",
                    "options": ["Wang.", "Fan.", "Xu.", "Ma."], "required_ability": "working memory"}]},
]  # fmt: skip

ODV_DOCS = [
    {"video": "drive/0001.mp4", "question": "What colour is the traffic light now?", "candidates": ["Red", "Green", "Yellow"],
     "answer": "Green", "task": "targeting_single_static_objects", "subtask": "traffic light state", "start": 2.0, "end": 14.5},
    {"video": "drive/0002.mp4", "question": "Where will the cyclist go?", "candidates": ["Left", "Right", "Straight", "Stop"],
     "answer": "Straight", "task": "targeting_single_dynamic_objects", "subtask": "trajectory prediction"},
]  # fmt: skip


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_read_ovo_bench_keeps_times_letters_and_probes(tmp_path):
    epm, acr, ssr, crr, rec = read_ovo_bench(write_json(tmp_path / "ovo_bench_new.json", OVO_ITEMS))
    assert (epm.id, epm.task, epm.category, epm.time_s, epm.answer) == ("0", "EPM", "backward", 215.0, "C")
    assert epm.options == OVO_ITEMS[0]["options"] and epm.probes is None and epm.benchmark == "OVO-Bench"
    assert (acr.category, acr.time_s, acr.answer) == ("realtime", 201.93, "D")
    assert ssr.category == "forward" and ssr.probes == [
        Probe(27.0, "Yes", "pull up the hair"), Probe(26.0, "No", "put on"), Probe(33.0, "Yes", "put on")]  # fmt: skip
    assert (crr.time_s, crr.answer, crr.question) == (297.0, "She walks past.", "What does she do to the car?")
    assert crr.probes == [Probe(297.0, "No"), Probe(310.0, "Yes")]
    assert rec.question == "How many times did they breaking something?" and rec.probes == [Probe(17.0, "1"), Probe(32.0, "1")]


def test_read_streaming_bench_parses_clock_times_and_strips_letters(tmp_path):
    summary, recognition = read_streaming_bench(write_json(tmp_path / "questions_real.json", STREAMING_BENCH))
    assert (summary.task, summary.category, summary.time_s, summary.answer) == ("Clips Summarize", "realtime", 206.0, "A")
    assert summary.options == ["Prepared a burger.", "Cleaned.", "Baked buns.", "Wrapped."]
    assert summary.video == "./videos/sample_348_real.mp4" and summary.benchmark == "StreamingBench"
    assert (recognition.time_s, recognition.options[0], recognition.answer) == (3636.0, "Wang.", "B")
    assert summary.id != recognition.id


def test_read_odv_bench_answers_by_letter_at_the_clip_end(tmp_path):
    light, cyclist = read_odv_bench(write_json(tmp_path / "odv.json", ODV_DOCS))
    assert (light.task, light.category, light.answer, light.time_s, light.start_s) == (
        "traffic light state",
        "realtime",
        "B",
        14.5,
        2.0,
    )
    assert (cyclist.category, cyclist.answer, cyclist.time_s, cyclist.start_s) == ("forward", "C", None, 0.0)
    lines = tmp_path / "odv.jsonl"
    lines.write_text("".join(json.dumps(doc) + "\n" for doc in ODV_DOCS))
    assert read_odv_bench(lines) == [light, cyclist]
    assert {q.category for q in read_odv_bench(lines, category="realtime")} == {"realtime"}
    assert odv_category("past_traffic_memory") == "backward" and odv_category("next_lane_predict") == "forward"


def test_scoring_rules_on_hand_cases():
    assert score_choice("B", "B") and score_choice("The answer is B.", "B") and score_choice("B. moving left", "B")
    assert not score_choice("A", "B") and not score_choice(None, "B") and not score_choice("", "B")
    assert score_yes_no("Yes", "Yes") and score_yes_no("yes, it is", "Yes") and score_yes_no("NO.", "No")
    assert score_yes_no("Y", "Yes") and score_yes_no("N", "No")
    assert not score_yes_no("No", "Yes") and not score_yes_no(None, "No")
    assert score_count("3", "3") and score_count("I count 3.", 3) and score_count("03", "3")
    assert (
        not score_count("3 or 4", "3")
        and not score_count("three", "3")
        and not score_count("4", "3")
        and not score_count(None, 0)
    )


def test_aggregation_weighs_tasks_within_categories_then_categories():
    results = [
        *[Outcome("backward", "EPM", c) for c in (True, True, False, False)],  # 0.5
        Outcome("backward", "ASI", True),  # 1.0 -> backward 0.75
        *[Outcome("realtime", "ACR", c) for c in (True, False)],  # 0.5 -> realtime 0.5
        *[Outcome("forward", "SSR", c) for c in (True, True, True, False)],  # 0.75
        *[Outcome("forward", "CRR", c) for c in (False, False)],  # 0.0 -> forward 0.375
    ]
    scores = aggregate(results)
    assert scores.tasks == {"EPM": 0.5, "ASI": 1.0, "ACR": 0.5, "SSR": 0.75, "CRR": 0.0}
    assert scores.categories == {"backward": 0.75, "realtime": 0.5, "forward": 0.375}
    assert scores.overall == pytest.approx((0.75 + 0.5 + 0.375) / 3)
    assert scores.task_mean == pytest.approx((0.5 + 1.0 + 0.5 + 0.75 + 0.0) / 5)


def test_outcomes_score_one_reply_or_one_per_probe(tmp_path):
    epm, _, ssr, _, rec = read_ovo_bench(write_json(tmp_path / "ovo.json", OVO_ITEMS))
    assert outcomes(epm, "C") == [Outcome("backward", "EPM", True)] and outcomes(epm, None)[0].correct is False
    assert [o.correct for o in outcomes(ssr, ["Yes", "Yes", None])] == [True, False, False]
    assert [o.correct for o in outcomes(rec, ["1", "2"])] == [True, False]
    with pytest.raises(ValueError, match="3 probes"):
        outcomes(ssr, ["Yes"])


def test_synthetic_streams_read_as_ovo_bench_and_right_replies_score_one(tmp_path):
    generate_world(tmp_path / "world", num_train=4, num_val=6, seed=0, config=WorldConfig(num_frames=24), progress=False)
    write_streams(tmp_path / "world", tmp_path / "bench", minutes=(0.5,), items_per_category=6, seed=0)
    items = json.loads((tmp_path / "bench/items.json").read_text())
    questions = read_ovo_bench(tmp_path / "bench/items.json")
    assert len(questions) == len(items) == 18
    assert {q.category: sum(p.category == q.category for p in questions) for q in questions} == dict.fromkeys(
        ("backward", "realtime", "forward"), 6
    )
    for question, item in zip(questions, items, strict=True):
        assert (tmp_path / "bench" / question.video).exists() and question.time_s is not None
        if question.probes is None:
            assert question.options[ord(question.answer) - ord("A")] == item["answer"] and question.time_s == item["realtime"]
        else:
            assert [p.answer for p in question.probes] == [("No", "Yes")[p["type"]] for p in item["test_info"]]
    right = [o for q in questions for o in outcomes(q, q.answer if q.probes is None else [p.answer for p in q.probes])]
    scores = aggregate(right)
    assert scores.overall == scores.task_mean == 1.0 and set(scores.tasks) == {"EPM", "ASI", "ACR", "OJR", "SSR", "CRR"}
