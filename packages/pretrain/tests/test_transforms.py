"""The original's training transforms: one draw per clip, masks that stay on their pixels, and the
RandAugment ops on hand-checked pixels."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from streamformer_pretrain.data import synthetic_task_datasets
from streamformer_pretrain.readers import ClipOptions
from streamformer_pretrain.transforms import (
    _OPS,
    RAND_AUGMENT_OPS,
    normalise,
    rand_augment,
    resized_crop,
    short_side_crop,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def coordinate_video(t: int = 3, h: int = 32, w: int = 56) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames whose red channel is the column and green the row (uint8), and an integer map of the
    same coordinates (row * w + col) standing in for masks."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    frame = torch.stack([cols, rows, torch.zeros_like(rows)], -1).to(torch.uint8)
    return frame.expand(t, h, w, 3).clone(), (rows * w + cols).expand(t, h, w).clone()


def test_short_side_crop_takes_the_same_window_of_frames_and_masks():
    frames, masks = coordinate_video()
    lefts = set()
    for seed in range(20):
        video, cropped = short_side_crop(frames, 32, seeded(seed), masks)
        assert video.shape == (3, 3, 32, 32) and cropped.shape == (3, 32, 32)
        left = int(cropped[0, 0, 0])  # the short side is already 32: a pure crop, no resampling
        torch.testing.assert_close(video, normalise(frames[..., left : left + 32, :].permute(0, 3, 1, 2).float()))
        assert torch.equal(cropped, masks[..., left : left + 32])
        lefts.add(left)
    assert len(lefts) > 5  # the window moves from clip to clip


def test_short_side_crop_resizes_the_short_side_and_keeps_masks_nearest():
    frames, _ = coordinate_video(h=64, w=96)
    masks = torch.zeros(3, 64, 96, dtype=torch.long)
    masks[:, 16:48, 40:56] = 7
    video, cropped = short_side_crop(frames, 32, seeded(0), masks)
    assert video.shape == (3, 3, 32, 32)
    assert set(cropped.unique().tolist()) <= {0, 7}  # nearest: no blended class ids
    assert (cropped == 7).sum() == 3 * 16 * 8  # the 32 x 16 box at half size, fully inside any window


def test_the_crop_near_masks_keeps_the_object():
    frames, _ = coordinate_video(h=32, w=128)
    masks = torch.zeros(3, 32, 128, dtype=torch.long)
    masks[1, 10:20, 110:120] = 1  # one small object, near the right edge, in one frame only
    near = [short_side_crop(frames, 32, seeded(seed), masks, near_masks=True)[1] for seed in range(20)]
    anywhere = [short_side_crop(frames, 32, seeded(seed), masks)[1] for seed in range(20)]
    assert all(crop.any() for crop in near)
    assert not all(crop.any() for crop in anywhere)
    apart = torch.zeros(3, 32, 128, dtype=torch.long)
    apart[:, 5:10, :4], apart[:, 5:10, 124:] = 1, 2  # two objects at opposite edges, nothing between them
    assert all(short_side_crop(frames, 32, seeded(seed), apart, near_masks=True)[1].any() for seed in range(20))
    empty = torch.zeros_like(masks)  # no object: a random window
    assert short_side_crop(frames, 32, seeded(0), empty, near_masks=True)[1].shape == (3, 32, 32)


def test_resized_crop_is_one_draw_per_clip_and_a_function_of_the_seed():
    frame = torch.randint(0, 256, (1, 48, 64, 3), dtype=torch.uint8, generator=seeded(1))
    frames = frame.expand(4, -1, -1, -1).clone()
    a, b = resized_crop(frames, 32, seeded(5)), resized_crop(frames, 32, seeded(5))
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b)
    assert all(torch.equal(a[0], a[t]) for t in range(4))  # same crop and ops on every frame
    assert not torch.equal(a, resized_crop(frames, 32, seeded(6)))


def test_every_rand_augment_op_keeps_the_frame_shape():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    assert len(RAND_AUGMENT_OPS) == 15
    for op in RAND_AUGMENT_OPS:
        for level in (-0.7, 0.7):
            out = np.asarray(_OPS[op](image, level).convert("RGB"))
            assert out.shape == (24, 32, 3) and out.dtype == np.uint8, op


def test_rand_augment_ops_on_hand_checked_pixels():
    pixels = np.array([[[0, 100, 200], [50, 127, 255]]], dtype=np.uint8)
    image = Image.fromarray(pixels)
    assert np.array_equal(np.asarray(_OPS["Invert"](image, 0.0)), 255 - pixels)
    # SolarizeAdd at level 0.5: +55 below 128, capped at 255; 128 and above unchanged.
    assert np.asarray(_OPS["SolarizeAdd"](image, 0.5)).tolist() == [[[55, 155, 200], [105, 182, 255]]]
    # SolarizeIncreasing at level 0.5: threshold 128, pixels >= 128 inverted.
    assert np.asarray(_OPS["SolarizeIncreasing"](image, 0.5)).tolist() == [[[0, 100, 55], [50, 127, 0]]]
    # PosterizeIncreasing at level 0.5 keeps 4 - 2 = 2 bits.
    assert np.asarray(_OPS["PosterizeIncreasing"](image, 0.5)).tolist() == [[[0, 64, 192], [0, 64, 192]]]
    # Translation by 0.45 * level of the width: one pixel right shows the grey fill on the left.
    wide = Image.fromarray(np.full((1, 4, 3), 10, dtype=np.uint8))
    assert np.asarray(_OPS["TranslateXRel"](wide, -1 / 1.8))[0, :, 0].tolist() == [128, 10, 10, 10]


def test_rand_augment_changes_some_clips_the_same_way_on_every_frame():
    frame = torch.randint(0, 256, (1, 16, 16, 3), dtype=torch.uint8, generator=seeded(2))
    frames = frame.expand(3, -1, -1, -1).clone()
    outs = [rand_augment(frames, seeded(seed)) for seed in range(10)]
    assert sum(not torch.equal(out, frames) for out in outs) >= 8  # 4 ops at p=0.5: all skipped 1 time in 16
    assert all(torch.equal(out[0], out[t]) for out in outs for t in range(3))


@pytest.mark.parametrize("task", ["ar", "retrieval", "grounding", "localization", "vis", "rvos"])
def test_readers_apply_their_transform_only_with_augment(world, task):
    plain = ClipOptions(clip_length=4, image_size=32, train=True)
    augmented = dataclasses.replace(plain, augment=True)
    item = synthetic_task_datasets(world.root, "train", plain, (task,))[task].get(0, seed=3)
    changed = synthetic_task_datasets(world.root, "train", augmented, (task,))[task].get(0, seed=3)
    assert changed["video"].shape == item["video"].shape
    assert not torch.equal(changed["video"], item["video"])
    if "mask" in item:  # square frames: the crop is the whole frame, so the masks are the same
        assert torch.equal(changed["mask"], item["mask"])
