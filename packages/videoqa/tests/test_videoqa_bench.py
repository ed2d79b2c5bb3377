"""The memory benchmark end to end on a tiny world: every policy answers every ask of every
stream, the chance row is OVO's aggregation of guessing, and the report says what it measured."""

import json

import pytest

from streamformer.testing import tiny_model
from streamformer_videoqa.bench import chance_outcomes, questions_to_ask
from streamformer_videoqa.benchmarks import aggregate, read_ovo_bench
from streamformer_videoqa.cli import main
from streamformer_videoqa.synthetic import initial_model


def test_bench_memory_runs_every_policy_on_the_same_asks(world, tmp_path):
    tiny_model().save_pretrained(tmp_path / "backbone")
    model, tokenizer = initial_model(world, tmp_path / "backbone")
    model.config.text_config.max_position_embeddings = 160  # `full` fills it on the longer stream
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    policies = {"full": {}, "recent": {"frames": 2}, "streamingvlm": {"vision_frames": 4, "text_window": 32},
                "streamforest": {"short_frames": 2, "short_tokens": 2, "event_window": 2, "long_tokens_per_frame": 1,
                                 "long_quota": 6}}  # fmt: skip
    main(["bench-memory", "--model", str(tmp_path / "model"), "--streams", str(tmp_path / "streams"), "--world", str(world),
          "--minutes", "[0.25, 0.5]", "--policies", json.dumps(policies), "--fps", "2", "--vision_window", "8", "--fresh_seconds", "5",
          "--output", str(tmp_path / "memory.md"), "--device", "cpu"])  # fmt: skip
    report = json.loads((tmp_path / "memory.json").read_text())
    questions = read_ovo_bench(tmp_path / "streams" / "items.json")
    asks = sum(len(questions_to_ask(q)) for q in questions)
    chance = aggregate(o for q in questions for o in chance_outcomes(q))
    assert report["chance"]["overall"] == pytest.approx(chance.overall)
    for name, row in report["policies"].items():
        assert [g["minutes"] for g in row["growth"]] == [0.25, 0.5]
        assert sum(g["asks"] for g in row["growth"]) == asks
        frames = [g["frames"] for g in row["growth"]]
        assert frames == [30, 60] or name == "full"
    full = report["policies"]["full"]["growth"][-1]
    assert full["unanswered"] > 0 and full["peak_tokens"] <= 160  # refused at the context, never past it
    assert report["policies"]["recent"]["growth"][-1]["peak_tokens"] <= 1 + 2 * 4 + 40
    for name in ("recent", "streamingvlm", "streamforest"):  # 10-frame fresh sessions beside frames 20, 30, ... 60
        longest = report["policies"][name]["growth"][-1]
        assert longest["pairs"] == 5 and report["policies"][name]["frame_ms_ratio"] == longest["paired_ratio"] > 0
    text = (tmp_path / "memory.md").read_text()
    assert "- recent: " in text and "(5 pairs)" in text
    assert "| chance |" in text and "| streamforest | 0.5 |" in text and (tmp_path / "memory.png").stat().st_size > 0
