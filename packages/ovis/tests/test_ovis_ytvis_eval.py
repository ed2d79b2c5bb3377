"""YouTube-VIS evaluation against hand-computed answers on tiny synthetic videos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from streamformer_ovis.ytvis_eval import STAT_NAMES, evaluate_ytvis, format_table, spatiotemporal_iou


def rows(r0: int, r1: int, size: tuple[int, int] = (8, 8), c0: int = 0, c1: int | None = None) -> np.ndarray:
    """A mask with rows r0..r1-1 (and columns c0..c1-1) set."""
    m = np.zeros(size, dtype=np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


def rle(m: np.ndarray | None) -> dict | None:
    """Compressed RLE as it appears in JSON (string counts)."""
    if m is None:
        return None
    r = mask_utils.encode(np.asfortranarray(m, dtype=np.uint8))
    return {"size": r["size"], "counts": r["counts"].decode()}


def uncompressed(m: np.ndarray) -> dict:
    """Uncompressed RLE: column-major run lengths, starting with a (possibly empty) run of zeros."""
    flat = m.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return {"size": list(m.shape), "counts": ([0] if flat[0] else []) + counts}


def video(vid: int, length: int, size: tuple[int, int] = (8, 8)) -> dict:
    return {
        "id": vid,
        "height": size[0],
        "width": size[1],
        "length": length,
        "file_names": [f"{vid}/{t}.jpg" for t in range(length)],
    }


def gt_set(videos: list[dict], anns: list[tuple[int, int, list]], n_cats: int = 1, crowd: tuple[int, ...] = ()) -> dict:
    """anns: (video_id, category_id, per-frame segmentations already encoded)."""
    return {
        "videos": videos,
        "annotations": [
            {"id": i + 1, "video_id": v, "category_id": c, "iscrowd": int(i in crowd), "segmentations": segs}
            for i, (v, c, segs) in enumerate(anns)
        ],
        "categories": [{"id": c, "name": f"c{c}"} for c in range(1, n_cats + 1)],
    }


def result(vid: int, cat: int, score: float, masks: list) -> dict:
    return {"video_id": vid, "category_id": cat, "score": score, "segmentations": [rle(m) for m in masks]}


def stats(gt: dict, results: list[dict]) -> list[float]:
    out = evaluate_ytvis(gt, results)
    return [out[n] for n in STAT_NAMES]


@pytest.mark.parametrize("empty", [np.zeros((4, 4), dtype=np.uint8), None])
def test_spatiotemporal_iou(empty):
    pred = [rows(0, 1, (4, 4)), rows(0, 1, (4, 4), 0, 3), empty]  # 4 px, 3 px, nothing
    gt = [rows(0, 2, (4, 4), 2, 4), None, rows(3, 4, (4, 4), 0, 2)]  # 4 px (2 shared), null, 2 px
    iou = spatiotemporal_iou([[rle(m) for m in pred]], [[rle(m) for m in gt]])
    # I = 2; U = 6 + 3 + 2
    assert iou.shape == (1, 1)
    assert iou[0, 0] == pytest.approx(2 / 11)


GT_MASK = rows(0, 2)  # 16 px
FP_MASK = rows(4, 6)  # disjoint, 16 px


@pytest.mark.parametrize(
    ("preds", "expected"),
    [
        ([(0.9, [GT_MASK, GT_MASK]), (0.8, [FP_MASK, FP_MASK])], [1, 1, 1, 1, -1, -1, 1, 1]),
        ([(0.8, [GT_MASK, GT_MASK]), (0.9, [FP_MASK, FP_MASK])], [0.5, 0.5, 0.5, 0.5, -1, -1, 0, 1]),
        # IoU 16 / 32: a match at the 0.5 threshold only
        ([(0.9, [GT_MASK, np.zeros((8, 8), dtype=np.uint8)])], [0.1, 1, 0, 0.1, -1, -1, 0.1, 0.1]),
    ],
    ids=["tp-then-fp", "fp-then-tp", "half-iou"],
)
def test_single_instance(preds, expected):
    gt = gt_set([video(1, 2)], [(1, 1, [rle(GT_MASK), rle(GT_MASK)])])
    assert stats(gt, [result(1, 1, s, m) for s, m in preds]) == pytest.approx(expected)


def two_videos() -> tuple[dict, dict[str, tuple[int, int, list]]]:
    """Video 1: A (cat 1), B (cat 2). Video 2: C (cat 1, absent in the last frame, polygon in the
    first), D (cat 3, uncompressed RLE). Returns the GT and each instance's (video, cat, masks)."""
    poly = [[0.0, 0.0, 6.0, 0.0, 6.0, 3.0, 0.0, 3.0]]
    poly_mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, 8, 8)))
    inst = {
        "A": (1, 1, [rows(0, 2), rows(1, 3), rows(2, 4), rows(3, 5)]),
        "B": (1, 2, [rows(5, 8)] * 4),
        "C": (2, 1, [poly_mask, rows(0, 3), rows(0, 2), None]),
        "D": (2, 3, [rows(6, 8, c0=2, c1=7)] * 4),
    }
    anns = [
        (1, 1, [rle(m) for m in inst["A"][2]]),
        (1, 2, [rle(m) for m in inst["B"][2]]),
        (2, 1, [poly, *[rle(m) for m in inst["C"][2][1:]]]),
        (2, 3, [uncompressed(m) for m in inst["D"][2]]),
    ]
    return gt_set([video(1, 4), video(2, 4)], anns, n_cats=3), inst


def test_multi_video_multi_category():
    gt, inst = two_videos()
    perfect = [result(v, c, 0.9, m) for v, c, m in inst.values()]
    assert stats(gt, perfect) == pytest.approx([1, 1, 1, 1, -1, -1, 1, 1])

    # D labelled as category 2: category 3 gets AP 0, category 2 an FP ranked after its TP (AP 1)
    v, _, masks = inst["D"]
    wrong = [*perfect[:3], result(v, 2, 0.5, masks)]
    out = evaluate_ytvis(gt, wrong)
    assert out["AP"] == pytest.approx(2 / 3)
    assert out["AR10"] == pytest.approx(2 / 3)

    # a lower-scored duplicate is an FP after every TP: the precision envelope keeps AP at 1
    v, c, masks = inst["A"]
    assert evaluate_ytvis(gt, [*perfect, result(v, c, 0.1, masks)])["AP"] == pytest.approx(1.0)


def test_empty_results_give_zero():
    gt, _ = two_videos()
    assert stats(gt, []) == pytest.approx([0, 0, 0, 0, -1, -1, 0, 0])


def test_identity_switch():
    a, b = rows(0, 3), rows(2, 5)  # 24 px each, sharing row 2 (8 px)
    gt = gt_set([video(1, 4)], [(1, 1, [rle(a)] * 4), (1, 1, [rle(b)] * 4)])
    switch = [a, a, b, b]
    # with A: frames 0-1 give 24 / 24, frames 2-3 give 8 / 40 -> 64 / 128; B symmetric
    iou = spatiotemporal_iou([[rle(m) for m in switch]], [[rle(a)] * 4, [rle(b)] * 4])
    assert iou == pytest.approx(np.array([[0.5, 0.5]]))
    # matches one of the two GTs at IoU 0.50 only: recall 1/2 at precision 1 -> 51 of 101 recall levels
    out = evaluate_ytvis(gt, [result(1, 1, 0.9, switch)])
    assert out["AP50"] == pytest.approx(51 / 101)
    assert out["AP"] == pytest.approx(51 / 1010)
    assert out["AP75"] == 0
    assert out["AR1"] == out["AR10"] == pytest.approx(0.05)


def test_missing_frame():
    masks = [rows(0, 1), rows(0, 2), rows(0, 2), rows(0, 3)]  # 8, 16, 16, 24 px
    gt = gt_set([video(1, 4)], [(1, 1, [rle(m) for m in masks])])
    pred = [*masks[:3], None]
    # I = 40, U = 40 + 24 = 64: IoU 0.625 passes the thresholds 0.50, 0.55, 0.60
    assert spatiotemporal_iou([[rle(m) for m in pred]], [[rle(m) for m in masks]])[0, 0] == pytest.approx(0.625)
    out = evaluate_ytvis(gt, [result(1, 1, 0.9, pred)])
    assert (out["AP"], out["AP50"], out["AP75"]) == pytest.approx((0.3, 1.0, 0.0))


def test_crowd_gt_absorbs_detections():
    crowd_mask = rows(4, 8)
    gt = gt_set([video(1, 1)], [(1, 1, [rle(GT_MASK)]), (1, 1, [rle(crowd_mask)])], crowd=(1,))
    # the detection on the crowd region is ignored, not a false positive
    preds = [result(1, 1, 0.8, [GT_MASK]), result(1, 1, 0.9, [crowd_mask])]
    assert evaluate_ytvis(gt, preds)["AP"] == pytest.approx(1.0)


def test_area_bucket_medium():
    obj = rows(50, 250, (300, 300), 50, 250)  # 200 x 200 = 40000 px: 128² <= 40000 < 256²
    gt = gt_set([video(1, 1, (300, 300))], [(1, 1, [rle(obj)])])
    assert stats(gt, [result(1, 1, 0.9, [obj])]) == pytest.approx([1, 1, 1, -1, 1, -1, 1, 1])


def test_json_files_and_table(tmp_path):
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(gt_set([video(1, 2)], [(1, 1, [rle(GT_MASK)] * 2)])))
    res_path.write_text(json.dumps([result(1, 1, 0.9, [GT_MASK, np.zeros((8, 8), dtype=np.uint8)])]))
    out = evaluate_ytvis(gt_path, str(res_path))
    assert out["AP50"] == pytest.approx(1.0)
    assert format_table(out).splitlines() == [
        "| AP | AP50 | AP75 | APs | APm | APl | AR1 | AR10 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| 10.0 | 100.0 | 0.0 | 10.0 | - | - | 10.0 | 10.0 |",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"video_id": 7}, "video_id 7"),
        ({"segmentations": [rle(GT_MASK)] * 3}, "3 frames"),
        ({"category_id": 5}, "category_id 5"),
        ({"segmentations": [rle(rows(0, 2, (9, 8)))] * 2}, "size"),
    ],
    ids=["unknown-video", "frame-count", "unknown-category", "mask-size"],
)
def test_invalid_results(change, message):
    gt = gt_set([video(1, 2)], [(1, 1, [rle(GT_MASK)] * 2)])
    with pytest.raises(ValueError, match=message):
        evaluate_ytvis(gt, [{**result(1, 1, 0.9, [GT_MASK] * 2), **change}])


def test_single_frame_videos_match_coco_eval():
    """With one frame per video the protocol is COCO's on images, with YouTube-VIS's area buckets (no crowds:
    COCO scores a crowd by intersection over the detection's area)."""
    from contextlib import redirect_stdout
    from io import StringIO

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(4)  # a seed under which every bucket, large included, has GT
    size, n_videos, n_cats = (300, 300), 12, 3

    def random_box() -> np.ndarray:
        h, w = rng.integers(4, 290, size=2)
        r, c = rng.integers(0, size[0] - h), rng.integers(0, size[1] - w)
        return rows(r, r + h, size, c, c + w)

    anns, preds = [], []
    for v in range(1, n_videos + 1):
        for _ in range(rng.integers(0, 4)):
            m, cat = random_box(), int(rng.integers(1, n_cats + 1))
            anns.append((v, cat, [rle(m)]))
            jitter = np.roll(m, tuple(rng.integers(-20, 21, size=2)), axis=(0, 1))  # a near miss or a hit
            preds.append(result(v, cat, float(rng.random()), [jitter]))
        preds += [
            result(v, int(rng.integers(1, n_cats + 1)), float(rng.random()), [random_box()]) for _ in range(rng.integers(0, 4))
        ]
    gt = gt_set([video(v, 1, size) for v in range(1, n_videos + 1)], anns, n_cats=n_cats)

    coco_gt = COCO()
    coco_gt.dataset = {
        "images": [{"id": v["id"], "height": v["height"], "width": v["width"]} for v in gt["videos"]],
        "annotations": [
            {
                **{k: a[k] for k in ("id", "category_id", "iscrowd")},
                "image_id": a["video_id"],
                "segmentation": a["segmentations"][0],
            }
            | {"area": float(mask_utils.area(a["segmentations"][0]))}
            for a in gt["annotations"]
        ],
        "categories": gt["categories"],
    }
    with redirect_stdout(StringIO()):
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(
            [
                {
                    "image_id": p["video_id"],
                    "category_id": p["category_id"],
                    "score": p["score"],
                    "segmentation": p["segmentations"][0],
                }
                for p in preds
            ]
        )
        coco_eval = COCOeval(coco_gt, coco_dt, "segm")
        coco_eval.params.areaRng = [[0, 1e10], [0, 128**2], [128**2, 256**2], [256**2, 1e10]]  # YouTube-VIS's buckets
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    assert stats(gt, preds) == pytest.approx(coco_eval.stats[:8].tolist())
