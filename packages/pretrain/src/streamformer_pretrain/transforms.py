"""The original pretraining's training transforms, per clip.

Every random choice (crop window, augmentation ops and magnitudes) is drawn once per clip from the
sample's generator, so all frames of a clip, and their masks, get the same geometry. Frames are
uint8 [T, H, W, 3] in and float [T, 3, S, S] in [-1, 1] out (SigLIP's normalisation); masks are
integer maps [T, H, W] that follow the frames with nearest-neighbour resampling.

* `short_side_crop`: resize the short side to S, crop S x S at random (retrieval, grounding,
  localization), or near the masks (VIS, RVOS: `near_masks=True`).
* `resized_crop`: RandAugment (`rand-m7-n4-mstd0.5-inc1`) then a random-resized crop (AR).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps
from torch import Tensor

from streamformer.video import normalise, resize_short_side


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return low + int(torch.randint(high - low + 1, (), generator=generator))


def resize_masks(masks: Tensor, height: int, width: int) -> Tensor:
    """Integer masks [T, H, W] -> [T, height, width], nearest pixel centre (as the frames' resampling)."""
    return F.interpolate(masks[:, None].float(), size=(height, width), mode="nearest-exact")[:, 0].to(masks.dtype)


def _window_near_masks(masks: Tensor, size: int, generator: torch.Generator) -> tuple[int, int] | None:
    """Top-left corner of a random size x size window around a random mask pixel (of any frame),
    so the crop always keeps some object; None when every mask is empty."""
    rows, cols = (masks != 0).any(0).nonzero(as_tuple=True)
    if len(rows) == 0:
        return None
    pick = _randint(generator, 0, len(rows) - 1)
    cy, cx = rows[pick].item(), cols[pick].item()
    h, w = masks.shape[-2:]
    top = _randint(generator, max(0, cy - size + 1), min(h - size, cy))
    left = _randint(generator, max(0, cx - size + 1), min(w - size, cx))
    return top, left


def short_side_crop(
    frames: Tensor, size: int, generator: torch.Generator, masks: Tensor | None = None, near_masks: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Resize the short side to `size` (masks nearest), then crop `size` x `size`: at random, or
    with `near_masks` a window around the masks (random when they are empty)."""
    x = resize_short_side(frames.permute(0, 3, 1, 2).float(), size)
    h, w = x.shape[-2:]
    if masks is not None:
        masks = resize_masks(masks, h, w)
    corner = _window_near_masks(masks, size, generator) if near_masks and masks is not None else None
    top, left = corner or (_randint(generator, 0, h - size), _randint(generator, 0, w - size))
    x = x[..., top : top + size, left : left + size]
    if masks is not None:
        masks = masks[..., top : top + size, left : left + size]
    return normalise(x), masks


def resized_crop(
    frames: Tensor,
    size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """RandAugment, then `random_resized_crop`."""
    return random_resized_crop(rand_augment(frames, generator), size, generator, scale, ratio)


def random_resized_crop(
    frames: Tensor,
    size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """uint8 frames [T, H, W, 3] -> float [T, 3, size, size] in [-1, 1]: a window of random area
    (`scale` of the frame) and aspect ratio (log-uniform in `ratio`), the same for every frame,
    resized; the frame centre-cropped to the ratio bounds when ten draws find no window that fits
    (as torchvision's RandomResizedCrop)."""
    x = frames.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    for _ in range(10):
        area = h * w * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = _randint(generator, 0, h - ch), _randint(generator, 0, w - cw)
            break
    else:
        aspect = min(max(w / h, ratio[0]), ratio[1])
        cw, ch = (w, round(w / aspect)) if w / h < aspect else (round(h * aspect), h)
        cw, ch = min(cw, w), min(ch, h)
        top, left = (h - ch) // 2, (w - cw) // 2
    x = F.interpolate(x[..., top : top + ch, left : left + cw], size=(size, size), mode="bilinear", antialias=True)
    return normalise(x)


# -- RandAugment ------------------------------------------------------------------------------
# timm's `rand-m7-n4-mstd0.5-inc1`: 4 ops drawn with replacement from the "increasing" set, each
# applied with probability 0.5 at a magnitude ~ N(7, 0.5) clipped to [0, 10] (of 10), signed ops
# mirrored with probability 0.5. Geometric ops fill with grey (128, SigLIP's mean).

_FILL = (128, 128, 128)


def _affine(image: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR, fillcolor=_FILL)


def _enhance(kind: type) -> Callable[[Image.Image, float], Image.Image]:
    return lambda image, level: kind(image).enhance(1.0 + 0.9 * level)


_OPS = {
    "AutoContrast": lambda image, level: ImageOps.autocontrast(image),
    "Equalize": lambda image, level: ImageOps.equalize(image),
    "Invert": lambda image, level: ImageOps.invert(image),
    "Rotate": lambda image, level: image.rotate(30.0 * level, resample=Image.Resampling.BILINEAR, fillcolor=_FILL),
    "PosterizeIncreasing": lambda image, level: ImageOps.posterize(image, 4 - int(4 * abs(level))),
    "SolarizeIncreasing": lambda image, level: ImageOps.solarize(image, 256 - int(256 * abs(level))),
    "SolarizeAdd": lambda image, level: _solarize_add(image, int(110 * abs(level))),
    "ColorIncreasing": _enhance(ImageEnhance.Color),
    "ContrastIncreasing": _enhance(ImageEnhance.Contrast),
    "BrightnessIncreasing": _enhance(ImageEnhance.Brightness),
    "SharpnessIncreasing": _enhance(ImageEnhance.Sharpness),
    "ShearX": lambda image, level: _affine(image, (1, 0.3 * level, 0, 0, 1, 0)),
    "ShearY": lambda image, level: _affine(image, (1, 0, 0, 0.3 * level, 1, 0)),
    "TranslateXRel": lambda image, level: _affine(image, (1, 0, 0.45 * level * image.size[0], 0, 1, 0)),
    "TranslateYRel": lambda image, level: _affine(image, (1, 0, 0, 0, 1, 0.45 * level * image.size[1])),
}
RAND_AUGMENT_OPS = tuple(_OPS)


def _solarize_add(image: Image.Image, add: int, threshold: int = 128) -> Image.Image:
    pixels = np.asarray(image).astype(np.int16)
    return Image.fromarray(np.where(pixels < threshold, np.minimum(pixels + add, 255), pixels).astype(np.uint8))


def rand_augment(
    frames: Tensor, generator: torch.Generator, num_ops: int = 4, magnitude: float = 7.0, magnitude_std: float = 0.5
) -> Tensor:
    """uint8 frames [T, H, W, 3] -> the same shape, augmented by one draw of ops for the whole clip.

    `level` in [-1, 1] is the signed magnitude / 10; ops without a magnitude ignore it."""
    chosen = []
    for _ in range(num_ops):
        op = RAND_AUGMENT_OPS[_randint(generator, 0, len(RAND_AUGMENT_OPS) - 1)]
        if _uniform(generator) >= 0.5:
            continue
        level = min(max(magnitude + magnitude_std * torch.randn((), generator=generator).item(), 0.0), 10.0) / 10.0
        chosen.append((op, -level if _uniform(generator) < 0.5 else level))
    if not chosen:
        return frames
    images = [Image.fromarray(frame) for frame in frames.numpy()]
    for op, level in chosen:
        images = [_OPS[op](image, level) for image in images]
    return torch.from_numpy(np.stack([np.asarray(image.convert("RGB")) for image in images]))
