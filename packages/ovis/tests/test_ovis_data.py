"""Reading YouTube-VIS and COCO JSON, training clips, evaluation frames."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from streamformer.masks import compressed_rle, uncompressed_rle
from streamformer_ovis.data import (
    CategoryMap,
    CocoPseudoClips,
    Source,
    VisClips,
    VisDataModule,
    VisVideos,
    clip_indices,
    collate_clips,
    evaluation_frames,
    read_ytvis,
)


def write_frames(root, name, count, size=(40, 48)):
    folder = root / "JPEGImages" / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for t in range(count):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{t:05d}.jpg")
    return [f"JPEGImages/{name}/{t:05d}.jpg" for t in range(count)]


def box(size, top, left, h, w):
    mask = np.zeros(size, dtype=bool)
    mask[top : top + h, left : left + w] = True
    return mask


@pytest.fixture
def ytvis(tmp_path):
    """Two 4-frame 40x48 videos, two categories (ids 3 and 7), and four unusable rows."""
    size = (40, 48)
    videos = [{"id": i, "height": 40, "width": 48, "length": 4, "file_names": write_frames(tmp_path, f"v{i}", 4)} for i in (1, 2)]
    videos.append({"id": 9, "height": 40, "width": 48, "length": 0, "file_names": []})
    a = [
        uncompressed_rle(box(size, 5, 5, 10, 10)),
        compressed_rle(box(size, 6, 6, 10, 10)),
        None,
        [[20, 20, 30, 20, 30, 30, 20, 30]],
    ]
    b = [compressed_rle(box(size, 20, 30, 8, 8))] * 4
    annotations = [
        {"id": 1, "video_id": 1, "category_id": 7, "iscrowd": 0, "segmentations": a},
        {"id": 2, "video_id": 1, "category_id": 3, "iscrowd": 0, "segmentations": b},
        {"id": 3, "video_id": 2, "category_id": 3, "iscrowd": 0, "segmentations": b},
        {"id": 4, "video_id": 5, "category_id": 3, "iscrowd": 0, "segmentations": b},  # unknown video
        {"id": 5, "video_id": 2, "category_id": 4, "iscrowd": 0, "segmentations": b},  # unknown category
        {"id": 6, "video_id": 2, "category_id": 3, "iscrowd": 0, "segmentations": b[:3]},  # wrong length
    ]
    data = {"videos": videos, "annotations": annotations, "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    return path


def test_read_ytvis_maps_categories_and_skips_bad_rows_by_name(ytvis, caplog):
    with caplog.at_level(logging.WARNING):
        videos, categories = read_ytvis(ytvis, ytvis.parent)
    assert categories == CategoryMap((3, 7), ("cat", "dog"))  # classes in id order
    assert [v.id for v in videos] == [1, 2]
    assert [c for c, _ in videos[0].instances] == [1, 0]
    message = caplog.text
    assert "skipped 4 rows" in message
    for reason in ("video without frames", "unknown video", "unknown category", "not one per frame"):
        assert reason in message
    _, masks = videos[0].masks([0, 2, 3])
    assert masks.shape == (2, 3, 40, 48)
    assert masks[0, 0].sum() == 100 and not masks[0, 1].any()  # frame 2 is absent (null)
    assert masks[0, 2, 25, 25] and masks[0, 2].sum() > 50  # the polygon


def test_clip_indices_are_sorted_near_a_reference():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        indices = clip_indices(100, 8, 5, g)
        assert indices == sorted(indices) and len(indices) == 8
        assert max(indices) - min(indices) <= 10
    assert clip_indices(1, 4, 5, g) == [0, 0, 0, 0]  # a one-frame video repeats its frame


def test_training_clips_are_cropped_flipped_and_reproducible(ytvis):
    videos, _ = read_ytvis(ytvis, ytvis.parent)
    clips = VisClips(videos, clip_length=3, frame_range=2, size=32)
    item = clips[0]
    assert item["frames"].shape == (3, 3, 32, 32)
    assert item["frames"].min() >= -1 and item["frames"].max() <= 1
    assert item["targets"].masks.shape[1:] == (3, 32, 32)
    assert item["targets"].masks.flatten(1).any(1).all()  # instances cropped away are not targets
    assert torch.equal(item["frames"], clips[0]["frames"])  # same (seed, epoch, index): same clip
    first_epoch = [clips[i]["frames"] for i in range(2)]
    clips.epoch = 1
    assert any(not torch.equal(clips[i]["frames"], first_epoch[i]) for i in range(2))  # another clip next epoch
    batch = collate_clips([clips[0], clips[1]])
    assert batch["frames"].shape == (2, 3, 3, 32, 32) and len(batch["targets"]) == 2


def test_evaluation_frames_keep_aspect_and_pad_to_32():
    frames, resized = evaluation_frames(torch.zeros(2, 40, 48, 3, dtype=torch.uint8), 36)
    assert resized == (36, 43) and frames.shape == (2, 3, 64, 64)
    assert (frames[..., 36:, :] == 0).all()  # the padding is 0 (the mean colour after normalisation)


def test_video_dataset_returns_whole_videos(ytvis):
    videos, _ = read_ytvis(ytvis, ytvis.parent)
    item = VisVideos(videos, size=32)[1]
    assert item["frames"].shape == (4, 3, 32, 64) and item["resized"] == (32, 38)


def test_coco_pseudo_clips_keep_instance_identity(tmp_path):
    Image.fromarray(np.full((40, 40, 3), 120, dtype=np.uint8)).save(tmp_path / "a.jpg")
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 40}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 18, "segmentation": compressed_rle(box((40, 40), 4, 4, 12, 12))},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [[24, 24, 36, 24, 36, 36, 24, 36]]},
            {"id": 3, "image_id": 1, "category_id": 99, "segmentation": [[0, 0, 5, 0, 5, 5]]},  # not mapped: dropped
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 99, "name": "kite"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(data))
    categories = CategoryMap((1, 2), ("person", "dog"))
    clips = CocoPseudoClips(tmp_path / "coco.json", tmp_path, categories, {1: 1, 18: 2}, clip_length=4, size=32)
    item = clips[0]
    assert item["targets"].classes.tolist() == [1, 0]  # dog -> class 1, person -> class 0
    masks = item["targets"].masks
    assert masks.shape == (2, 4, 32, 32)
    assert not (masks[0] & masks[1]).any()  # two instances, never merged by the rotation
    assert not torch.equal(masks[0, 0], masks[0, 1])  # every copy rotated on its own


def test_data_module_mixes_sources_and_checks_paths(ytvis, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        VisDataModule([Source(str(tmp_path / "missing.json"), str(tmp_path))])
    with pytest.raises(ValueError, match="first training source"):
        VisDataModule([Source(str(ytvis), str(tmp_path), kind="coco")])
    module = VisDataModule([Source(str(ytvis), str(tmp_path))], Source(str(ytvis), str(tmp_path)), clip_length=2, size=32,
                           test_size=32, batch_size=2, num_workers=0)  # fmt: skip
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["frames"].shape == (2, 2, 3, 32, 32)
    assert len(module.val_set) == 2 and module.categories.names == ("cat", "dog")
