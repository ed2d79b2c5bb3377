"""Readers of the original pretraining annotation formats, the task-balanced sampler, the DataModule.

One reader per task (reference/streamformer.md section 7); each returns a sample dict or `None`
when its video or annotation is broken. The collate function drops those, logs them by name and
counts them in the batch (`skipped`), so nothing is silently replaced. Every batch holds one task.

Randomness (frame offsets, caption and prefix choice, crops, RandAugment, pseudo-video rotations,
flips) comes from a per-sample seed the sampler derives from (seed, epoch, position): a run's data
order and content are reproducible and resumable.
"""

from __future__ import annotations

import ast
import bisect
import csv
import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from streamformer.synthetic import DATASET
from streamformer.video import open_video, preprocess, read_frames, segment_indices

from .transforms import resize_masks, resized_crop, short_side_crop

logger = logging.getLogger(__name__)

TASKS = ("ar", "retrieval", "grounding", "localization", "vis", "rvos")


@dataclass(frozen=True)
class ClipOptions:
    num_frames: int = 16
    image_size: int = 224
    train: bool = True
    augment: bool = False  # the original's training crops and RandAugment (`transforms`); off: resize to a square
    hflip: bool = False  # paired horizontal flips at train time, in the tasks the original flips
    cache_videos: bool = False  # keep every decoded video in memory (small data sets only, see `Video`)


class Video(NamedTuple):
    """An mp4's frame count, fps and a frame reader."""

    num_frames: int
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


def _read_csv(path: str | Path, header: bool = True) -> list[dict[str, str]] | list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f)) if header else [row for row in csv.reader(f) if row]


def _literal(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value  # WebVid-style plain captions


def _root_for(roots: str | Path | dict[str, str], dataset: str) -> Path:
    """The video folder of `dataset`: one folder for every data set, or {data set: folder}."""
    if not isinstance(roots, dict):
        return Path(roots)
    if dataset not in roots:
        raise KeyError(f"no video root for data set {dataset!r} (roots are given for {sorted(roots)})")
    return Path(roots[dataset])


def sampled_indices(
    length: int, num_frames: int, generator: torch.Generator | None, pad: Literal["front", "back"] | None = None
) -> list[int]:
    """One frame per segment (`segment_indices`: random when a `generator` is given, else the
    middle). With `pad`, a video of fewer than `num_frames` frames instead takes each frame once
    and repeats its first frame before them ("front", the original's VIS) or its last after them
    ("back", its retrieval); without, its frames repeat throughout."""
    if pad is None or length >= num_frames:
        return segment_indices(length, num_frames, generator)
    if pad == "front":
        return [0] * (num_frames - length) + list(range(length))
    return list(range(length)) + [length - 1] * (num_frames - length)


class TaskDataset(Dataset):
    """Base: `samples` from an annotation file; `load(sample, generator)` builds one training item."""

    task: str
    # The original's training transform of this task (section 7): "short_side" (resize the short
    # side, random crop), "near_masks" (the same, paired with the masks, the crop drawn around
    # them) or "resized" (RandAugment and a random-resized crop); and whether it flips the clips.
    crop: str = "short_side"
    flips: bool = False
    pad_short: Literal["front", "back"] | None = None  # how videos shorter than a clip fill it (`sampled_indices`)

    def __init__(self, options: ClipOptions) -> None:
        self.options = options
        self.samples: list[Any] = []

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, index: int) -> str:
        return str(self.samples[index])

    def load(self, sample: Any, generator: torch.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def get(self, index: int, seed: int) -> dict[str, Any] | None:
        """The item, or None (logged with the reason) when its video or annotation is broken."""
        generator = torch.Generator().manual_seed(seed)
        try:
            item = self.load(self.samples[index], generator)
        except Exception as error:  # a broken file must not kill an epoch; it is named and counted
            logger.warning("skipping %s sample %s: %s", self.task, self.name(index), error)
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
        first = min(video.num_frames - 1, int(start * video.fps))
        last = video.num_frames if end is None else max(first + 1, min(video.num_frames, int(np.ceil(end * video.fps))))
        offsets = sampled_indices(
            last - first, self.options.num_frames, generator if self.options.train else None, self.pad_short
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
        super().__init__(options)
        self.prefix, self.dataset = Path(prefix), dataset
        self.flips = flips  # False for classes that name directions (SSv2; the original flipped it too)
        self.label2id: dict[str, int] = json.loads(Path(label2id).read_text())
        self.vocabularies = {dataset: sorted(self.label2id, key=self.label2id.get)}
        self.samples = [(row[0], row[1]) for row in _read_csv(csv_path, header=False)]

    def load(self, sample, generator):
        path, name = sample
        if name not in self.label2id:
            raise KeyError(f"class {name!r} is not in label2id")
        video, _, _ = self.clip(self.prefix / path, generator)
        return {"video": video, "label": self.label2id[name], "dataset": self.dataset}


class RetrievalDataset(TaskDataset):
    """CSV with header `video_id,dataset,text`; `text` a Python list of captions (one drawn per access).

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
        super().__init__(options)
        self.video_root, self.trimmed_seconds = video_root, dict(trimmed_seconds or {})
        self.samples = _read_csv(csv_path)

    def name(self, index):
        return self.samples[index]["video_id"]

    def load(self, row, generator):
        captions = _literal(row["text"])
        captions = [captions] if isinstance(captions, str) else list(captions)
        pick = int(torch.randint(len(captions), (), generator=generator)) if self.options.train else 0
        dataset = row.get("dataset", "")
        path = _root_for(self.video_root, dataset) / (row["video_id"] + self._EXTENSIONS.get(dataset, ".mp4"))
        video, _, _ = self.clip(path, generator, end=self.trimmed_seconds.get(dataset))
        return {"video": video, "caption": captions[pick]}


class GroundingDataset(TaskDataset):
    """CSV `video_id,start_second,end_second,text,relevant_windows,dataset`; per-frame 0/1 labels.

    The clip covers `window_seconds` around the moment (the moment itself if longer), shifted to
    stay inside the video; a frame is positive when its timestamp lies in a relevant window
    [start, end) (half-open: a frame exactly at the end time belongs to what follows).
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
        super().__init__(options)
        self.video_root = video_root
        self.window_seconds = window_seconds
        self.samples = _read_csv(csv_path)

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
        windows = _literal(row["relevant_windows"]) or [[start, end]]
        source = open_clip_video(path, self.options.cache_videos)
        duration = source.num_frames / source.fps
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
        super().__init__(options)
        self.video_root = video_root
        self.label2id: dict[str, dict[str, int]] = json.loads(Path(label2id).read_text())
        self.vocabularies = {dataset: sorted(classes, key=classes.get) for dataset, classes in self.label2id.items()}
        videos: dict[str, dict[str, Any]] = {}
        for row in _read_csv(csv_path):
            if row["dataset"] not in self.label2id:
                raise ValueError(f"{csv_path}: data set {row['dataset']!r} has no classes in {label2id}")
            entry = videos.setdefault(row["video_id"], {"video_id": row["video_id"], "dataset": row["dataset"], "windows": []})
            entry["windows"].append((row["text"], _literal(row["relevant_windows"])))
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


def _decode_rle(segmentation: dict, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation.get("counts"), list):  # uncompressed RLE (YouTube-VIS)
        segmentation = mask_utils.frPyObjects(segmentation, height, width)
    return mask_utils.decode(segmentation)


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
        super().__init__(options)
        data = json.loads(Path(json_path).read_text())
        self.frame_root, self.dataset = Path(frame_root), dataset
        classes = json.loads(Path(label2id).read_text())[dataset]  # mask values index this order; 0 = background
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
            video["length"], self.options.num_frames, generator if self.options.train else None, self.pad_short
        )
        frames = torch.from_numpy(
            np.stack([np.asarray(Image.open(self.frame_root / video["file_names"][i]).convert("RGB")) for i in offsets])
        )
        h, w = video["height"], video["width"]
        semantic = torch.zeros(len(offsets), h, w, dtype=torch.long)
        for ann in sorted(anns, key=lambda a: a["category_id"]):
            for t, i in enumerate(offsets):
                if (seg := ann["segmentations"][i]) is not None:
                    semantic[t][torch.from_numpy(_decode_rle(seg, h, w)).bool()] = ann["category_id"]
        if not semantic.any():
            raise ValueError("empty mask in every sampled frame")
        video, mask = self.transform(frames, generator, semantic)
        return {"video": video, "mask": mask, "dataset": self.dataset}


class ReferringDataset(TaskDataset):
    """MeViS CSV `video_id,text,frames,length,obj_id,anno_id`; masks `mask_root/<anno_id>.json`
    (per-frame RLE or null), the union over the expression's objects."""

    task = "rvos"
    crop = "near_masks"  # no flips: expressions name left and right

    def __init__(self, csv_path: str, video_root: str, mask_root: str, options: ClipOptions = ClipOptions()) -> None:
        super().__init__(options)
        self.video_root, self.mask_root = Path(video_root), Path(mask_root)
        self.samples = _read_csv(csv_path)

    def name(self, index):
        return f"{self.samples[index]['video_id']}: {self.samples[index]['text']}"

    def load(self, row, generator):
        frames, indices, _ = self.frames(self.video_root / f"{row['video_id']}.mp4", generator)
        target = None
        for anno_id in _literal(row["anno_id"]):
            per_frame = json.loads((self.mask_root / f"{anno_id}.json").read_text())
            for t, i in enumerate(indices):
                if (seg := per_frame[i]) is None:
                    continue
                decoded = torch.from_numpy(_decode_rle(seg, *seg["size"])).bool()
                if target is None:
                    target = torch.zeros(len(indices), *decoded.shape, dtype=torch.bool)
                target[t] |= decoded
        if target is None or not target.any():
            raise ValueError("empty mask in every sampled frame")
        video, mask = self.transform(frames, generator, target.long())
        return {"video": video, "caption": row["text"], "mask": mask}


def _decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """A COCO segmentation -> uint8 mask [H, W]: polygons (flat x, y lists), uncompressed or compressed RLE."""
    if isinstance(segmentation, dict):
        return _decode_rle(segmentation, height, width)
    polygons = [p for p in segmentation if len(p) >= 6]  # frPyObjects would read 4 numbers as a box
    if not polygons:
        return np.zeros((height, width), dtype=np.uint8)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))


def _pseudo_video(path: Path, mask: Tensor, num_frames: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """An image and its integer mask [H, W] as a still clip: uint8 frames [T, H, W, 3], masks [T, H, W].

    With a `generator` (training) every copy is rotated by its own angle ~ U(-15, 15) degrees about
    the image centre jittered by up to a tenth of the width and height (frame bilinear, mask
    nearest, zeros outside), as the original's COCO pseudo-videos; without, the copies are equal.
    """
    image = Image.open(path).convert("RGB")
    if (image.height, image.width) != tuple(mask.shape):
        raise ValueError(f"image is {image.height}x{image.width}, its annotation {mask.shape[0]}x{mask.shape[1]}")
    if generator is None:
        return torch.from_numpy(np.array(image))[None].repeat(num_frames, 1, 1, 1), mask[None].repeat(num_frames, 1, 1)
    labels = Image.fromarray(mask.numpy().astype(np.int32))  # mode "I": class ids survive the rotation
    frames, masks = [], []
    for _ in range(num_frames):
        angle, dx, dy = (2 * torch.rand(3, generator=generator, dtype=torch.float64) - 1).tolist()
        centre = (image.width * (0.5 + dx / 10), image.height * (0.5 + dy / 10))
        frames.append(np.asarray(image.rotate(15 * angle, resample=Image.Resampling.BILINEAR, center=centre)))
        masks.append(np.asarray(labels.rotate(15 * angle, resample=Image.Resampling.NEAREST, center=centre)))
    return torch.from_numpy(np.stack(frames)), torch.from_numpy(np.stack(masks)).to(mask.dtype)


class CocoPseudoVisDataset(TaskDataset):
    """COCO instance JSON as VIS pseudo-videos: one annotated image repeated `num_frames` times,
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
        super().__init__(options)
        data = json.loads(Path(json_path).read_text())
        self.image_root, self.dataset = Path(image_root), dataset
        classes = json.loads(Path(label2id).read_text())[dataset]  # mask values index this order; 0 = background
        self.vocabularies = {dataset: sorted(classes, key=classes.get)}
        self.category_ids = {category["id"]: position for position, category in enumerate(data["categories"])}
        names = [category["name"] for category in data["categories"]]
        if names != self.vocabularies[dataset][: len(names)]:
            raise ValueError(f"{label2id}[{dataset}] must list {json_path}'s categories in their order (mask ids are positions)")
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
            decoded = torch.from_numpy(_decode_segmentation(ann["segmentation"], h, w)).bool()
            semantic[decoded] = self.category_ids[ann["category_id"]]
        frames, masks = _pseudo_video(
            self.image_root / image["file_name"], semantic, self.options.num_frames, generator if self.options.train else None
        )
        if not masks.any():
            raise ValueError("empty mask in every frame")
        video, mask = self.transform(frames, generator, masks)
        return {"video": video, "mask": mask, "dataset": self.dataset}


class RefCocoPseudoDataset(TaskDataset):
    """RefCOCO JSON as RVOS pseudo-videos: `images` (file_name, caption, height, width) and their
    `annotations` (segmentation) aligned by position; the image repeated as in `CocoPseudoVisDataset`."""

    task = "rvos"
    crop = "near_masks"  # no flips: expressions name left and right

    def __init__(self, json_path: str, image_root: str, options: ClipOptions = ClipOptions()) -> None:
        super().__init__(options)
        data = json.loads(Path(json_path).read_text())
        self.image_root = Path(image_root)
        self.samples = list(zip(data["images"], data["annotations"], strict=True))

    def name(self, index):
        return f"{self.samples[index][0]['file_name']}: {self.samples[index][0]['caption']}"

    def load(self, sample, generator):
        image, ann = sample
        target = torch.from_numpy(_decode_segmentation(ann["segmentation"], image["height"], image["width"])).long()
        frames, masks = _pseudo_video(
            self.image_root / image["file_name"], target, self.options.num_frames, generator if self.options.train else None
        )
        if not masks.any():
            raise ValueError("empty mask in every frame")
        video, mask = self.transform(frames, generator, masks)
        return {"video": video, "caption": image["caption"], "mask": mask}


class ReferYoutubeVosDataset(ReferringDataset):
    """Ref-YouTube-VOS: the MeViS CSV columns, but each video is a folder of JPEG frames
    `frame_root/<video_id>/<frame>.jpg` and its masks palette PNGs `mask_root/<video_id>/<frame>.png`
    of object ids; target = union over the expression's `obj_id`s.

    Reads the sampled frames of the `frames` list; the original read the first 16 frames whatever
    it sampled.
    """

    def __init__(self, csv_path: str, frame_root: str, mask_root: str, options: ClipOptions = ClipOptions()) -> None:
        super().__init__(csv_path, frame_root, mask_root, options)  # its `video_root` holds frame folders

    def load(self, row, generator):
        names = _literal(row["frames"])
        objects = [int(i) for i in _literal(row["obj_id"])]
        indices = segment_indices(len(names), self.options.num_frames, generator if self.options.train else None)
        frames = np.stack(
            [np.asarray(Image.open(self.video_root / row["video_id"] / f"{names[i]}.jpg").convert("RGB")) for i in indices]
        )
        masks = []
        for i in indices:
            png = Image.open(self.mask_root / row["video_id"] / f"{names[i]}.png")
            if png.mode not in ("P", "L"):
                raise ValueError(f"{png.filename}: expected a palette or grey-level PNG, got mode {png.mode}")
            masks.append(np.isin(np.asarray(png), objects))  # palette indices, not colours: the object ids
        target = torch.from_numpy(np.stack(masks))
        if target.shape != frames.shape[:3]:
            raise ValueError(f"masks {tuple(target.shape)} do not match frames {frames.shape[:3]}")
        if not target.any():
            raise ValueError("empty mask in every sampled frame")
        video, mask = self.transform(torch.from_numpy(frames), generator, target.long())
        return {"video": video, "caption": row["text"], "mask": mask}


# ---------------------------------------------------------------------------------------------
# Mixing tasks


class MultiTaskDataset(Dataset):
    """Task datasets side by side, indexed by (task, index, seed) keys from the batch sampler."""

    def __init__(self, datasets: dict[str, TaskDataset]) -> None:
        self.datasets = datasets

    def __getitem__(self, key: tuple[str, int, int]) -> dict[str, Any] | None:
        task, index, seed = key
        return self.datasets[task].get(index, seed)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets.values())


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a pure function of `parts` (the same in every process and run)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


def small_task_repeats(task_sizes: dict[str, int], scale: float = 2.0) -> dict[str, int]:
    """The original's `balance_sample_num`: a task with fewer than max / `scale` samples recurs
    max // size times per epoch, every other task once."""
    largest = max(task_sizes.values())
    return {task: largest // n if n * scale < largest else 1 for task, n in task_sizes.items()}


class TaskBalancedBatchSampler(Sampler[list[tuple[str, int, int]]]):
    """Batches of one task each, tasks interleaved in proportion to their size.

    Per epoch every task's indices are shuffled with a generator seeded by (seed, epoch), the same
    on every rank, and cut into global batches of `batch_size * world_size` (a rank takes its
    slice). A task with k times as many batches as the smallest one emits k batches per round;
    rounds continue until every task has emitted all of its batches (a task that runs out just
    leaves the rotation, instead of indexing past its end as the original did).

    `repeats` (default 1) makes a task's samples recur that many times per epoch, each time in
    another place of the shuffled order (`small_task_repeats`). `start_batch` skips the batches a
    resumed run already trained on in its first epoch.
    """

    def __init__(
        self,
        task_sizes: dict[str, int],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        repeats: dict[str, int] | None = None,
    ) -> None:
        empty = [task for task, n in task_sizes.items() if n < batch_size * world_size]
        if empty:
            raise ValueError(f"tasks with fewer samples than one global batch ({batch_size * world_size}): {empty}")
        repeats = repeats or {}
        self.task_sizes = {task: n * repeats.get(task, 1) for task, n in task_sizes.items()}  # samples per epoch
        self.dataset_sizes = dict(task_sizes)
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[tuple[str, list[int]]]:
        per_task = {}
        size = self.batch_size * self.world_size
        for task, n in self.task_sizes.items():
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, task))
            order = (torch.randperm(n, generator=generator) % self.dataset_sizes[task]).tolist()
            per_task[task] = [order[i : i + size] for i in range(0, n - size + 1, size)]
        smallest = min(len(b) for b in per_task.values())
        scale = {task: len(b) // smallest for task, b in per_task.items()}
        batches, cursor = [], dict.fromkeys(per_task, 0)
        while any(cursor[t] < len(per_task[t]) for t in per_task):
            for task, task_batches in per_task.items():
                take = task_batches[cursor[task] : cursor[task] + scale[task]]
                batches += [(task, b) for b in take]
                cursor[task] += len(take)
        return batches

    def __iter__(self) -> Iterator[list[tuple[str, int, int]]]:
        for position, (task, batch) in enumerate(self._global_batches()):
            if position < self.start_batch:
                continue
            local = batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            yield [(task, index, derive_seed(self.seed, self.epoch, position, index)) for index in local]
        self.start_batch = 0

    def __len__(self) -> int:
        size = self.batch_size * self.world_size
        return sum(n // size for n in self.task_sizes.values())


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `TaskBalancedBatchSampler` that Lightning can checkpoint mid-epoch.

    Lightning stores `state_dict()` (batches handed out this epoch) in every checkpoint and gives
    it back through `load_state_dict()` on resume; the next iteration then starts at the following
    batch of the same epoch order instead of replaying the epoch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._resume_at = 0

    def __iter__(self) -> Iterator[Any]:
        self.batch_sampler.start_batch, self._resume_at = self._resume_at, 0
        self._served = self.batch_sampler.start_batch
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        finished = self._served >= len(self.batch_sampler)  # saved on an epoch's last batch: the next starts afresh
        return {"batches_served": 0 if finished else self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = state["batches_served"]


def collate(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack one task's items; broken ones (None) are dropped and counted in `skipped`."""
    kept = [item for item in items if item is not None]
    batch: dict[str, Any] = {"skipped": len(items) - len(kept), "task": kept[0]["task"] if kept else None}
    for key in kept[0] if kept else ():
        if key == "task":
            continue
        values = [item[key] for item in kept]
        batch[key] = (
            torch.stack(values)
            if isinstance(values[0], Tensor)
            else torch.tensor(values)
            if isinstance(values[0], int)
            else values
        )
    return batch


DEFAULT_READERS: dict[str, type[TaskDataset]] = {
    "ar": ActionRecognitionDataset,
    "retrieval": RetrievalDataset,
    "grounding": GroundingDataset,
    "localization": LocalizationDataset,
    "vis": VisDataset,
    "rvos": ReferringDataset,
}  # each task's default reader
READERS_BY_NAME: dict[str, type[TaskDataset]] = {
    cls.__name__: cls for cls in (*DEFAULT_READERS.values(), CocoPseudoVisDataset, RefCocoPseudoDataset, ReferYoutubeVosDataset)
}


class DatasetMixture(Dataset):
    """Several data sets of one task read as one (the original's mixtures: Kinetics-400 and SSv2;
    ActivityNet, HACS and FineAction; ...). Indices run through the readers in order; each
    sample keeps its data set's name, and so its class vocabulary."""

    def __init__(self, readers: Sequence[TaskDataset]) -> None:
        if len({reader.task for reader in readers}) != 1:
            raise ValueError(f"one task per DatasetMixture, got {sorted({reader.task for reader in readers})}")
        self.task, self.readers = readers[0].task, list(readers)
        self.starts = np.cumsum([0, *map(len, readers)]).tolist()
        self.samples = [sample for reader in readers for sample in reader.samples]
        self.vocabularies: dict[str, list[str]] = {}
        for reader in readers:
            for dataset, names in getattr(reader, "vocabularies", {}).items():
                if self.vocabularies.setdefault(dataset, names) != names:
                    raise ValueError(f"{self.task}: data set {dataset!r} is read twice with different classes; name each")

    def __len__(self) -> int:
        return self.starts[-1]

    def _locate(self, index: int) -> tuple[TaskDataset, int]:
        part = bisect.bisect_right(self.starts, index) - 1
        return self.readers[part], index - self.starts[part]

    def name(self, index: int) -> str:
        reader, local = self._locate(index)
        return reader.name(local)

    def get(self, index: int, seed: int) -> dict[str, Any] | None:
        reader, local = self._locate(index)
        return reader.get(local, seed)


def task_readers(
    task: str, files: dict[str, Any] | Sequence[dict[str, Any]], options: ClipOptions
) -> TaskDataset | DatasetMixture:
    """The reader of `task` from its `task_files` entry: the reader's arguments, or a list of them
    (several data sets read as one task). `reader: <class name>` picks a reader other than the
    task's default (`DEFAULT_READERS`)."""
    readers = []
    for entry in [files] if isinstance(files, dict) else files:
        arguments = dict(entry)
        name = arguments.pop("reader", DEFAULT_READERS[task].__name__)
        reader = READERS_BY_NAME.get(name)
        if reader is None or reader.task != task:
            known = sorted(cls.__name__ for cls in READERS_BY_NAME.values() if cls.task == task)
            raise ValueError(f"{task}: no reader {name!r}; the {task} readers are {known}")
        readers.append(reader(**arguments, options=options))
    if not readers:
        raise ValueError(f"{task}: task_files lists no data set")
    return readers[0] if len(readers) == 1 else DatasetMixture(readers)


def synthetic_task_datasets(
    root: str | Path, split: str, options: ClipOptions, tasks: tuple[str, ...] = TASKS
) -> dict[str, TaskDataset]:
    """The readers pointed at a synthetic world (`streamformer.synthetic.generate_world`)."""
    root = Path(root)
    builders = {
        "ar": lambda: ActionRecognitionDataset(
            root / f"ar/{split}.csv", root, root / "ar/label2id.json", dataset=DATASET, options=options
        ),
        "retrieval": lambda: RetrievalDataset(root / f"retrieval/{split}.csv", root / "videos", options=options),
        "grounding": lambda: GroundingDataset(root / f"grounding/{split}.csv", root / "videos", 6.0, options=options),
        "localization": lambda: LocalizationDataset(
            root / f"localization/{split}.csv", root / "videos", root / "localization/label2id.json", options=options
        ),
        "vis": lambda: VisDataset(
            root / f"vis/{split}_{DATASET}.json", root / "vis", root / "vis/label2id.json", DATASET, options=options
        ),
        "rvos": lambda: ReferringDataset(root / f"rvos/{split}_MEVIS.csv", root / "videos", root / "rvos/masks", options=options),
    }
    unknown = set(tasks) - set(builders)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    return {task: builders[task]() for task in tasks}
