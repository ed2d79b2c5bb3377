"""Readers of the original pretraining annotation formats: one `TaskDataset` per task and format.

A reader checks its files when it is built: the annotation file exists with the columns or keys
the reader needs, and its video, frame, image and mask folders exist. A mistake there raises at
once, naming the reader, its data set and annotation file (`TaskDataset.source`).

Per sample, `TaskDataset.get` returns `None` (logged by name and counted) when that sample's file
or annotation is broken (`SAMPLE_ERRORS`); past `ClipOptions.max_skip_rate` of the samples tried
it returns the reason to stop, which the training step raises as `SkipRateExceeded` on every rank.
Any other error stops the run at once.
"""

from __future__ import annotations

import ast
import csv
import functools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from streamformer.masks import decode_segmentation, pseudo_video
from streamformer.video import VideoReadError, open_video, preprocess, read_frames, segment_indices

from .sampling import sampled_indices
from .transforms import resize_masks, resized_crop, short_side_crop

logger = logging.getLogger(__name__)

# Samples a reader tries (per process: each DataLoader worker counts its own) before its skip rate
# can stop the run, so that one broken file among the first few does not.
SKIP_RATE_MIN_TRIED = 200


@dataclass(frozen=True)
class ClipOptions:
    clip_length: int = 16
    image_size: int = 224
    train: bool = True
    augment: bool = False  # the original's training crops and RandAugment (`transforms`); off: resize to a square
    hflip: bool = False  # paired horizontal flips at train time, in the tasks the original flips
    cache_videos: bool = False  # keep every decoded video in memory (small data sets only, see `Video`)
    # Stop once more than this fraction of a reader's samples tried were broken (checked from the
    # SKIP_RATE_MIN_TRIED-th sample on): a wrong file naming or extension fails them all.
    max_skip_rate: float = 0.05


class BrokenSample(ValueError):
    """One sample's annotation is unusable (empty masks, sizes that disagree, a class outside
    label2id, an unparsable cell): that sample is skipped, the run goes on."""


# What one broken sample raises, and so is skipped rather than stopping the run: a missing or
# undecodable video (VideoReadError); a missing or unreadable frame, image or mask file (OSError,
# which covers PIL's UnidentifiedImageError and truncated images); a mask file that is not JSON;
# and `BrokenSample`. Anything else (a KeyError or TypeError from an annotation in another format,
# a bug) would fail every sample alike, so it stops the run.
SAMPLE_ERRORS = (VideoReadError, OSError, json.JSONDecodeError, BrokenSample)


class Video(NamedTuple):
    """An mp4's frame count, fps and a frame reader."""

    frame_count: int
    fps: float
    read: Callable[[Sequence[int]], Tensor]  # frame numbers -> uint8 [T, H, W, 3]


def open_clip_video(path: str | Path, cached: bool) -> Video:
    """`path` opened for reading, or (cached) decoded once in full and kept in memory, which halves
    the step time of tiny models on small data sets like the synthetic world (decoding 8 frames
    costs as much as a training step there). Shared by every reader of the process."""
    if cached:
        frames, fps = _decoded_video(str(path))
        return Video(len(frames), fps, lambda indices: frames[list(indices)])
    reader = open_video(path)
    return Video(len(reader), float(reader.get_avg_fps()), lambda indices: read_frames(reader, indices, str(path)))


@functools.lru_cache(maxsize=4096)
def _decoded_video(path: str) -> tuple[Tensor, float]:
    reader = open_video(path)
    return read_frames(reader, range(len(reader)), path), float(reader.get_avg_fps())


def _list_cell(row: dict[str, str], column: str) -> Any:
    """The Python literal of a structured CSV cell (a list of windows, ids or frame names); a
    blank cell is an empty list."""
    value = row[column]
    if not value.strip():
        return []
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError) as error:
        raise BrokenSample(f"{column} {value!r} is not a Python literal") from error


def _captions(cell: str) -> list[str]:
    """A retrieval `text` cell: a Python list of captions, or else one plain caption (WebVid-style)
    kept as written, even one that reads as another literal ("42", "None", "[laughs] ...")."""
    try:
        captions = ast.literal_eval(cell) if cell.lstrip().startswith("[") else None
    except (ValueError, SyntaxError):
        captions = None
    if isinstance(captions, list) and captions and all(isinstance(caption, str) for caption in captions):
        return captions
    return [cell]


def _root_for(roots: str | Path | dict[str, str], dataset: str) -> Path:
    """The video folder of `dataset`: one folder for every data set, or {data set: folder}."""
    return Path(roots[dataset]) if isinstance(roots, dict) else Path(roots)


class SkipRateExceeded(RuntimeError):
    """More than `ClipOptions.max_skip_rate` of a data set's samples were broken: a config or data
    problem to fix, not broken files to skip."""


class TaskDataset(Dataset):
    """Base: `samples` from an annotation file; `load(sample, generator)` builds one training item.

    `source` names the reader, its data set and annotation file in errors; `tried` and `skipped`
    count the samples this process read and skipped as broken.
    """

    task: str
    # The original's training transform of this task: "short_side" (resize the short side, random
    # crop), "near_masks" (the same, paired with the masks, the crop drawn around them) or
    # "resized" (RandAugment and a random-resized crop); and whether it flips the clips.
    crop: str = "short_side"
    flips: bool = False
    pad_short: Literal["front", "back"] | None = None  # how videos shorter than a clip fill it (`sampled_indices`)

    def __init__(self, options: ClipOptions, annotation: str | Path, dataset: str | None = None) -> None:
        self.options = options
        self.source = f"{type(self).__name__}{f' {dataset!r}' if dataset else ''} ({annotation})"
        self.samples: list[Any] = []
        self.tried = self.skipped = 0
        self._existing(annotation, "annotation file")

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, index: int) -> str:
        return str(self.samples[index])

    def load(self, sample: Any, generator: torch.Generator) -> dict[str, Any]:
        raise NotImplementedError

    # -- checks when a reader is built ---------------------------------------------------------

    def _existing(self, path: str | Path, what: str) -> Path:
        if not Path(path).exists():
            raise FileNotFoundError(f"{self.source}: {what} {path} does not exist")
        return Path(path)

    def _read_table(self, path: str | Path, columns: Sequence[str]) -> list[dict[str, str]]:
        """The rows of a CSV with a header, which must name `columns`."""
        with open(path, newline="") as f:
            rows = csv.DictReader(f)
            missing = [column for column in columns if column not in (rows.fieldnames or ())]
            if missing:
                raise ValueError(f"{self.source}: {path} has no column {missing} (its header: {rows.fieldnames})")
            return list(rows)

    def _read_json(self, path: str | Path, keys: Sequence[str] = ()) -> Any:
        """A JSON file, which must hold `keys`."""
        data = json.loads(self._existing(path, "file").read_text())
        missing = [key for key in keys if key not in data]
        if missing:
            raise ValueError(f"{self.source}: {path} has no {missing}")
        return data

    def _check_video_roots(self, roots: str | Path | dict[str, str], rows: Sequence[dict[str, str]]) -> None:
        """`roots`, one folder or {data set: folder}, give an existing folder to every data set of `rows`."""
        if not isinstance(roots, dict):
            self._existing(roots, "video root")
            return
        datasets = {row.get("dataset") for row in rows}
        if None in datasets:
            raise ValueError(f"{self.source}: video roots are given per data set, but the CSV has no dataset column")
        missing = sorted(datasets - set(roots))
        if missing:
            raise ValueError(f"{self.source}: no video root for data sets {missing} (roots are given for {sorted(roots)})")
        for dataset in sorted(datasets):
            self._existing(roots[dataset], f"video root of {dataset}")

    # -- samples -------------------------------------------------------------------------------

    def get(self, index: int, seed: int) -> dict[str, Any] | None:
        """The item, or None (logged with the reason and counted) when its file or annotation is
        broken. Once more than `max_skip_rate` of the samples tried were broken: {"task", "error"},
        the reason to stop. It is returned, not raised, so that it travels in the batch and every
        DDP rank stops at the same step (`collate`, `StreamFormerPretraining.training_step`); a
        rank that raised alone in its loader would leave the others waiting in a collective."""
        generator = torch.Generator().manual_seed(seed)
        self.tried += 1
        try:
            item = self.load(self.samples[index], generator)
        except SAMPLE_ERRORS as error:
            self.skipped += 1
            logger.warning("skipping %s sample %s: %s", self.task, self.name(index), error)
            if self.tried >= SKIP_RATE_MIN_TRIED and self.skipped > self.options.max_skip_rate * self.tried:
                return {"task": self.task, "error": (
                    f"{self.source}: {self.skipped} of the {self.tried} samples tried were broken, more than"
                    f" max_skip_rate={self.options.max_skip_rate} (the last, {self.name(index)}: {error})"
                )}  # fmt: skip
            return None
        item["task"] = self.task
        if self.options.train and self.options.hflip and self.flips and torch.rand((), generator=generator) < 0.5:
            item["video"] = item["video"].flip(-1)
            if "mask" in item:
                item["mask"] = item["mask"].flip(-1)
        return item

    def frames(self, path: str | Path, generator: torch.Generator, start: float = 0.0, end: float | None = None):
        """Decoded frames uint8 [T, H, W, 3], their frame indices and the video's fps, sampled one
        per segment of the [start, end] seconds window (the whole video by default); random frame
        per segment when training, middle frame otherwise."""
        video = open_clip_video(path, self.options.cache_videos)
        first = min(video.frame_count - 1, int(start * video.fps))
        last = video.frame_count if end is None else max(first + 1, min(video.frame_count, int(np.ceil(end * video.fps))))
        offsets = sampled_indices(
            last - first, self.options.clip_length, generator if self.options.train else None, self.pad_short
        )
        indices = [first + i for i in offsets]
        return video.read(indices), indices, video.fps

    def clip(self, path: str | Path, generator: torch.Generator, start: float = 0.0, end: float | None = None):
        """`frames`, transformed to the model's input [T, 3, S, S]."""
        frames, indices, fps = self.frames(path, generator, start, end)
        return self.transform(frames, generator)[0], indices, fps

    def transform(self, frames: Tensor, generator: torch.Generator, masks: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """uint8 frames [T, H, W, 3] and their masks [T, H, W] -> [T, 3, S, S] and [T, S, S]: the
        task's training transform with `augment`, otherwise a resize to S x S."""
        size = self.options.image_size
        if self.options.train and self.options.augment:
            if self.crop == "resized":
                if masks is not None:
                    raise ValueError("the random-resized crop does not transform masks")
                return resized_crop(frames, size, generator), None
            return short_side_crop(frames, size, generator, masks, near_masks=self.crop == "near_masks")
        return preprocess(frames, size), None if masks is None else resize_masks(masks, size, size)


class ActionRecognitionDataset(TaskDataset):
    """Kinetics/SSv2 CSV without header: `relative_video_path,class_name`; `label2id.json` {name: id}."""

    task = "ar"
    crop = "resized"

    def __init__(
        self,
        csv_path: str,
        prefix: str,
        label2id: str,
        dataset: str = "Kinetics",
        flips: bool = True,
        options: ClipOptions = ClipOptions(),
    ) -> None:
        super().__init__(options, csv_path, dataset)
        self.prefix, self.dataset = self._existing(prefix, "video root"), dataset
        self.flips = flips  # False for classes that name directions (SSv2; the original flipped it too)
        self.label2id: dict[str, int] = self._read_json(label2id)
        self.vocabularies = {dataset: sorted(self.label2id, key=self.label2id.get)}
        with open(csv_path, newline="") as f:
            rows = [row for row in csv.reader(f) if row]
        short = next((row for row in rows if len(row) < 2), None)
        if short is not None:
            raise ValueError(f"{self.source}: rows are `relative_video_path,class_name`, found {short}")
        self.samples = [(row[0], row[1]) for row in rows]

    def load(self, sample, generator):
        path, name = sample
        if name not in self.label2id:
            raise BrokenSample(f"class {name!r} is not in label2id")
        video, _, _ = self.clip(self.prefix / path, generator)
        return {"video": video, "label": self.label2id[name], "dataset": self.dataset}


class RetrievalDataset(TaskDataset):
    """CSV with header `video_id,dataset,text`; `text` a Python list of captions (one drawn per
    access) or one plain caption.

    `video_root`: one folder, or {data set: folder}; `trimmed_seconds`: {data set: seconds} read
    from the start of those videos only (the original keeps DiDeMo's first 30 s)."""

    task = "retrieval"
    flips = True
    pad_short = "back"
    _EXTENSIONS = {"LSMDC": ".avi", "MSVD": ".avi"}

    def __init__(
        self,
        csv_path: str,
        video_root: str | dict[str, str],
        trimmed_seconds: dict[str, float] | None = None,
        options: ClipOptions = ClipOptions(),
    ) -> None:
        super().__init__(options, csv_path)
        self.video_root, self.trimmed_seconds = video_root, dict(trimmed_seconds or {})
        self.samples = self._read_table(csv_path, ("video_id", "text"))
        self._check_video_roots(video_root, self.samples)

    def name(self, index):
        return self.samples[index]["video_id"]

    def load(self, row, generator):
        captions = _captions(row["text"])
        pick = int(torch.randint(len(captions), (), generator=generator)) if self.options.train else 0
        dataset = row.get("dataset", "")
        path = _root_for(self.video_root, dataset) / (row["video_id"] + self._EXTENSIONS.get(dataset, ".mp4"))
        video, _, _ = self.clip(path, generator, end=self.trimmed_seconds.get(dataset))
        return {"video": video, "caption": captions[pick]}


class GroundingDataset(TaskDataset):
    """CSV `video_id,start_second,end_second,text,relevant_windows,dataset`; per-frame 0/1 labels.

    The clip covers `window_seconds` around the moment (the moment itself if longer), shifted to
    stay inside the video; a frame is positive when its timestamp lies in a relevant window
    [start, end) (half-open: a frame exactly at the end time belongs to what follows); a row
    without relevant windows uses [start_second, end_second).
    `video_root` is one folder or {data set: folder}; TaCoS videos are `<id>-cam-002.avi`. The
    rows of action data sets (FineAction, HACS, ActivityNet) name an action, and their caption
    gets one of `CAPTION_PREFIXES` in front (at random when training, the first otherwise).
    """

    task = "grounding"
    CAPTION_PREFIXES = (
        "A video of an action where", "A video showing", "A video that demonstrates", "A video clip of",
        "A video recording of", "A video featuring", "A video capturing", "A video displaying",
        "A video presenting", "A video illustrating", "Watch this action where", "Look at this scene showing",
        "Here is a demonstration of", "This clip captures", "Observe this recording of", "This moment shows",
        "Witness this scene of",
    )  # fmt: skip
    PREFIXED_DATASETS = ("FineAction", "HACS", "ActivityNet")

    def __init__(
        self,
        csv_path: str,
        video_root: str | dict[str, str],
        window_seconds: float = 16.0,
        options: ClipOptions = ClipOptions(),
    ) -> None:
        super().__init__(options, csv_path)
        self.video_root = video_root
        self.window_seconds = window_seconds
        self.samples = self._read_table(csv_path, ("video_id", "start_second", "end_second", "text", "relevant_windows"))
        self._check_video_roots(video_root, self.samples)

    def name(self, index):
        return f"{self.samples[index]['video_id']} [{self.samples[index]['start_second']}, {self.samples[index]['end_second']}]"

    def caption(self, row: dict[str, str], generator: torch.Generator) -> str:
        if row.get("dataset") not in self.PREFIXED_DATASETS:
            return row["text"]
        pick = int(torch.randint(len(self.CAPTION_PREFIXES), (), generator=generator)) if self.options.train else 0
        return f"{self.CAPTION_PREFIXES[pick]} {row['text']}"

    def load(self, row, generator):
        dataset = row.get("dataset", "")
        name = f"{row['video_id']}-cam-002.avi" if dataset == "TaCoS" else f"{row['video_id']}.mp4"
        path = _root_for(self.video_root, dataset) / name
        start, end = float(row["start_second"]), float(row["end_second"])
        windows = _list_cell(row, "relevant_windows") or [[start, end]]
        source = open_clip_video(path, self.options.cache_videos)
        duration = source.frame_count / source.fps
        if end - start >= self.window_seconds:
            lo, hi = start, end
        else:
            centre = (start + end) / 2
            lo = min(max(0.0, centre - self.window_seconds / 2), max(0.0, duration - self.window_seconds))
            hi = min(duration, lo + self.window_seconds)
        video, indices, fps = self.clip(path, generator, lo, hi)
        times = torch.tensor(indices, dtype=torch.float64) / fps
        labels = torch.zeros(len(indices), dtype=torch.long)
        for s, e in windows:
            labels |= ((times >= s) & (times < e)).long()
        return {"video": video, "caption": self.caption(row, generator), "frame_labels": labels}


class LocalizationDataset(TaskDataset):
    """CSV as grounding, one row per (video, class); `label2id.json` {dataset: {class: id}}, one
    class vocabulary per data set (each sample is scored against its own data set's classes).

    Rows of one video are merged, so every frame carries its own class (-1 = background).
    `video_root` is one folder or {data set: folder}; HACS videos are `v_<id>.mp4`.
    """

    task = "localization"

    def __init__(
        self, csv_path: str, video_root: str | dict[str, str], label2id: str, options: ClipOptions = ClipOptions()
    ) -> None:
        super().__init__(options, csv_path)
        self.video_root = video_root
        self.label2id: dict[str, dict[str, int]] = self._read_json(label2id)
        self.vocabularies = {dataset: sorted(classes, key=classes.get) for dataset, classes in self.label2id.items()}
        rows = self._read_table(csv_path, ("video_id", "dataset", "text", "relevant_windows"))
        self._check_video_roots(video_root, rows)
        videos: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row["dataset"] not in self.label2id:
                raise ValueError(f"{self.source}: data set {row['dataset']!r} has no classes in {label2id}")
            try:
                windows = _list_cell(row, "relevant_windows")
            except BrokenSample as error:
                raise ValueError(f"{self.source}: video {row['video_id']}: {error}") from error
            entry = videos.setdefault(row["video_id"], {"video_id": row["video_id"], "dataset": row["dataset"], "windows": []})
            entry["windows"].append((row["text"], windows))
        self.samples = list(videos.values())

    def name(self, index):
        return self.samples[index]["video_id"]

    def load(self, sample, generator):
        dataset = sample["dataset"]
        classes = self.label2id[dataset]
        file = f"v_{sample['video_id']}.mp4" if dataset == "HACS" else f"{sample['video_id']}.mp4"
        video, indices, fps = self.clip(_root_for(self.video_root, dataset) / file, generator)
        times = torch.tensor(indices, dtype=torch.float64) / fps
        labels = torch.full((len(indices),), -1, dtype=torch.long)
        for name, windows in sample["windows"]:
            for s, e in windows:
                labels[(times >= s) & (times < e)] = classes[name]
        return {"video": video, "frame_labels": labels, "dataset": sample["dataset"]}


class VisDataset(TaskDataset):
    """YouTube-VIS JSON; target = semantic map [T, S, S] of category ids (0 background).

    Frame files are read relative to `frame_root`; instances of one category are OR-ed, later
    categories win overlaps (as the original). Clips whose masks are empty are rejected.
    """

    task = "vis"
    crop = "near_masks"
    flips = True
    pad_short = "front"

    def __init__(
        self, json_path: str, frame_root: str, label2id: str, dataset: str, options: ClipOptions = ClipOptions()
    ) -> None:
        super().__init__(options, json_path, dataset)
        data = self._read_json(json_path, ("videos", "annotations"))
        self.frame_root, self.dataset = self._existing(frame_root, "frame root"), dataset
        classes = self._read_json(label2id, (dataset,))[dataset]  # mask values index this order; 0 = background
        self.vocabularies = {dataset: sorted(classes, key=classes.get)}
        annotations: dict[int, list] = {}
        for ann in data["annotations"]:
            annotations.setdefault(ann["video_id"], []).append(ann)
        self.samples = [(video, annotations[video["id"]]) for video in data["videos"] if video["id"] in annotations]

    def name(self, index):
        return str(self.samples[index][0]["id"])

    def load(self, sample, generator):
        video, anns = sample
        offsets = sampled_indices(
            video["length"], self.options.clip_length, generator if self.options.train else None, self.pad_short
        )
        frames = torch.from_numpy(
            np.stack([np.asarray(Image.open(self.frame_root / video["file_names"][i]).convert("RGB")) for i in offsets])
        )
        h, w = video["height"], video["width"]
        semantic = torch.zeros(len(offsets), h, w, dtype=torch.long)
        for ann in sorted(anns, key=lambda a: a["category_id"]):
            for t, i in enumerate(offsets):
                if (seg := ann["segmentations"][i]) is not None:
                    semantic[t][torch.from_numpy(decode_segmentation(seg, h, w)).bool()] = ann["category_id"]
        if not semantic.any():
            raise BrokenSample("empty mask in every sampled frame")
        video, mask = self.transform(frames, generator, semantic)
        return {"video": video, "mask": mask, "dataset": self.dataset}


class ReferringDataset(TaskDataset):
    """MeViS CSV `video_id,text,frames,length,obj_id,anno_id`; masks `mask_root/<anno_id>.json`
    (per-frame RLE or null), the union over the expression's objects."""

    task = "rvos"
    crop = "near_masks"  # no flips: expressions name left and right
    COLUMNS = ("video_id", "text", "anno_id")  # the CSV columns `load` reads

    def __init__(self, csv_path: str, video_root: str, mask_root: str, options: ClipOptions = ClipOptions()) -> None:
        super().__init__(options, csv_path)
        self.video_root, self.mask_root = self._existing(video_root, "video root"), self._existing(mask_root, "mask root")
        self.samples = self._read_table(csv_path, self.COLUMNS)

    def name(self, index):
        return f"{self.samples[index]['video_id']}: {self.samples[index]['text']}"

    def load(self, row, generator):
        frames, indices, _ = self.frames(self.video_root / f"{row['video_id']}.mp4", generator)
        target = None
        for anno_id in _list_cell(row, "anno_id"):
            per_frame = json.loads((self.mask_root / f"{anno_id}.json").read_text())
            if len(per_frame) <= max(indices):  # a re-encoded video can count more frames than its masks
                raise BrokenSample(f"{anno_id}.json holds {len(per_frame)} frames' masks, the clip reads frame {max(indices)}")
            for t, i in enumerate(indices):
                if (seg := per_frame[i]) is None:
                    continue
                decoded = torch.from_numpy(decode_segmentation(seg, *seg["size"])).bool()
                if target is None:
                    target = torch.zeros(len(indices), *decoded.shape, dtype=torch.bool)
                target[t] |= decoded
        if target is None or not target.any():
            raise BrokenSample("empty mask in every sampled frame")
        video, mask = self.transform(frames, generator, target.long())
        return {"video": video, "caption": row["text"], "mask": mask}


def _pseudo_video(path: Path, mask: Tensor, clip_length: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """The image at `path` and its integer mask [H, W] as a still clip (`pseudo_video`)."""
    image = Image.open(path).convert("RGB")
    if (image.height, image.width) != tuple(mask.shape):
        raise BrokenSample(f"image is {image.height}x{image.width}, its annotation {mask.shape[0]}x{mask.shape[1]}")
    return pseudo_video(image, mask, clip_length, generator)


class CocoPseudoVisDataset(TaskDataset):
    """COCO instance JSON as VIS pseudo-videos: one annotated image repeated `clip_length` times,
    each copy randomly rotated at train time (`_pseudo_video`); target = semantic map [T, S, S].

    Category ids are remapped to their 0-based position in `categories`, as the original: the
    first category (COCO's person) therefore gets id 0, the background, and is never supervised;
    an image annotated with it alone has an empty mask and is rejected. Instances of a category
    are OR-ed, later categories win overlaps (as `VisDataset`).
    """

    task = "vis"
    crop = "near_masks"
    flips = True

    def __init__(
        self,
        json_path: str,
        image_root: str,
        label2id: str,
        dataset: str = "COCOPseudoVIS",
        options: ClipOptions = ClipOptions(),
    ) -> None:
        super().__init__(options, json_path, dataset)
        data = self._read_json(json_path, ("images", "annotations", "categories"))
        self.image_root, self.dataset = self._existing(image_root, "image root"), dataset
        classes = self._read_json(label2id, (dataset,))[dataset]  # mask values index this order; 0 = background
        self.vocabularies = {dataset: sorted(classes, key=classes.get)}
        self.category_ids = {category["id"]: position for position, category in enumerate(data["categories"])}
        names = [category["name"] for category in data["categories"]]
        if names != self.vocabularies[dataset][: len(names)]:
            raise ValueError(
                f"{self.source}: {label2id}[{dataset}] must list the categories in their order (mask ids are positions)"
            )
        annotations: dict[int, list] = {}
        for ann in data["annotations"]:
            annotations.setdefault(ann["image_id"], []).append(ann)
        self.samples = [(image, annotations[image["id"]]) for image in data["images"] if image["id"] in annotations]

    def name(self, index):
        return self.samples[index][0]["file_name"]

    def load(self, sample, generator):
        image, anns = sample
        h, w = image["height"], image["width"]
        semantic = torch.zeros(h, w, dtype=torch.long)
        for ann in sorted(anns, key=lambda a: self.category_ids[a["category_id"]]):
            decoded = torch.from_numpy(decode_segmentation(ann["segmentation"], h, w)).bool()
            semantic[decoded] = self.category_ids[ann["category_id"]]
        frames, masks = _pseudo_video(
            self.image_root / image["file_name"], semantic, self.options.clip_length, generator if self.options.train else None
        )
        if not masks.any():
            raise BrokenSample("empty mask in every frame")
        video, mask = self.transform(frames, generator, masks)
        return {"video": video, "mask": mask, "dataset": self.dataset}


class RefCocoPseudoDataset(TaskDataset):
    """RefCOCO JSON as RVOS pseudo-videos: `images` (file_name, caption, height, width) and their
    `annotations` (segmentation) aligned by position; the image repeated as in `CocoPseudoVisDataset`."""

    task = "rvos"
    crop = "near_masks"  # no flips: expressions name left and right

    def __init__(self, json_path: str, image_root: str, options: ClipOptions = ClipOptions()) -> None:
        super().__init__(options, json_path)
        data = self._read_json(json_path, ("images", "annotations"))
        self.image_root = self._existing(image_root, "image root")
        self.samples = list(zip(data["images"], data["annotations"], strict=True))

    def name(self, index):
        return f"{self.samples[index][0]['file_name']}: {self.samples[index][0]['caption']}"

    def load(self, sample, generator):
        image, ann = sample
        target = torch.from_numpy(decode_segmentation(ann["segmentation"], image["height"], image["width"])).long()
        frames, masks = _pseudo_video(
            self.image_root / image["file_name"], target, self.options.clip_length, generator if self.options.train else None
        )
        if not masks.any():
            raise BrokenSample("empty mask in every frame")
        video, mask = self.transform(frames, generator, masks)
        return {"video": video, "caption": image["caption"], "mask": mask}


class ReferYoutubeVosDataset(ReferringDataset):
    """Ref-YouTube-VOS: the MeViS CSV columns, but each video is a folder of JPEG frames
    `frame_root/<video_id>/<frame>.jpg` and its masks palette PNGs `mask_root/<video_id>/<frame>.png`
    of object ids; target = union over the expression's `obj_id`s.

    Reads the sampled frames of the `frames` list; the original read the first 16 frames whatever
    it sampled.
    """

    COLUMNS = ("video_id", "text", "frames", "obj_id")

    def __init__(self, csv_path: str, frame_root: str, mask_root: str, options: ClipOptions = ClipOptions()) -> None:
        super().__init__(csv_path, frame_root, mask_root, options)  # its `video_root` holds frame folders

    def load(self, row, generator):
        names = _list_cell(row, "frames")
        objects = [int(i) for i in _list_cell(row, "obj_id")]
        indices = segment_indices(len(names), self.options.clip_length, generator if self.options.train else None)
        frames = np.stack(
            [np.asarray(Image.open(self.video_root / row["video_id"] / f"{names[i]}.jpg").convert("RGB")) for i in indices]
        )
        masks = []
        for i in indices:
            png = Image.open(self.mask_root / row["video_id"] / f"{names[i]}.png")
            if png.mode not in ("P", "L"):
                raise BrokenSample(f"{png.filename}: expected a palette or grey-level PNG, got mode {png.mode}")
            masks.append(np.isin(np.asarray(png), objects))  # palette indices, not colours: the object ids
        target = torch.from_numpy(np.stack(masks))
        if target.shape != frames.shape[:3]:
            raise BrokenSample(f"masks {tuple(target.shape)} do not match frames {frames.shape[:3]}")
        if not target.any():
            raise BrokenSample("empty mask in every sampled frame")
        video, mask = self.transform(torch.from_numpy(frames), generator, target.long())
        return {"video": video, "caption": row["text"], "mask": mask}
