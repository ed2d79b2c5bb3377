"""YouTube-VIS evaluation: COCO's mask AP/AR, with the video as the unit instead of the image.

There is no installable YTVOS evaluator, so this is a fresh implementation of the official
protocol on `pycocotools.mask`. An instance is a track (one mask or `None` per frame), matching
is per (video, category), and the IoU of two tracks is spatio-temporal: intersections and unions
are summed over frames before dividing, so a track that drops or invents frames is penalised in
proportion to the area involved. Everything after the IoU matrix (greedy matching, the precision
envelope, 101-point interpolation, the means that skip -1) is COCO's evaluate/accumulate/summarize.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]

IOU_THRS = np.linspace(0.5, 0.95, 10)
REC_THRS = np.linspace(0.0, 1.0, 101)
MAX_DETS = (1, 10, 100)
# Inclusive on both ends, as COCO: an object of exactly 128² px is both small and medium.
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 128.0**2), "medium": (128.0**2, 256.0**2), "large": (256.0**2, 1e10)}
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10")


@dataclass
class _Track:
    """One instance over a video: a compressed RLE (or `None` when absent) per frame."""

    masks: list[RLE | None]
    score: float  # 1 for ground truth, where it is not used
    iscrowd: bool
    avg_area: float  # the object's size for the area buckets: mean over the frames where it is visible


def _to_rle(segmentation: Any, height: int, width: int) -> RLE | None:
    """Normalise one frame's segmentation (compressed / uncompressed RLE, polygons, null) to a compressed RLE."""
    if segmentation is None:
        return None
    if isinstance(segmentation, list):  # polygons: one object may have several parts
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    if list(rle["size"]) != [height, width]:
        # pycocotools silently treats masks of mismatched sizes as empty, which would fake a zero IoU
        raise ValueError(f"mask of size {rle['size']} in a video of size {[height, width]}")
    return rle


def _frame_areas(masks: Sequence[RLE | None]) -> np.ndarray:
    return np.array([0.0 if m is None else float(mask_utils.area(m)) for m in masks])


def _avg_area(areas: Sequence[float | None]) -> float:
    """Mean of the non-empty per-frame areas (the official toolkit drops null and 0 frames)."""
    visible = [a for a in areas if a]
    return float(np.mean(visible)) if visible else 0.0


def spatiotemporal_iou(dts: Sequence[Sequence[RLE | None]], gts: Sequence[Sequence[RLE | None]]) -> np.ndarray:
    """IoU [D, G] of tracks: Σ_t |d_t ∩ g_t| / Σ_t |d_t ∪ g_t|.

    A frame where only one of the two is present adds that one's area to the union and nothing to
    the intersection. The union is Σ_t |d_t| + Σ_t |g_t| - I, exact for pixel counts, so only the
    intersection needs a merge, and only on frames where both are present. IoU is 0 when the
    union is empty (both tracks are empty everywhere)."""
    inter = np.zeros((len(dts), len(gts)))
    if inter.size == 0:
        return inter
    for t in range(len(gts[0])):
        for i, d in enumerate(dts):
            if d[t] is None:
                continue
            for j, g in enumerate(gts):
                if g[t] is not None:
                    inter[i, j] += mask_utils.area(mask_utils.merge([d[t], g[t]], intersect=True))
    union = np.array([_frame_areas(d).sum() for d in dts])[:, None] + np.array([_frame_areas(g).sum() for g in gts]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _load(source: Any) -> Any:
    return source if isinstance(source, dict | list) else json.loads(Path(source).read_text())


def _load_ground_truth(gt: dict) -> tuple[dict[Any, dict], list, dict[tuple, list[_Track]]]:
    """Videos by id, sorted category ids, and GT tracks grouped by (video, category)."""
    videos = {v["id"]: v for v in gt["videos"]}
    tracks: dict[tuple, list[_Track]] = defaultdict(list)
    for ann in gt["annotations"]:
        video = videos[ann["video_id"]]
        masks = [_to_rle(s, video["height"], video["width"]) for s in ann["segmentations"]]
        # the official toolkit sizes GT by the annotation's own `areas`; fall back to the masks
        areas = ann.get("areas") or _frame_areas(masks).tolist()
        tracks[ann["video_id"], ann["category_id"]].append(_Track(masks, 1.0, bool(ann.get("iscrowd", 0)), _avg_area(areas)))
    return videos, sorted(c["id"] for c in gt["categories"]), tracks


def _load_results(results: list[dict], videos: dict[Any, dict], cat_ids: set) -> dict[tuple, list[_Track]]:
    """Result tracks grouped by (video, category), each group sorted by descending score (stable,
    so ties keep the file's order) and cut to the largest maxDet, which is all COCO ever looks at."""
    tracks: dict[tuple, list[_Track]] = defaultdict(list)
    for res in results:
        video = videos.get(res["video_id"])
        if video is None:
            raise ValueError(f"result for video_id {res['video_id']!r}, which is not in the ground truth")
        if res["category_id"] not in cat_ids:
            raise ValueError(f"result for category_id {res['category_id']!r}, which is not in the ground truth")
        if len(res["segmentations"]) != video["length"]:
            raise ValueError(
                f"result for video_id {res['video_id']!r} has {len(res['segmentations'])} frames, the video has {video['length']}"
            )
        masks = [_to_rle(s, video["height"], video["width"]) for s in res["segmentations"]]
        tracks[res["video_id"], res["category_id"]].append(
            _Track(masks, float(res["score"]), False, _avg_area(_frame_areas(masks)))
        )
    for key, group in tracks.items():
        order = np.argsort([-t.score for t in group], kind="mergesort")[: MAX_DETS[-1]]
        tracks[key] = [group[i] for i in order]
    return tracks


@dataclass
class _VideoEval:
    """Matches of one (video, category, area range), detections in descending score order."""

    scores: np.ndarray  # [D]
    matched: np.ndarray  # [T, D] bool
    ignored: np.ndarray  # [T, D] bool: matched to an ignored GT, or unmatched and outside the area range
    gt_ignored: np.ndarray  # [G] bool


def _evaluate_video(gts: list[_Track], dts: list[_Track], ious: np.ndarray, area: tuple[float, float]) -> _VideoEval:
    """COCO's greedy matching: per IoU threshold, each detection in score order takes the best
    still-free GT with IoU >= t; non-ignored GTs are preferred (they are sorted first, and the
    search stops at the first ignored GT once a non-ignored one matched); crowd GTs can absorb
    any number of detections."""
    out_of_range = np.array([not area[0] <= g.avg_area <= area[1] for g in gts], dtype=bool)
    gt_ignored = np.array([g.iscrowd for g in gts], dtype=bool) | out_of_range
    order = np.argsort(gt_ignored, kind="mergesort")
    gt_ignored, crowd, ious = gt_ignored[order], np.array([gts[i].iscrowd for i in order], dtype=bool), ious[:, order]
    matched = np.zeros((len(IOU_THRS), len(dts)), dtype=bool)
    ignored = np.zeros_like(matched)
    for ti, thr in enumerate(IOU_THRS):
        taken = np.zeros(len(gts), dtype=bool)
        for d in range(len(dts)):
            best, m = min(thr, 1 - 1e-10), -1
            for g in range(len(gts)):
                if taken[g] and not crowd[g]:
                    continue
                if m > -1 and not gt_ignored[m] and gt_ignored[g]:
                    break
                if ious[d, g] >= best:
                    best, m = ious[d, g], g
            if m > -1:
                matched[ti, d], ignored[ti, d], taken[m] = True, gt_ignored[m], True
    dt_out_of_range = np.array([not area[0] <= d.avg_area <= area[1] for d in dts], dtype=bool)
    ignored |= ~matched & dt_out_of_range
    return _VideoEval(np.array([d.score for d in dts]), matched, ignored, gt_ignored)


def _precision_recall(evals: list[_VideoEval], max_det: int) -> tuple[np.ndarray, np.ndarray]:
    """Interpolated precision [T, R] and final recall [T] over all videos of one category, each
    video keeping its top `max_det` detections; both -1 when the category has no non-ignored GT."""
    n_pos = sum(int((~e.gt_ignored).sum()) for e in evals)
    if n_pos == 0:
        return np.full((len(IOU_THRS), len(REC_THRS)), -1.0), np.full(len(IOU_THRS), -1.0)
    scores = np.concatenate([e.scores[:max_det] for e in evals])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([e.matched[:, :max_det] for e in evals], axis=1)[:, order]
    ignored = np.concatenate([e.ignored[:, :max_det] for e in evals], axis=1)[:, order]
    n_det = len(scores)
    if n_det == 0:
        return np.zeros((len(IOU_THRS), len(REC_THRS))), np.zeros(len(IOU_THRS))
    tp = np.cumsum(matched & ~ignored, axis=1, dtype=float)
    fp = np.cumsum(~matched & ~ignored, axis=1, dtype=float)
    recall = tp / n_pos
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # envelope, monotone from the right
    interpolated = np.zeros((len(IOU_THRS), len(REC_THRS)))
    for t in range(len(IOU_THRS)):
        idx = np.searchsorted(recall[t], REC_THRS, side="left")
        reached = idx < n_det  # recall levels never reached keep precision 0
        interpolated[t, reached] = precision[t, idx[reached]]
    return interpolated, recall[:, -1]


def _mean_defined(values: np.ndarray) -> float:
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else -1.0


def evaluate_ytvis(ground_truth: dict | str | PathLike, results: list[dict] | str | PathLike) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl, AR1, AR10 (fractions in [0, 1], -1 when undefined) of `results`
    (a list of `{video_id, category_id, score, segmentations}`) against YouTube-VIS-format GT.

    Every category of the GT's `categories` is evaluated; those without (non-ignored) GT in a
    setting are -1 there and left out of the means. Raises ValueError on results for unknown
    videos or categories, or with a frame count other than the video's length."""
    videos, cat_ids, gts = _load_ground_truth(_load(ground_truth))
    dts = _load_results(_load(results), videos, set(cat_ids))
    n_thr, n_rec, n_cat, n_area, n_det = len(IOU_THRS), len(REC_THRS), len(cat_ids), len(AREA_RANGES), len(MAX_DETS)
    precision = np.full((n_thr, n_rec, n_cat, n_area, n_det), -1.0)
    recall = np.full((n_thr, n_cat, n_area, n_det), -1.0)
    for k, cat in enumerate(cat_ids):
        pairs = [(gts.get((v, cat), []), dts.get((v, cat), [])) for v in sorted(videos)]
        pairs = [(g, d, spatiotemporal_iou([t.masks for t in d], [t.masks for t in g])) for g, d in pairs if g or d]
        for a, area in enumerate(AREA_RANGES.values()):
            evals = [_evaluate_video(g, d, ious, area) for g, d, ious in pairs]
            for m, max_det in enumerate(MAX_DETS):
                precision[:, :, k, a, m], recall[:, k, a, m] = _precision_recall(evals, max_det)
    t50, t75 = np.argmin(np.abs(IOU_THRS - 0.5)), np.argmin(np.abs(IOU_THRS - 0.75))
    ap = precision[..., -1]  # maxDet 100
    return {
        "AP": _mean_defined(ap[:, :, :, 0]),
        "AP50": _mean_defined(ap[t50, :, :, 0]),
        "AP75": _mean_defined(ap[t75, :, :, 0]),
        "APs": _mean_defined(ap[:, :, :, 1]),
        "APm": _mean_defined(ap[:, :, :, 2]),
        "APl": _mean_defined(ap[:, :, :, 3]),
        "AR1": _mean_defined(recall[:, :, 0, MAX_DETS.index(1)]),
        "AR10": _mean_defined(recall[:, :, 0, MAX_DETS.index(10)]),
    }


def format_table(stats: dict[str, float]) -> str:
    """A one-row markdown table of the stats in percent (one decimal), undefined (-1) shown as "-"."""
    names = [n for n in STAT_NAMES if n in stats]
    cells = ["-" if stats[n] < 0 else f"{100 * stats[n]:.1f}" for n in names]
    return "\n".join(["| " + " | ".join(names) + " |", "|" + "---:|" * len(names), "| " + " | ".join(cells) + " |"])
