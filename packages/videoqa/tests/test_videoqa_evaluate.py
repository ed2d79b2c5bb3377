"""Evaluation: the option-letter rule, exact match and the accuracy table on hand cases, and the
command end to end (replies written per item)."""

import json

import numpy as np
import pytest
from videoqa_helpers import tiny_lm

from streamformer.testing import tiny_model
from streamformer.video import write_video
from streamformer_videoqa import StreamFormerForVideoQA
from streamformer_videoqa.cli import main
from streamformer_videoqa.evaluate import accuracy_table, is_right, normalise, option_letter, question_text


@pytest.mark.parametrize(
    ("reply", "letter"),
    [("B", "B"), ("The best answer is C.", "C"), ("Answer: (D) running", "D"), ("(a) walking", ""),
     ("The answer A", "A"), ("", ""), ("walking", "")],
)  # fmt: skip
def test_option_letter(reply, letter):
    assert option_letter(reply) == letter


def test_right_answers_and_the_table():
    mc = {"question": "What?", "options": ["A. walk", "B. run", "C. sit"], "answer": "B"}
    open_ = {"question": "What?", "answer": "Walks left."}
    assert question_text(mc) == "What?\nA. walk\nB. run\nC. sit\nAnswer with the option's letter from the given choices directly."
    assert is_right(mc, "B. run") and not is_right(mc, "A") and not is_right(mc, "D")  # D is no option of 3
    assert normalise("  Walks, LEFT! ") == "walks left" and is_right(open_, "walks left") and not is_right(open_, "walks")
    results = [{**mc, "right": True}, {**mc, "options": mc["options"][:2], "right": False}, {**open_, "right": True}]
    assert accuracy_table(results) == {
        "multiple choice": {"accuracy": 0.5, "items": 2, "unreadable": 0, "chance": (1 / 3 + 1 / 2) / 2},
        "open": {"accuracy": 1.0, "items": 1, "unreadable": 0},
    }


def test_evaluate_command_writes_every_reply(tokenizer, tmp_path, capsys):
    StreamFormerForVideoQA.from_parts(tiny_model(), tiny_lm(len(tokenizer)), tokenizer).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    write_video(tmp_path / "v.mp4", np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), fps=3)
    items = [
        {"id": "q1", "video": "v.mp4", "question": "what is the ball", "options": ["A. red", "B. blue"], "answer": "A"},
        {"id": "q2", "video": "v.mp4", "question": "what is the person doing", "answer": "walks"},
        {"id": "q3", "video": "gone.mp4", "question": "what is the person doing", "answer": "walks"},
    ]
    (tmp_path / "items.json").write_text(json.dumps(items))
    main(["evaluate", "--model", str(tmp_path / "m"), "--items", str(tmp_path / "items.json"), "--media_root", str(tmp_path),
          "--output", str(tmp_path / "out" / "eval"), "--clip_length", "2", "--device", "cpu"])  # fmt: skip
    replies = [json.loads(line) for line in (tmp_path / "out" / "eval.jsonl").read_text().splitlines()]
    assert [r["id"] for r in replies] == ["q1", "q2", "q3"] and all(isinstance(r["reply"], str) for r in replies[:2])
    assert [r["right"] for r in replies[:2]] == [
        is_right(item, r["reply"]) for item, r in zip(items[:2], replies[:2], strict=True)
    ]
    assert replies[2]["right"] is False and "not found" in replies[2]["error"]
    table = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert table == accuracy_table(replies) and table["open"]["unreadable"] == 1
    assert "multiple choice: accuracy" in capsys.readouterr().out
