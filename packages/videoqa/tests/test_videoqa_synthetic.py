"""The synthetic world as video QA data: every converted file reads as conversations, the options
and letters match the world's questions, and the world tokenizer knows every word of them."""

import json
from pathlib import Path

from streamformer_videoqa.data import encode_conversation, read_items
from streamformer_videoqa.evaluate import is_right
from streamformer_videoqa.synthetic import convert_world, world_tokenizer


def test_demo_runs_every_variant_and_reports_the_spread(world, tmp_path):
    from streamformer.testing import tiny_model
    from streamformer_videoqa.demo import VARIANTS, run_seeds, variant_folder

    tiny_model().save_pretrained(tmp_path / "backbone")
    summary = run_seeds(str(tmp_path / "backbone"), str(world), str(tmp_path / "runs"), str(tmp_path / "report.md"),
                        seeds=[0], clip_length=2, caption_epochs=1, qa_epochs=1, batch_size=8)  # fmt: skip
    questions = json.loads((world / "qa/val.json").read_text())
    report = (tmp_path / "report.md").read_text()
    for variant in VARIANTS:
        folder = tmp_path / "runs" / "seed0" / variant_folder(variant)
        replies = [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines()]
        assert len(replies) == len(questions) and all(("video" in r) == (variant != "text only") for r in replies)
        accuracy = sum(r["right"] for r in replies) / len(replies)
        assert summary[variant] == {"mean": accuracy, "std": 0.0} and f"| {variant} | {accuracy:.3f} ± 0.000 |" in report
    assert "video vs text only:" in report


def test_converted_files_are_conversations_the_tokenizer_reads_whole(world, tmp_path):
    files = convert_world(world, tmp_path)
    kinds = ("captions_{}", "qa_{}", "qa_{}_text", "questions_{}")
    assert sorted(files) == sorted(kind.format(split) for kind in kinds for split in ("train", "val"))
    tokenizer = world_tokenizer(world)
    source = json.loads((world / "qa/val.json").read_text())
    for name, path in files.items():
        if name.startswith("questions"):
            continue
        items = read_items(path)  # checked: roles, placeholders, answers
        for item in items:
            ids, labels = encode_conversation(item["conversations"], tokenizer, "<video>", "chat")
            assert tokenizer.unk_token_id not in ids, tokenizer.decode(ids)
            assert any(label != -100 for label in labels)
    questions = json.loads(files["questions_val"].read_text())
    assert len(questions) == len(source)
    for question, original in zip(questions, source, strict=True):
        right = question["options"][ord(question["answer"]) - ord("A")]
        assert right == f"{question['answer']}. {original['answer']}"
        assert is_right(question, question["answer"]) and (world / question["video"]).exists()
    text_only = read_items(files["qa_val_text"])
    assert all("video" not in item and "<video>" not in item["conversations"][0]["value"] for item in text_only)


def test_synthetic_recipes_run_as_written(world, tmp_path, monkeypatch, capsys):
    """`synthetic`, then the two synthetic-tiny configs unchanged but for their step count, the
    exports and the evaluation, from a folder laid out as `make demo` leaves the repository."""
    from streamformer.testing import tiny_model
    from streamformer_videoqa.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "world").symlink_to(world)
    tiny_model().save_pretrained(tmp_path / "runs/pretrain-tiny/backbone")
    configs = Path(__file__).parents[3] / "configs" / "videoqa"
    out = Path("runs/videoqa-tiny")
    main(["synthetic", "--world", "runs/world", "--backbone", "runs/pretrain-tiny/backbone", "--output", str(out)])
    for stage, config in (("stage1", "synthetic-tiny-projector.yaml"), ("stage3", "synthetic-tiny.yaml")):
        main(["fit", "--config", str(configs / config), "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false"])
        main(["export", "--checkpoint", str(out / stage / "checkpoints/last.ckpt"), "--output", str(out / stage / "model")])
    main(["evaluate", "--model", str(out / "stage3/model"), "--items", str(out / "data/questions_val.json"),
          "--media_root", "runs/world", "--clip_length", "8", "--output", str(out / "eval"), "--device", "cpu"])  # fmt: skip
    table = json.loads((out / "eval.json").read_text())
    assert table["multiple choice"]["items"] == len(json.loads((world / "qa/val.json").read_text()))
    assert table["multiple choice"]["unreadable"] == 0
