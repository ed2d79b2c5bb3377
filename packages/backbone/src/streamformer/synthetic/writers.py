"""The synthetic world in the original annotation formats, so the real-data readers load it unchanged.

Formats: the original pretraining's annotation files (AR, retrieval, grounding and localization
CSVs, YouTube-VIS JSON, MeViS-style expressions with per-frame masks; their columns are listed in
`streamformer.synthetic`) and THUMOS-style OAD targets (per-video `target_perframe` arrays at 4 fps).
Paths below are relative to the world's root; `SplitWriter` writes one split.
"""

from __future__ import annotations

import ast
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..masks import compressed_rle, mask_bbox, uncompressed_rle
from ..video import write_video
from .world import ACTIONS, COLOURS, DATASET, SHAPES, Scene

OAD_CLASSES = ("Background", *ACTIONS, "Ambiguous")
OAD_FPS = 4
VIS_CATEGORIES = {shape: i + 1 for i, shape in enumerate(SHAPES)}  # 0 is background
QA_OPTIONS = 4
OBJECT_NAMES = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def oad_targets(scene: Scene) -> np.ndarray:
    """One-hot rows at 4 fps over OAD_CLASSES; a row whose 0.25 s spans frames of two labels is Ambiguous."""
    labels, fps = scene.frame_labels() + 1, scene.config.fps  # 0 = background, 1..8 = actions
    rows = scene.config.num_frames * OAD_FPS // fps
    firsts = [-(-k * fps // OAD_FPS) for k in range(rows + 1)]  # first frame at or after each row's start time
    targets = np.zeros((rows, len(OAD_CLASSES)), dtype=np.float32)
    for i in range(rows):
        span = np.unique(labels[firsts[i] : max(firsts[i] + 1, firsts[i + 1])])
        targets[i, span[0] if len(span) == 1 else len(OAD_CLASSES) - 1] = 1
    return targets


def qa_items(video_id: str, scene: Scene, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Streaming multiple-choice questions, each asked at a time after the action it asks about has ended."""
    names = [obj.name for obj in scene.objects]
    items = []
    for segment in scene.segments:
        actor = names[segment.actor]
        time_s = scene.seconds(int(rng.integers(segment.end, scene.config.num_frames + 1)))
        bystanders = [n for n in dict.fromkeys(names) if n != actor]  # wrong options only motion rules out
        fillers = [n for n in OBJECT_NAMES if n != actor and n not in bystanders]
        wrong_objects = bystanders + _pick(rng, fillers, QA_OPTIONS - 1 - len(bystanders))
        questions = [(f"Which object was {segment.action}?", actor, wrong_objects)]
        if names.count(actor) == 1:  # "the red circle" must name one object
            wrong = _pick(rng, [a for a in ACTIONS if a != segment.action], QA_OPTIONS - 1)
            questions.append((f"What did the {actor} do?", segment.action, wrong))
        for question, answer, wrong in questions:
            options = _pick(rng, [answer, *wrong], QA_OPTIONS)
            items.append({"video_id": video_id, "time_s": time_s, "question": question, "answer": answer, "options": options})
    return items


def _pick(rng: np.random.Generator, items: list[str], count: int) -> list[str]:
    """`count` distinct items in random order."""
    return [items[i] for i in rng.choice(len(items), count, replace=False)]


class SplitWriter:
    """One split: per-video files (mp4, JPEG frames, OAD targets, RVOS masks) as videos arrive, tables at `close`.

    Args:
        root: the world's folder.
        split: "train" or "val".
        anno_ids: the source of RVOS annotation ids, shared by the splits so mask files never collide.
    """

    def __init__(self, root: Path, split: str, anno_ids: Iterator[int]) -> None:
        self.root, self.split, self.anno_ids = root, split, anno_ids
        self.tables: dict[str, list[list[Any]]] = {"ar": [], "retrieval": [], "grounding": [], "localization": [], "rvos": []}
        self.vis: dict[str, list[dict[str, Any]]] = {"videos": [], "annotations": []}
        self.qa: list[dict[str, Any]] = []
        self.video_ids: list[str] = []

    def add(self, video_id: str, scene: Scene, rng: np.random.Generator) -> None:
        frames, masks = scene.render()
        write_video(self.root / "videos" / f"{video_id}.mp4", frames, scene.config.fps)
        # The AR clip is trimmed to the action, as Kinetics and SSv2 clips are: in the whole video
        # the last frame, which the global feature reads, is mostly background, where localization
        # trains the same feature to reject every class.
        main = scene.main_segment
        write_video(self.root / "ar" / "clips" / f"{video_id}.mp4", frames[main.start : main.end], scene.config.fps)
        target = self.root / "oad" / "target_perframe" / f"{video_id}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, oad_targets(scene))
        self._add_tables(video_id, scene)
        self._add_vis(video_id, scene, frames, masks)
        if len(scene.objects) == 2:  # a referring expression only matters when it has to choose
            self._add_rvos(video_id, scene, masks)
        self.qa += qa_items(video_id, scene, rng)
        self.video_ids.append(video_id)

    def _add_tables(self, video_id: str, scene: Scene) -> None:
        self.tables["ar"].append([f"ar/clips/{video_id}.mp4", scene.main_segment.action])
        self.tables["retrieval"].append([video_id, DATASET, str(scene.captions())])
        windows: dict[str, list[list[float]]] = {}
        for segment in scene.segments:
            window = [scene.seconds(segment.start), scene.seconds(segment.end)]
            self.tables["grounding"].append([video_id, *window, scene.caption(segment), str([window]), DATASET])
            windows.setdefault(segment.action, []).append(window)
        for action, spans in windows.items():
            self.tables["localization"].append([video_id, spans[0][0], spans[-1][1], action, str(spans), DATASET])

    def _add_vis(self, video_id: str, scene: Scene, frames: np.ndarray, masks: np.ndarray) -> None:
        folder = self.root / "vis" / "JPEGImages" / video_id
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=95)
        size = scene.config.size
        number = len(self.vis["videos"]) + 1
        self.vis["videos"].append(
            {
                "id": number,
                "width": size,
                "height": size,
                "length": len(frames),
                "file_names": [f"JPEGImages/{video_id}/{t:05d}.jpg" for t in range(len(frames))],
            }
        )
        for obj, per_frame in zip(scene.objects, masks, strict=True):
            present = [m.any() for m in per_frame]
            self.vis["annotations"].append(
                {
                    "id": len(self.vis["annotations"]) + 1,
                    "video_id": number,
                    "category_id": VIS_CATEGORIES[obj.shape],
                    "iscrowd": 0,
                    "height": size,
                    "width": size,
                    "segmentations": [uncompressed_rle(m) if p else None for m, p in zip(per_frame, present, strict=True)],
                    "areas": [int(m.sum()) if p else None for m, p in zip(per_frame, present, strict=True)],
                    "bboxes": [mask_bbox(m) if p else None for m, p in zip(per_frame, present, strict=True)],
                }
            )

    def _add_rvos(self, video_id: str, scene: Scene, masks: np.ndarray) -> None:
        frame_names = [f"{t:05d}" for t in range(scene.config.num_frames)]
        for index, per_frame in enumerate(masks):
            anno_id = next(self.anno_ids)
            _write_json(
                self.root / "rvos" / "masks" / f"{anno_id}.json", [compressed_rle(m) if m.any() else None for m in per_frame]
            )
            self.tables["rvos"].append(
                [video_id, scene.expression(index), str(frame_names), len(frame_names), str([index]), str([anno_id])]
            )

    def close(self) -> dict[str, int]:
        """Write the split's tables; returns {relative path: number of records} of every file written."""
        header = ["video_id", "start_second", "end_second", "text", "relevant_windows", "dataset"]
        files = {
            f"ar/{self.split}.csv": (None, self.tables["ar"]),
            f"retrieval/{self.split}.csv": (["video_id", "dataset", "text"], self.tables["retrieval"]),
            f"grounding/{self.split}.csv": (header, self.tables["grounding"]),
            f"localization/{self.split}.csv": (header, self.tables["localization"]),
            f"rvos/{self.split}_MEVIS.csv": (["video_id", "text", "frames", "length", "obj_id", "anno_id"], self.tables["rvos"]),
        }
        for path, (columns, rows) in files.items():
            _write_csv(self.root / path, columns, rows)
        categories = [{"id": i, "name": shape} for shape, i in VIS_CATEGORIES.items()]
        vis = {"info": {"description": f"{DATASET} world"}, "licenses": [], **self.vis, "categories": categories}
        _write_json(self.root / f"vis/{self.split}_{DATASET}.json", vis)
        _write_json(self.root / f"qa/{self.split}.json", self.qa, indent=1)
        counts = {path: len(rows) for path, (_, rows) in files.items()}
        return counts | {f"vis/{self.split}_{DATASET}.json": len(self.vis["annotations"]), f"qa/{self.split}.json": len(self.qa)}

    def texts(self) -> Iterator[str]:
        """Every caption, expression, question and option written (for the world's word list)."""
        for row in self.tables["retrieval"]:
            yield from ast.literal_eval(row[2])
        yield from (row[3] for row in self.tables["grounding"])
        yield from (row[1] for row in self.tables["rvos"])
        for item in self.qa:
            yield from (item["question"], *item["options"])


def write_shared_files(root: Path, train_ids: list[str], val_ids: list[str]) -> None:
    """The files common to both splits: class maps and the OAD data_info.json."""
    actions = {action: i for i, action in enumerate(ACTIONS)}
    _write_json(root / "ar/label2id.json", actions)
    _write_json(root / "localization/label2id.json", {DATASET: actions})
    _write_json(root / "vis/label2id.json", {DATASET: {"background": 0, **VIS_CATEGORIES}})
    info = {
        "class_names": list(OAD_CLASSES),
        "num_classes": len(OAD_CLASSES),
        "ignore_index": len(OAD_CLASSES) - 1,
        "metrics": "AP",
        "fps": OAD_FPS,
        "train_session_set": train_ids,
        "test_session_set": val_ids,
    }
    _write_json(root / "oad/data_info.json", {DATASET: info})


def _write_csv(path: Path, header: list[str] | None, rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def _write_json(path: Path, data: Any, indent: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent))
