"""Instance masks in the COCO / YouTube-VIS JSON encodings (on pycocotools' RLE functions), and
COCO images as pseudo-videos."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import Tensor


def decode_segmentation(segmentation: dict | list, height: int, width: int) -> np.ndarray:
    """A uint8 [height, width] mask from compressed RLE, uncompressed RLE (YouTube-VIS:
    `{"counts": [ints], "size": [h, w]}`) or COCO polygons (a list of [x0, y0, x1, y1, ...])."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]  # frPyObjects would read 4 numbers as a box
        if not polygons:
            return np.zeros((height, width), dtype=np.uint8)
        segmentation = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation.get("counts"), list):
        segmentation = mask_utils.frPyObjects(segmentation, height, width)
    mask = mask_utils.decode(segmentation)
    if mask.shape != (height, width):
        raise ValueError(f"a segmentation of size {mask.shape} where the frame is {(height, width)}")
    return mask


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """YouTube-VIS per-frame RLE: run lengths over the column-major pixels, starting with a 0-run."""
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return {"counts": counts, "size": list(mask.shape)}


def compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE with the counts as str (JSON-ready), as MeViS and YouTube-VIS results store masks."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_bbox(mask: np.ndarray) -> list[float]:
    """[x, y, width, height] of the mask's pixels."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def pseudo_video(
    image: Image.Image, labels: Tensor, clip_length: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """An image and its integer label map [H, W] (classes or instance numbers) as a still clip:
    uint8 frames [T, H, W, 3], labels [T, H, W].

    With a `generator` (training) every copy is rotated by its own angle ~ U(-15, 15) degrees about
    the image centre jittered by up to a tenth of the width and height (frame bilinear, labels
    nearest, zeros outside), as the original's COCO pseudo-videos; without, the copies are equal.
    """
    if (image.height, image.width) != tuple(labels.shape):
        raise ValueError(f"image is {image.height}x{image.width}, its labels {tuple(labels.shape)}")
    if generator is None:
        return torch.from_numpy(np.array(image))[None].repeat(clip_length, 1, 1, 1), labels[None].repeat(clip_length, 1, 1)
    label_image = Image.fromarray(labels.numpy().astype(np.int32))  # mode "I": ids survive the rotation
    frames, rotated = [], []
    for _ in range(clip_length):
        angle, dx, dy = (2 * torch.rand(3, generator=generator, dtype=torch.float64) - 1).tolist()
        centre = (image.width * (0.5 + dx / 10), image.height * (0.5 + dy / 10))
        frames.append(np.asarray(image.rotate(15 * angle, resample=Image.Resampling.BILINEAR, center=centre)))
        rotated.append(np.asarray(label_image.rotate(15 * angle, resample=Image.Resampling.NEAREST, center=centre)))
    return torch.from_numpy(np.stack(frames)), torch.from_numpy(np.stack(rotated)).to(labels.dtype)
