"""The COCO / RefCOCO pseudo-video and Ref-YouTube-VOS readers, on tiny hand-drawn fixtures."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils

from streamformer.video import segment_indices
from streamformer_pretrain.readers import ClipOptions, CocoPseudoVisDataset, RefCocoPseudoDataset, ReferYoutubeVosDataset

H, W = 24, 32
GREY, RED = (60, 60, 60), (220, 20, 20)
CAT = (slice(6, 18), slice(8, 24))  # rows, columns of the main object in every fixture


def _polygon(rows: slice, cols: slice) -> list[list[int]]:
    """A rectangle's COCO polygon, covering exactly the pixels rows x cols."""
    return [[cols.start, rows.start, cols.stop, rows.start, cols.stop, rows.stop, cols.start, rows.stop]]


def _box(rows: slice, cols: slice, value: int = 1) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.int64)
    mask[rows, cols] = value
    return mask


def _image(path) -> None:
    """A red box (`CAT`) on grey."""
    pixels = np.full((H, W, 3), GREY, dtype=np.uint8)
    pixels[CAT] = RED
    Image.fromarray(pixels).save(path)


def _nearest(mask: np.ndarray, size: int) -> torch.Tensor:
    return F.interpolate(torch.as_tensor(mask)[None, None].float(), size=(size, size), mode="nearest-exact")[0, 0].long()


def _pixels(video: torch.Tensor) -> torch.Tensor:
    """[T, 3, S, S] in [-1, 1] -> [T, S, S, 3] in [0, 255]."""
    return ((video + 1) / 2 * 255).permute(0, 2, 3, 1)


@pytest.fixture
def coco(tmp_path):
    """Categories 1 person, 3 dog, 7 cat (-> 0, 1, 2). a.jpg: a cat overlapped by a crowd of dogs
    (compressed RLE, listed after the cat), a second dog, a person; b.jpg: a person only; c.jpg:
    no annotation; d.jpg: annotated but absent."""
    dogs = (slice(10, 22), slice(16, 30))
    crowd = mask_utils.encode(np.asfortranarray(_box(*dogs).astype(np.uint8)))
    crowd["counts"] = crowd["counts"].decode()
    annotations = [
        (1, 7, _polygon(*CAT), 0),
        (1, 3, crowd, 1),
        (1, 3, _polygon(slice(0, 5), slice(26, 32)), 0),
        (1, 1, _polygon(slice(0, 4), slice(0, 6)), 0),
        (2, 1, _polygon(*CAT), 0),
        (4, 7, _polygon(*CAT), 0),
    ]
    data = {
        "images": [{"id": i, "file_name": f"{n}.jpg", "height": H, "width": W} for i, n in enumerate("abcd", 1)],
        "annotations": [
            {"id": k, "image_id": i, "category_id": c, "segmentation": s, "iscrowd": iscrowd}
            for k, (i, c, s, iscrowd) in enumerate(annotations)
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "cat"}],
    }
    for name in "abc":
        _image(tmp_path / f"{name}.jpg")
    (tmp_path / "coco.json").write_text(json.dumps(data))
    (tmp_path / "label2id.json").write_text(json.dumps({"COCOPseudoVIS": {"person": 0, "dog": 1, "cat": 2}}))
    expected = _box(*dogs) + _box(slice(0, 5), slice(26, 32))  # dogs = 1, the cat (later category) wins = 2
    expected[CAT] = 2
    return tmp_path, expected


def _coco_reader(root, **options) -> CocoPseudoVisDataset:
    options = ClipOptions(**{"clip_length": 4, "image_size": 16, **options})
    return CocoPseudoVisDataset(root / "coco.json", root, root / "label2id.json", options=options)


def test_coco_remaps_categories_and_later_ones_win(coco):
    root, expected = coco
    dataset = _coco_reader(root, train=False)
    assert dataset.vocabularies == {"COCOPseudoVIS": ["person", "dog", "cat"]} and dataset.dataset == "COCOPseudoVIS"
    assert [dataset.name(i) for i in range(len(dataset))] == ["a.jpg", "b.jpg", "d.jpg"]  # c.jpg: no annotation
    item = dataset.get(0, seed=0)
    assert set(item) == {"video", "mask", "dataset", "task"} and item["task"] == "vis"
    assert item["video"].shape == (4, 3, 16, 16) and item["video"].dtype == torch.float32
    assert item["mask"].shape == (4, 16, 16) and item["mask"].dtype == torch.long
    for t in range(4):  # no rotation at eval: every copy is the hand-drawn map
        assert torch.equal(item["mask"][t], _nearest(expected, 16))
        assert torch.equal(item["video"][t], item["video"][0])


def test_coco_refuses_a_label2id_in_another_order(coco):
    root, _ = coco
    (root / "label2id.json").write_text(json.dumps({"COCOPseudoVIS": {"person": 0, "cat": 1, "dog": 2}}))
    with pytest.raises(ValueError, match="in their order"):
        _coco_reader(root)


def test_coco_person_only_and_missing_images_are_skipped(coco, caplog):
    dataset = _coco_reader(coco[0])
    assert dataset.get(1, seed=0) is None  # a person only: id 0, background
    assert dataset.get(2, seed=0) is None
    assert "b.jpg" in caplog.text and "empty mask" in caplog.text and "d.jpg" in caplog.text


def test_coco_rotations_keep_class_ids_and_follow_the_seed(coco):
    dataset = _coco_reader(coco[0], image_size=32)
    item = dataset.get(0, seed=3)
    masks = item["mask"]
    assert set(masks.unique().tolist()) == {0, 1, 2}  # nearest: no blended ids
    assert all(not torch.equal(masks[t], masks[0]) for t in range(1, 4))  # each copy its own rotation
    assert torch.equal(item["video"], dataset.get(0, seed=3)["video"]) and torch.equal(masks, dataset.get(0, seed=3)["mask"])
    assert not torch.equal(masks, dataset.get(0, seed=4)["mask"])


@pytest.fixture
def refcoco(tmp_path):
    _image(tmp_path / "a.jpg")
    images = [
        {"file_name": "a.jpg", "caption": "the red box", "height": H, "width": W},
        {"file_name": "missing.jpg", "caption": "nothing", "height": H, "width": W},
    ]
    annotations = [{"segmentation": _polygon(*CAT)}, {"segmentation": _polygon(*CAT)}]
    (tmp_path / "refcoco.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return tmp_path


def _refcoco_reader(root, **options) -> RefCocoPseudoDataset:
    return RefCocoPseudoDataset(root / "refcoco.json", root, ClipOptions(**{"clip_length": 4, "image_size": 16, **options}))


def test_refcoco_mask_is_the_referred_box(refcoco):
    item = _refcoco_reader(refcoco, train=False).get(0, seed=0)
    assert set(item) == {"video", "caption", "mask", "task"} and item["task"] == "rvos"
    assert item["caption"] == "the red box" and item["video"].shape == (4, 3, 16, 16)
    assert item["mask"].dtype == torch.long
    assert torch.equal(item["mask"], _nearest(_box(*CAT), 16).expand(4, -1, -1))


def _assert_on_red(video: torch.Tensor, mask: torch.Tensor) -> None:
    """The red box's pixels coincide with `mask` [T, S, S], one pixel of slack at the border."""
    mask = mask[:, None].float()
    pixels = _pixels(video)
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 80)
    inner = 1 - F.max_pool2d(1 - mask, 3, 1, 1)
    outer = F.max_pool2d(mask, 3, 1, 1)
    assert red[inner[:, 0].bool()].all() and not red[~outer[:, 0].bool()].any()


@pytest.mark.parametrize("augment", [False, True], ids=["resize", "crop-near-masks"])
def test_refcoco_rotated_frames_and_masks_stay_aligned(refcoco, augment):
    item = _refcoco_reader(refcoco, image_size=32 if not augment else 20, augment=augment).get(0, seed=1)
    _assert_on_red(item["video"], item["mask"])
    assert item["mask"].any()
    if not augment:
        assert any(not torch.equal(item["mask"][t], _nearest(_box(*CAT), 32)) for t in range(4))  # rotated


def test_coco_crops_and_flips_keep_frames_and_masks_aligned(coco):
    """Non-square 24x32 images: the short side to 20, a 20x20 crop around the masks, paired flips."""
    dataset = _coco_reader(coco[0], image_size=20, augment=True, hflip=True)
    flipped = 0
    for seed in range(8):
        item = dataset.get(0, seed=seed)
        assert item["video"].shape == (4, 3, 20, 20) and (item["mask"] == 2).any()
        _assert_on_red(item["video"], item["mask"] == 2)  # the cat is the red box
        flipped += (item["mask"] == 2).nonzero()[:, 2].float().mean().item() > 10  # the box sits left when unflipped
    assert 0 < flipped < 8


def test_refcoco_sample_is_a_function_of_the_seed_and_missing_images_skip(refcoco):
    dataset = _refcoco_reader(refcoco)
    first, again, other = dataset.get(0, seed=7), dataset.get(0, seed=7), dataset.get(0, seed=8)
    assert torch.equal(first["video"], again["video"]) and torch.equal(first["mask"], again["mask"])
    assert not torch.equal(first["video"], other["video"])
    assert dataset.get(1, seed=0) is None


NAMES = [f"{5 * j:05d}" for j in range(10)]
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 - 4) * 3  # DAVIS-like colours


def _objects(j: int) -> np.ndarray:
    """Frame j's object ids: 1 moves right with j, 2 on the left, 3 on the right."""
    ids = _box(slice(2, 8), slice(2 * j, 2 * j + 6), 1) + _box(slice(12, 18), slice(0, 10), 2)
    ids[16:22, 22:32] = 3
    return ids


@pytest.fixture
def ytvos(tmp_path):
    """Video v1: 10 frames whose grey level tells their position; v2 has no files."""
    (tmp_path / "JPEGImages/v1").mkdir(parents=True)
    (tmp_path / "Annotations/v1").mkdir(parents=True)
    for j, name in enumerate(NAMES):
        Image.fromarray(np.full((H, W, 3), 10 + 20 * j, dtype=np.uint8)).save(tmp_path / f"JPEGImages/v1/{name}.jpg", quality=100)
        png = Image.fromarray(_objects(j).astype(np.uint8))
        png.putpalette(PALETTE)  # mode "P": the pixels stay object ids, shown in colour
        png.save(tmp_path / f"Annotations/v1/{name}.png")
    rows = [
        ("v1", "the moving square and the right box", NAMES, 10, [1, 3], [0, 1]),
        ("v1", "the purple box", NAMES, 10, [9], [2]),
        ("v2", "a lost video", NAMES[:4], 4, [1], [3]),
    ]
    with open(tmp_path / "train_ReferYoutubeVOS.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "text", "frames", "length", "obj_id", "anno_id"])
        writer.writerows([(v, text, str(frames), n, str(objects), str(annos)) for v, text, frames, n, objects, annos in rows])
    return ReferYoutubeVosDataset(
        tmp_path / "train_ReferYoutubeVOS.csv",
        tmp_path / "JPEGImages",
        tmp_path / "Annotations",
        ClipOptions(clip_length=3, image_size=16),
    )


@pytest.mark.parametrize("seed", [0, 5])
def test_ytvos_reads_the_sampled_frames_and_the_union_of_objects(ytvos, seed):
    indices = segment_indices(10, 3, torch.Generator().manual_seed(seed))
    assert indices != [0, 1, 2]  # the original's reading of the first frames would fail below
    item = ytvos.get(0, seed=seed)
    assert item["caption"] == "the moving square and the right box" and item["task"] == "rvos"
    assert item["video"].shape == (3, 3, 16, 16) and item["mask"].shape == (3, 16, 16) and item["mask"].dtype == torch.long
    grey = _pixels(item["video"]).mean(dim=(1, 2, 3))
    assert ((grey - 10) / 20).round().long().tolist() == indices
    for t, j in enumerate(indices):
        assert torch.equal(item["mask"][t], _nearest(np.isin(_objects(j), [1, 3]), 16))


def test_ytvos_empty_masks_and_missing_files_are_skipped(ytvos, caplog):
    assert ytvos.get(1, seed=0) is None
    assert ytvos.get(2, seed=0) is None
    assert "v1: the purple box" in caplog.text and "empty mask" in caplog.text and "v2: a lost video" in caplog.text
