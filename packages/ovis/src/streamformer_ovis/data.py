"""Video instance segmentation data: YouTube-VIS 2019/2021, OVIS and LV-VIS JSON (one format), and
COCO instance JSON as rotated pseudo-videos.

YouTube-VIS layout: `videos: [{id, width, height, length, file_names}]`, `annotations: [{id,
video_id, category_id, iscrowd, segmentations[length]}]` (per-frame RLE, polygons or null when
absent), `categories: [{id, name}]`; frame files relative to an image root. Categories are
trained as their 0-based position in `categories` sorted by id (`CategoryMap`), and mapped back in
results. Rows that cannot be used (an annotation of an unknown video or category, a segmentation
list of the wrong length, a video without frames) are skipped, counted and named in one warning.

Training clips follow the original: a random reference frame and `clip_length - 1` more drawn with
replacement from the `frame_range` frames on each side, sorted; the short side resized to `size`,
one `size` x `size` crop and one horizontal flip for the whole clip.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, WeightedRandomSampler

from streamformer.masks import decode_segmentation, pseudo_video
from streamformer.video import normalise

from .losses import ClipTargets

log = logging.getLogger(__name__)

SIZE_DIVISIBILITY = 32  # the adapter's stride-32 level


@dataclass(frozen=True)
class CategoryMap:
    """Data-set category ids <-> the model's 0-based classes (positions in id order)."""

    ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_json(cls, categories: list[dict[str, Any]]) -> CategoryMap:
        ordered = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(c["id"] for c in ordered), tuple(c["name"] for c in ordered))

    def as_dict(self) -> dict[str, list]:
        """Plain lists, as checkpoints keep them (`torch.load(weights_only=True)` reads them)."""
        return {"ids": list(self.ids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> CategoryMap:
        return cls(tuple(data["ids"]), tuple(data["names"]))

    def index(self, category_id: int) -> int:
        return self.ids.index(category_id)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class VisVideo:
    """One annotated video: frame files and its instances' per-frame segmentations (None: absent)."""

    id: int
    frames: list[Path]
    height: int
    width: int
    instances: list[tuple[int, list[Any]]]  # (0-based class, segmentation per frame)

    def masks(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """Classes [N] and bool masks [N, len(indices), H, W] of every instance."""
        masks = torch.zeros(len(self.instances), len(indices), self.height, self.width, dtype=torch.bool)
        for n, (_, segmentations) in enumerate(self.instances):
            for t, i in enumerate(indices):
                if segmentations[i] is not None:
                    masks[n, t] = torch.from_numpy(decode_segmentation(segmentations[i], self.height, self.width)).bool()
        classes = torch.tensor([c for c, _ in self.instances], dtype=torch.long)
        return classes, masks


def read_ytvis(json_path: str | os.PathLike, image_root: str | os.PathLike) -> tuple[list[VisVideo], CategoryMap]:
    """Videos (with or without annotations: a test split has none) and the category map."""
    data = json.loads(Path(json_path).read_text())
    missing = [key for key in ("videos", "categories") if key not in data]
    if missing:
        raise ValueError(f"{json_path}: not YouTube-VIS JSON (no {missing})")
    categories = CategoryMap.from_json(data["categories"])
    root = Path(image_root)
    skipped: Counter[str] = Counter()
    examples: dict[str, Any] = {}

    def skip(reason: str, example: Any) -> None:
        skipped[reason] += 1
        examples.setdefault(reason, example)

    videos: dict[int, VisVideo] = {}
    for video in data["videos"]:
        if not video.get("file_names"):
            skip("video without frames", video.get("id"))
            continue
        frames = [root / name for name in video["file_names"]]
        videos[video["id"]] = VisVideo(video["id"], frames, video["height"], video["width"], [])
    for ann in data.get("annotations", []):
        video = videos.get(ann["video_id"])
        if video is None:
            skip("annotation of an unknown video", ann.get("id"))
        elif ann["category_id"] not in categories.ids:
            skip("annotation of an unknown category", ann.get("id"))
        elif len(ann["segmentations"]) != len(video.frames):
            skip("segmentations not one per frame", ann.get("id"))
        elif ann.get("iscrowd", 0):
            skip("crowd annotation (not trained on)", ann.get("id"))
        elif all(s is None for s in ann["segmentations"]):
            skip("annotation absent from every frame", ann.get("id"))
        else:
            video.instances.append((categories.index(ann["category_id"]), ann["segmentations"]))
    if skipped:
        detail = "; ".join(f"{n} {reason} (e.g. id {examples[reason]})" for reason, n in skipped.items())
        log.warning("%s: skipped %d rows: %s", json_path, sum(skipped.values()), detail)
    return list(videos.values()), categories


def clip_indices(length: int, clip_length: int, frame_range: int, generator: torch.Generator) -> list[int]:
    """A random reference frame and `clip_length - 1` others drawn with replacement within
    `frame_range` frames of it (the reference excluded where the video has other frames), sorted."""
    ref = int(torch.randint(length, (1,), generator=generator))
    near = [i for i in range(max(0, ref - frame_range), min(length, ref + frame_range + 1)) if i != ref] or [ref]
    picks = torch.randint(len(near), (clip_length - 1,), generator=generator).tolist()
    return sorted([ref] + [near[p] for p in picks])


def clip_generator(*key: int) -> torch.Generator:
    """A generator seeded by (seed, epoch, index, ...): the same clip in any worker, another each epoch."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def read_frames(paths: list[Path]) -> Tensor:
    """uint8 frames [T, H, W, 3]."""
    return torch.from_numpy(np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths]))


def resized_crop(frames: Tensor, masks: Tensor, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """uint8 frames [T, H, W, 3] and bool masks [N, T, H, W] -> float frames [T, 3, size, size] in
    [-1, 1] and masks [N, T, size, size]: short side to `size`, one random crop and flip for the clip."""
    x = frames.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    out = (max(size, round(h * scale)), max(size, round(w * scale)))
    x = F.interpolate(x, size=out, mode="bilinear", antialias=True, align_corners=False)
    m = F.interpolate(masks.float(), size=out, mode="nearest") > 0.5 if masks.numel() else masks.new_zeros(*masks.shape[:2], *out)
    top = int(torch.randint(out[0] - size + 1, (1,), generator=generator))
    left = int(torch.randint(out[1] - size + 1, (1,), generator=generator))
    x, m = x[..., top : top + size, left : left + size], m[..., top : top + size, left : left + size]
    if torch.rand((), generator=generator) < 0.5:
        x, m = x.flip(-1), m.flip(-1)
    return normalise(x), m


def evaluation_frames(frames: Tensor, size: int) -> tuple[Tensor, tuple[int, int]]:
    """uint8 frames [T, H, W, 3] -> float [T, 3, h, w] in [-1, 1]: short side to `size` (long
    side in proportion), zero-padded (the mean colour) at the bottom / right to multiples of 32;
    and the size before padding."""
    x = frames.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True, align_corners=False)
    x = normalise(x)
    resized = (x.shape[-2], x.shape[-1])
    pad_h, pad_w = (-x.shape[-2]) % SIZE_DIVISIBILITY, (-x.shape[-1]) % SIZE_DIVISIBILITY
    return F.pad(x, (0, pad_w, 0, pad_h)), resized


class VisClips(Dataset):
    """Training clips of annotated videos: {"frames": [T, 3, S, S], "targets": ClipTargets}."""

    def __init__(self, videos: list[VisVideo], clip_length: int = 16, frame_range: int = 20, size: int = 224, seed: int = 0):
        self.videos = [v for v in videos if v.instances]
        if not self.videos:
            raise ValueError("no annotated videos to train on")
        self.clip_length, self.frame_range, self.size, self.seed = clip_length, frame_range, size, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        generator = clip_generator(self.seed, self.epoch, index)
        video = self.videos[index]
        indices = clip_indices(len(video.frames), self.clip_length, self.frame_range, generator)
        classes, masks = video.masks(indices)
        frames, masks = resized_crop(read_frames([video.frames[i] for i in indices]), masks, self.size, generator)
        keep = masks.flatten(1).any(1)  # instances cropped out of every frame are not targets
        return {"frames": frames, "targets": ClipTargets(classes[keep], masks[keep])}


class CocoPseudoClips(Dataset):
    """COCO instance JSON as training clips: each image repeated `clip_length` times, every copy
    rotated by its own random angle (the original's pseudo-videos); an instance's identity is kept
    through the rotations. `category_map` maps COCO category ids to the video data set's (others
    are dropped), as the original's COCO -> YouTube-VIS map."""

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_root: str | os.PathLike,
        categories: CategoryMap,
        category_map: dict[int, int] | None = None,
        clip_length: int = 16,
        size: int = 224,
        seed: int = 0,
    ):
        data = json.loads(Path(json_path).read_text())
        category_map = category_map or {c: c for c in categories.ids}
        by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            if category_map.get(ann["category_id"]) in categories.ids and not ann.get("iscrowd", 0):
                by_image.setdefault(ann["image_id"], []).append(ann)
        self.images = [(image, by_image[image["id"]]) for image in data["images"] if image["id"] in by_image]
        if not self.images:
            raise ValueError(f"{json_path}: no image has an instance of the mapped categories")
        self.root, self.categories, self.category_map = Path(image_root), categories, category_map
        self.clip_length, self.size, self.seed = clip_length, size, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        generator = clip_generator(self.seed, self.epoch, index, 1)
        image, anns = self.images[index]
        h, w = image["height"], image["width"]
        labels = torch.zeros(h, w, dtype=torch.long)  # instance number + 1; later instances win overlaps
        for n, ann in enumerate(anns):
            labels[torch.from_numpy(decode_segmentation(ann["segmentation"], h, w)).bool()] = n + 1
        frames, labels = pseudo_video(
            Image.open(self.root / image["file_name"]).convert("RGB"), labels, self.clip_length, generator
        )
        masks = labels[None] == torch.arange(1, len(anns) + 1)[:, None, None, None]
        classes = torch.tensor([self.categories.index(self.category_map[a["category_id"]]) for a in anns])
        frames, masks = resized_crop(frames, masks, self.size, generator)
        keep = masks.flatten(1).any(1)
        return {"frames": frames, "targets": ClipTargets(classes[keep], masks[keep])}


def collate_clips(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"frames": torch.stack([item["frames"] for item in items]), "targets": [item["targets"] for item in items]}


class VisVideos(Dataset):
    """Whole videos for evaluation: {"video": VisVideo, "frames": [L, 3, h, w], "resized": (h, w)
    before padding} (`evaluation_frames`)."""

    def __init__(self, videos: list[VisVideo], size: int = 224):
        self.videos, self.size = videos, size

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video = self.videos[index]
        frames, resized = evaluation_frames(read_frames(video.frames), self.size)
        return {"video": video, "frames": frames, "resized": resized}


@dataclass
class Source:
    """A training source: YouTube-VIS-format JSON (`kind: ytvis`) or COCO instances (`kind: coco`)."""

    json: str
    images: str
    kind: str = "ytvis"
    ratio: float = 1.0  # share of the samples drawn from it, relative to the other sources
    category_map: dict[int, int] | None = None  # COCO only: COCO id -> video data set id


class VisDataModule(L.LightningDataModule):
    """Training clips from one or more sources mixed by `ratio`, whole held-out videos to validate.

    Args:
        train: sources; the first must be YouTube-VIS-format JSON: its categories are the classes.
        val: a YouTube-VIS-format JSON with annotations and its image root (AP is computed on it).
        clip_length, frame_range, size: training clips (see the module docstring).
        test_size: short side of evaluated frames.
        max_val_videos: evaluate on the first N held-out videos only (None: all).
    """

    def __init__(
        self,
        train: list[Source],
        val: Source | None = None,
        clip_length: int = 16,
        frame_range: int = 20,
        size: int = 224,
        test_size: int = 224,
        batch_size: int = 8,
        num_workers: int = 2,
        max_val_videos: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not train or train[0].kind != "ytvis":
            raise ValueError("the first training source must be YouTube-VIS-format JSON (its categories are the classes)")
        for source in [*train, *([val] if val else [])]:
            if source.kind not in ("ytvis", "coco"):
                raise ValueError(f"source kind must be 'ytvis' or 'coco', got {source.kind!r}")
            for path in (source.json, source.images):
                if not Path(path).exists():
                    raise FileNotFoundError(f"{path} not found")
        self.save_hyperparameters()
        self.train_sources, self.val_source = train, val  # (hparams keep them as plain dicts)
        self.categories = CategoryMap.from_json(json.loads(Path(train[0].json).read_text())["categories"])

    @property
    def category_lists(self) -> dict[str, list]:
        """The categories as plain lists (what the CLI hands the model)."""
        return self.categories.as_dict()

    def setup(self, stage: str) -> None:
        h = self.hparams
        if stage == "fit":
            parts = []
            for source in self.train_sources:
                if source.kind == "ytvis":
                    videos, categories = read_ytvis(source.json, source.images)
                    if categories != self.categories:
                        raise ValueError(f"{source.json}: its categories differ from {self.train_sources[0].json}'s")
                    parts.append(VisClips(videos, h.clip_length, h.frame_range, h.size, h.seed))
                else:
                    parts.append(
                        CocoPseudoClips(
                            source.json, source.images, self.categories, source.category_map, h.clip_length, h.size, h.seed
                        )
                    )
            self.train_parts = parts
            self.train_set = ConcatDataset(parts)
            self.weights = torch.cat(
                [torch.full((len(p),), s.ratio / len(p)) for p, s in zip(parts, self.train_sources, strict=True)]
            )
        if self.val_source is not None and stage in ("fit", "validate", "test"):
            videos, categories = read_ytvis(self.val_source.json, self.val_source.images)
            if categories != self.categories:
                raise ValueError(f"{self.val_source.json}: its categories differ from the training data's")
            self.val_set = VisVideos(videos[: h.max_val_videos], h.test_size)

    def set_epoch(self, epoch: int) -> None:
        for part in self.train_parts:
            part.epoch = epoch

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.hparams.seed)  # advances epoch after epoch
        sampler = WeightedRandomSampler(self.weights, num_samples=len(self.train_set), generator=generator)
        return DataLoader(
            self.train_set, self.hparams.batch_size, sampler=sampler, num_workers=self.hparams.num_workers,
            collate_fn=collate_clips, drop_last=True, persistent_workers=False,
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        if self.val_source is None:
            return []
        return DataLoader(self.val_set, batch_size=None, num_workers=self.hparams.num_workers)

    test_dataloader = val_dataloader
