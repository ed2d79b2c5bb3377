"""Streaming video QA benchmarks read into one form, `TimedQuestion`, and OVO-Bench's scoring.

Each benchmark keeps its own file layout; the readers take the files as published:

* OVO-Bench, `ovo_bench_new.json`: one JSON list of items. Backward (EPM, ASI, HLD) and real-time
  (STU, OJR, ATR, ACR, OCR, FPD) items are `{"id", "task", "video", "realtime", "question",
  "options", "answer", "gt"}`: `options` plain texts, `answer` the right option's text, `gt` its
  index (OVO scores against the letter `chr(65 + gt)`), `realtime` the question time in seconds.
  Forward items carry probes, `test_info`: SSR `{"all_steps", "start_time", "end_time",
  "test_info": [{"realtime", "step", "type"}]}` (is this step being performed now?), CRR
  `{"question", "answer", "ask_time", "clue_time", "test_info": [{"realtime", "type"}]}` (is there
  enough to answer yet?), with type 1 for "Yes" and 0 for "No"; REC `{"activity", "start_times",
  "end_times", "test_info": [{"realtime", "count"}]}`, asked as "How many times did they
  <activity>?". `streamformer.synthetic.streams` writes its synthetic items in this layout.
* StreamingBench, `questions_real.json` (Real-Time Visual Understanding): one JSON list of
  `{"time", "questions": [...], "video_categories", "video_path"}`, each question
  `{"task_type", "question", "time_stamp": "HH:MM:SS", "answer": letter, "options": ["A. ...", ...],
  "required_ability"}`; the model sees the video from 0 to `time_stamp`. Every task counts as
  real-time here (the benchmark puts all ten under real-time understanding).
* ODV-Bench (StreamForest's driving benchmark), as its lmms-eval task reads it: a JSON list (or
  JSON lines) of `{"video", "question", "candidates", "answer", "task", "subtask"}` with optional
  `"subsubtask"` and `"start"`, `"end"` (the clip seen, in seconds: the question is asked at
  `end`); `answer` is the right candidate's text. The files carry no OVO category: it is read off
  the task names (`ODV_CATEGORY_WORDS`), or given.

Scoring, as OVO-Bench (and StreamForest's lmms-eval port of it) scores: a multiple-choice reply by
its option letter (`evaluate.option_letter`, the rule of the offline evaluation); an SSR or CRR
probe is right when the lower-cased "yes" / "no" is a substring of the lower-cased reply (OVO also
takes a bare "Y" / "N"); a REC probe when exactly one integer appears in the reply and equals the
count (OVO's own script joins every digit run instead). Each probe is one scored unit. `aggregate`:
accuracy per task, the mean over each category's tasks, then the mean of the category means
(`overall`); `task_mean` is the mean over all tasks, what OVO's script prints as "Total Avg.".
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .evaluate import option_letter

CATEGORIES = ("backward", "realtime", "forward")
OVO_TASKS = {
    "EPM": "backward", "ASI": "backward", "HLD": "backward",
    "STU": "realtime", "OJR": "realtime", "ATR": "realtime", "ACR": "realtime", "OCR": "realtime", "FPD": "realtime",
    "REC": "forward", "SSR": "forward", "CRR": "forward",
}  # fmt: skip
# Words in an ODV-Bench task name that place it in time; anything else is real-time perception.
ODV_CATEGORY_WORDS = {
    "backward": ("past", "memory", "history", "previous"),
    "forward": ("future", "predict", "prediction", "next"),
}
_LETTER_PREFIX = re.compile(r"^\s*([A-Z])[.)]\s*")


class Probe(NamedTuple):
    """One query of a forward question: its time, the right reply ("Yes", "No" or a count) and,
    for SSR, the step asked about."""

    time_s: float
    answer: str
    step: str | None = None


@dataclass(frozen=True)
class TimedQuestion:
    """A question asked at `time_s` seconds of `video` (None: at its end), seeing it from `start_s`.

    Multiple choice: `options` plain texts, lettered A, B, ... in order, and `answer` the letter.
    Forward questions are scored at their `probes`; `answer` then is CRR's text answer (else "")."""

    id: str
    benchmark: str
    task: str
    category: str
    video: str
    time_s: float | None
    question: str
    options: list[str]
    answer: str
    probes: list[Probe] | None = None
    start_s: float = 0.0


# --- readers -------------------------------------------------------------------------------------


def read_ovo_bench(path: str | os.PathLike) -> list[TimedQuestion]:
    """OVO-Bench items (`ovo_bench_new.json` layout, see the module doc)."""
    return [ovo_question(item) for item in _json_list(path)]


def ovo_question(item: dict[str, Any]) -> TimedQuestion:
    task = item["task"]
    common = {"id": str(item["id"]), "benchmark": "OVO-Bench", "task": task, "category": OVO_TASKS[task], "video": item["video"]}
    if "test_info" not in item:
        options = list(item["options"])
        gt = item["gt"] if "gt" in item else options.index(item["answer"])
        return TimedQuestion(**common, time_s=float(item["realtime"]), question=item["question"], options=options,
                             answer=string.ascii_uppercase[gt])  # fmt: skip
    probes = [ovo_probe(task, probe) for probe in item["test_info"]]
    question = f"How many times did they {item['activity']}?" if task == "REC" else item.get("question", "")
    time_s = float(item.get("ask_time", probes[0].time_s))
    return TimedQuestion(**common, time_s=time_s, question=question, options=[], answer=item.get("answer", ""), probes=probes)


def ovo_probe(task: str, probe: dict[str, Any]) -> Probe:
    if task == "REC":
        return Probe(float(probe["realtime"]), str(probe["count"]))
    return Probe(float(probe["realtime"]), "Yes" if probe["type"] == 1 else "No", probe.get("step"))


def read_streaming_bench(path: str | os.PathLike) -> list[TimedQuestion]:
    """StreamingBench questions (`questions_real.json` layout; a single video's object also reads)."""
    questions = []
    for i, entry in enumerate(_json_list(path)):
        for j, question in enumerate(entry["questions"]):
            questions.append(
                TimedQuestion(
                    id=f"{Path(entry['video_path']).stem}-{i}-{j}",
                    benchmark="StreamingBench",
                    task=question["task_type"],
                    category="realtime",
                    video=entry["video_path"],
                    time_s=clock_seconds(question["time_stamp"]),
                    question=question["question"],
                    options=[unlettered(o) for o in question.get("options", [])],
                    answer=question["answer"].strip(),
                )
            )
    return questions


def clock_seconds(stamp: str) -> float:
    """Seconds of "HH:MM:SS" (or "MM:SS", "SS")."""
    return float(sum(float(part) * 60**i for i, part in enumerate(reversed(stamp.strip().split(":")))))


def unlettered(option: str) -> str:
    """An option without its "A. " prefix (StreamingBench writes some options with one, some without)."""
    return _LETTER_PREFIX.sub("", option, count=1)


def read_odv_bench(path: str | os.PathLike, category: str | None = None) -> list[TimedQuestion]:
    """ODV-Bench questions (StreamForest's lmms-eval layout, see the module doc); `category`
    overrides the one read off the task names."""
    questions = []
    for i, doc in enumerate(_json_list(path)):
        candidates = list(doc["candidates"])
        task = doc.get("subtask") or doc["task"]
        questions.append(
            TimedQuestion(
                id=str(doc.get("id", f"{Path(path).stem}-{i}")),
                benchmark="ODV-Bench",
                task=task,
                category=category or odv_category(doc["task"], doc.get("subtask", ""), doc.get("subsubtask", "")),
                video=doc["video"],
                time_s=float(doc["end"]) if "end" in doc else None,
                question=doc["question"],
                options=candidates,
                answer=candidate_letter(candidates, doc["answer"]),
                start_s=float(doc.get("start", 0.0)),
            )
        )
    return questions


def odv_category(*names: str) -> str:
    """The category of an ODV-Bench task: "backward" or "forward" when a task name speaks of the past or the future, else "realtime"."""
    text = " ".join(names).lower().replace("_", " ")
    for category, keys in ODV_CATEGORY_WORDS.items():
        if any(re.search(rf"\b{key}\b", text) for key in keys):
            return category
    return "realtime"


def candidate_letter(candidates: list[str], answer: str) -> str:
    """The letter of the candidate equal to `answer` (or `answer` itself when it is a letter)."""
    if answer in candidates:
        return string.ascii_uppercase[candidates.index(answer)]
    if len(answer.strip()) == 1 and answer.strip() in string.ascii_uppercase[: len(candidates)]:
        return answer.strip()
    raise ValueError(f"answer {answer!r} is none of the candidates {candidates}")


def _json_list(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A JSON list, a single JSON object (as a list of one) or JSON lines."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return data if isinstance(data, list) else [data]


# --- scoring --------------------------------------------------------------------------------------


def score_choice(reply: str | None, answer: str, num_options: int = 4) -> bool:
    """A multiple-choice reply is right when its option letter is the answer's."""
    return reply is not None and option_letter(reply, string.ascii_uppercase[:num_options]) == answer


def score_yes_no(reply: str | None, answer: str) -> bool:
    """SSR / CRR: the lower-cased "yes" / "no" is in the lower-cased reply (or the reply is "Y" / "N")."""
    if reply is None:
        return False
    return answer.lower() in reply.lower() or reply.strip() == answer[:1].upper()


def score_count(reply: str | None, count: str | int) -> bool:
    """REC: exactly one integer in the reply, and it is the count."""
    numbers = re.findall(r"\b\d+\b", reply or "")
    return len(numbers) == 1 and int(numbers[0]) == int(count)


def score_probe(task: str, reply: str | None, answer: str) -> bool:
    return score_count(reply, answer) if task == "REC" else score_yes_no(reply, answer)


class Outcome(NamedTuple):
    """One scored unit: a multiple-choice question or a forward probe. `correct` is its credit:
    True / False, or a probability (what guessing scores, for the chance row)."""

    category: str
    task: str
    correct: bool | float


def outcomes(question: TimedQuestion, replies: str | Sequence[str | None] | None) -> list[Outcome]:
    """The scored units of one question: its reply (multiple choice) or one reply per probe
    (forward; a missing reply is wrong)."""
    if question.probes is None:
        reply = replies if isinstance(replies, str) or replies is None else replies[0]
        return [Outcome(question.category, question.task, score_choice(reply, question.answer, len(question.options)))]
    replies = [None] * len(question.probes) if replies is None or isinstance(replies, str) else list(replies)
    if len(replies) != len(question.probes):
        raise ValueError(f"question {question.id} has {len(question.probes)} probes, got {len(replies)} replies")
    return [
        Outcome(question.category, question.task, score_probe(question.task, reply, probe.answer))
        for probe, reply in zip(question.probes, replies, strict=True)
    ]


@dataclass(frozen=True)
class Scores:
    """Accuracy per task, per category (the mean of its tasks), `overall` (the mean of the
    categories) and `task_mean` (the mean of all tasks), all in [0, 1]."""

    tasks: dict[str, float]
    categories: dict[str, float]
    overall: float
    task_mean: float


def aggregate(results: Iterable[Outcome]) -> Scores:
    """OVO-Bench's aggregation: each task weighs the same within its category, each category the same overall."""
    counts: dict[str, list[float]] = {}
    members: dict[str, list[str]] = {}
    for category, task, correct in results:
        counts.setdefault(task, [0, 0])[0] += float(correct)
        counts[task][1] += 1
        if task not in members.setdefault(category, []):
            members[category].append(task)
    if not counts:
        raise ValueError("nothing to aggregate")
    tasks = {task: right / total for task, (right, total) in counts.items()}
    categories = {c: _mean([tasks[t] for t in members[c]]) for c in (*CATEGORIES, *members) if c in members}
    return Scores(tasks, categories, _mean(list(categories.values())), _mean(list(tasks.values())))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
