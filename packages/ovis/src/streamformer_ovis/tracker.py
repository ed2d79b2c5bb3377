"""CTVIS's online tracker: frame-by-frame linking of per-frame detections through a memory bank.

Each frame the head gives, for Q queries, class logits `[Q, K + 1]` (the last class is "no
object"), mask logits `[Q, h, w]` (stride 4) and ReID embeddings `[Q, E]`. The tracker

1. scores every query by its best class probability, keeps those above `inference_select_thr`
   (at least the best one) and removes duplicates by mask NMS;
2. matches the kept detections, best first, to the live tracks of the memory bank with a
   bi-softmax of embedding dot products (optionally weighted by how long each track has
   existed), one detection per track and frame; unmatched confident detections start tracks;
3. updates each matched / new track's memory: per-frame score, logits, mask logits, the last
   `max_cache` embeddings and a similarity-guided fused embedding, which is what the bank matches;
4. drops tracks unseen for more than `num_dead_frames` frames from the bank, and marks short-lived
   tracks as noise (kept in the bank, left out of the video-level output).

`finish()` turns the tracks into video-level instances: the class distribution of a track is the
softmax of its mean logits, the top-K (track, class) pairs are kept and scored by class
probability times the mean mask confidence.

Everything is pure PyTorch and device-agnostic: tensors live on the device of the frame outputs;
only the small score and affinity matrices go to the CPU for the greedy loops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class TrackerConfig:
    """Thresholds of the online tracker (CTVIS's defaults)."""

    match_score_thr: float = 0.3  # a (weighted) bi-softmax score above this links a detection to a track
    inference_select_thr: float = 0.01  # queries with a best class probability above this are detections
    init_score_thr: float = 0.01  # unmatched detections above this start a track
    mask_nms_thr: float = 0.6  # mask IoU above which a lower-scored detection is suppressed
    noise_frame_num: int = 8  # noise bookkeeping starts after this frame (0-based)
    suppress_frame_num: int = 3  # a noise track has fewer detections than this ...
    none_frame_num: int = 2  # ... and was not seen in the last this many frames
    num_dead_frames: int = 20  # a track unseen for more than this many frames leaves the bank
    max_cache: int = 10  # embeddings kept per track for the fusion weight
    frame_weight: bool = True  # weight ambiguous matches by the tracks' number of matched frames


@dataclass
class Track:
    """One track and its memory: what it was matched to, frame by frame."""

    track_id: int
    fused: Tensor  # [E], the embedding the bank matches against
    cache: list[Tensor] = field(default_factory=list)  # the last `max_cache` embeddings, [E] each
    frames: list[int] = field(default_factory=list)  # frames where the track was matched, increasing
    scores: list[float] = field(default_factory=list)  # best class probability, per matched frame
    masks: list[Any] = field(default_factory=list)  # per matched frame: the mask, as `encode_mask` stores it
    logit_sum: Tensor | None = None  # [K + 1] class logits summed over the matched frames
    inside_sum: float = 0.0  # sigmoid of the mask logits summed over the pixels where they are > 0
    inside_count: int = 0  # ... and the number of those pixels
    alive: bool = True  # still in the memory bank
    noise: bool = False  # left out of the video-level output

    @property
    def exist_frames(self) -> int:
        """Number of frames the track has been matched in."""
        return len(self.frames)

    @property
    def last_frame(self) -> int:
        return self.frames[-1] if self.frames else -1

    def update(
        self, frame: int, score: float, logits: Tensor, mask: Tensor, embed: Tensor, max_cache: int, encode_mask=None
    ) -> None:
        """Records a detection; fuses its embedding unless it is the track's first. Class logits and
        the mask confidence are kept as running sums and the mask as `encode_mask(mask)`, so a
        track's memory per frame is what the caller's encoding takes (e.g. an RLE)."""
        if self.cache:
            self.fused = fuse_embedding(self.fused, torch.stack(self.cache), embed)
        else:
            self.fused = embed
        self.cache = [*self.cache, embed][-max_cache:]
        self.frames.append(frame)
        self.scores.append(score)
        self.logit_sum = logits if self.logit_sum is None else self.logit_sum + logits
        inside = mask > 0
        self.inside_sum += float(mask.float().sigmoid()[inside].sum())
        self.inside_count += int(inside.sum())
        self.masks.append(mask if encode_mask is None else encode_mask(mask))


class Assignment(NamedTuple):
    """A detection of the current frame and the track it went to."""

    track_id: int
    query: int  # index of the query in the frame's head output
    score: float  # its best class probability
    new: bool  # whether it started the track


def bisoftmax(similarity: Tensor) -> Tensor:
    """CTVIS's bi-softmax of a [n_det, n_track] similarity: the mean of the softmax over tracks
    (dim 1) and the softmax over detections (dim 0). It sums to (n_det + n_track) / 2."""
    return (similarity.softmax(dim=1) + similarity.softmax(dim=0)) / 2


def fuse_embedding(fused: Tensor, cached: Tensor, new: Tensor) -> Tensor:
    """Similarity-guided fusion: β = max(0, mean_k cos(cached_k, new)), fused ← (1 - β)·fused + β·new.

    `fused` and `new` are [E], `cached` is [n, E] (the track's recent embeddings, without `new`);
    with no cached embedding the new one is returned."""
    if cached.numel() == 0:
        return new
    beta = F.cosine_similarity(cached, new.unsqueeze(0), dim=-1).mean().clamp(min=0)
    return (1 - beta) * fused + beta * new


def mask_iou(masks: Tensor) -> Tensor:
    """Pairwise IoU of boolean masks [n, h, w] → [n, n] (0 where both masks are empty)."""
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    union = area[:, None] + area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def mask_nms(masks: Tensor, scores: Tensor, thr: float) -> Tensor:
    """Greedy mask NMS: in decreasing score, a mask whose IoU with an already kept one exceeds
    `thr` is suppressed. `masks` is [n, h, w] boolean, `scores` [n]; returns the kept indices in
    decreasing score, on the masks' device."""
    order = scores.argsort(descending=True)
    over = (mask_iou(masks[order]) > thr).cpu()
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    kept: list[int] = []
    for i in range(len(order)):
        if not suppressed[i]:
            kept.append(i)
            suppressed |= over[i]
    return order[torch.tensor(kept, dtype=torch.long, device=order.device)]


def _unpack(frame_output: Any) -> tuple[Tensor, Tensor, Tensor]:
    if isinstance(frame_output, Mapping):
        logits, masks, embeds = frame_output["logits"], frame_output["masks"], frame_output["embeds"]
    else:
        logits, masks, embeds = frame_output.logits, frame_output.masks, frame_output.embeds
    if logits.dim() != 2 or masks.dim() != 3 or embeds.dim() != 2:
        raise ValueError(
            f"expected one frame: logits [Q, K+1], masks [Q, h, w], embeds [Q, E]; got {tuple(logits.shape)}, {tuple(masks.shape)}, {tuple(embeds.shape)}"
        )
    if not logits.shape[0] == masks.shape[0] == embeds.shape[0]:
        raise ValueError(f"query counts differ: {logits.shape[0]}, {masks.shape[0]}, {embeds.shape[0]}")
    return logits, masks, embeds


class OnlineTracker:
    """CTVIS's online tracker for one video at a time: `reset()`, then `step()` per frame in order,
    then `finish()`."""

    def __init__(self, config: TrackerConfig | None = None, encode_mask=None) -> None:
        """`encode_mask`, when given, turns each frame's mask logits [h, w] into what a track keeps
        (and `finish` returns): e.g. the final binary mask as RLE, so that memory stays small over
        an hour of video. Default: the logits themselves."""
        self.config = config or TrackerConfig()
        self.encode_mask = encode_mask
        self.reset()

    def reset(self) -> None:
        """Forgets everything; the next `step()` is frame 0 of a new video."""
        self.tracks: dict[int, Track] = {}
        self.num_frames = 0
        self.num_classes: int | None = None
        self._next_id = 0

    @property
    def bank(self) -> list[Track]:
        """The live tracks (the memory bank), oldest first."""
        return [t for t in self.tracks.values() if t.alive]

    def select(self, logits: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """The frame's detections: query indices (decreasing score) and their scores."""
        cfg = self.config
        scores = logits.float().softmax(-1)[:, :-1].max(-1).values
        order = scores.argsort(descending=True)
        order = order[scores[order] > cfg.inference_select_thr] if (scores > cfg.inference_select_thr).any() else order[:1]
        keep = mask_nms(masks[order] > 0, scores[order], cfg.mask_nms_thr)  # sigmoid(x) > 0.5 ⇔ x > 0
        idx = order[keep]
        return idx, scores[idx]

    def match(self, det_embeds: Tensor, bank: list[Track]) -> list[int | None]:
        """Greedy matching of detections (already in decreasing score) to bank tracks; returns, per
        detection, the index into `bank` or None."""
        cfg = self.config
        if not bank:
            return [None] * len(det_embeds)
        sim = det_embeds @ torch.stack([t.fused for t in bank]).T
        affinity = bisoftmax(sim).cpu()
        exist = torch.tensor([t.exist_frames for t in bank], dtype=affinity.dtype)
        matches: list[int | None] = []
        for row in affinity:  # rows are views: zeroing a column below is seen by later rows
            row = row.clone()
            valid = row > cfg.match_score_thr
            if cfg.frame_weight and int(valid.sum()) > 1:
                weights = exist[valid]
                row[valid] *= weights
                row[~valid] *= weights.mean()
            j = int(row.argmax())
            if row[j] > cfg.match_score_thr:
                matches.append(j)
                affinity[:, j] = 0
            else:
                matches.append(None)
        return matches

    def step(self, frame_output: Any) -> list[Assignment]:
        """Processes the next frame; `frame_output` has `logits` [Q, K+1], `masks` [Q, h, w] and
        `embeds` [Q, E] (attributes or mapping keys). Returns the frame's assignments in decreasing
        detection score."""
        cfg = self.config
        logits, masks, embeds = _unpack(frame_output)
        if self.num_classes is None:
            self.num_classes = logits.shape[1] - 1
        elif logits.shape[1] - 1 != self.num_classes:
            raise ValueError(f"expected {self.num_classes} + 1 classes, got {logits.shape[1]}")
        frame = self.num_frames
        det_idx, det_scores = self.select(logits, masks)
        det_embeds = embeds[det_idx].float()
        bank = self.bank
        matches = self.match(det_embeds, bank)

        out: list[Assignment] = []
        for k, (q, score, j) in enumerate(zip(det_idx.tolist(), det_scores.tolist(), matches, strict=True)):
            if j is not None:
                track = bank[j]
            elif score > cfg.init_score_thr:
                track = Track(self._next_id, fused=det_embeds[k])
                self.tracks[track.track_id] = track
                self._next_id += 1
            else:
                continue
            track.update(frame, score, logits[q].float(), masks[q], det_embeds[k], cfg.max_cache, self.encode_mask)
            out.append(Assignment(track.track_id, q, score, new=j is None))

        for track in self.tracks.values():
            if track.alive and frame - track.last_frame > cfg.num_dead_frames:
                track.alive = False
            if (
                frame > cfg.noise_frame_num
                and not track.noise
                and frame - track.last_frame >= cfg.none_frame_num
                and track.exist_frames < cfg.suppress_frame_num
            ):
                track.noise = True
        self.num_frames += 1
        return out

    @staticmethod
    def mask_score(track: Track) -> float:
        """Mean sigmoid of the track's mask logits inside its binary masks, over all its frames."""
        return track.inside_sum / track.inside_count if track.inside_count else 0.0

    def finish(self, num_classes_topk: int | None = None) -> list[dict[str, Any]]:
        """Video-level instances: the top `num_classes_topk` (default: the number of classes)
        (track, class) pairs by class probability, over the tracks not marked as noise.

        Each is a dict with `track_id`, `category` (0-based), `score` (class probability × mask
        score) and `masks`: per frame, the track's mask (its logits [h, w] at the head's
        resolution, or what `encode_mask` made of them), or None where it was not seen."""
        tracks = [t for t in self.tracks.values() if not t.noise and t.frames]
        if not tracks or self.num_classes is None:
            return []
        k = self.num_classes
        probs = torch.stack([(t.logit_sum / t.exist_frames).softmax(-1)[:k] for t in tracks])  # [T, K]
        topk = min(num_classes_topk or k, probs.numel())
        values, flat = probs.flatten().topk(topk)
        results = []
        for prob, i in zip(values.tolist(), flat.tolist(), strict=True):
            track = tracks[i // k]
            per_frame: list[Tensor | None] = [None] * self.num_frames
            for f, m in zip(track.frames, track.masks, strict=True):
                per_frame[f] = m
            results.append(
                {"track_id": track.track_id, "category": i % k, "score": prob * self.mask_score(track), "masks": per_frame}
            )
        return results


def track_video(
    logits: Tensor, masks: Tensor, embeds: Tensor, config: TrackerConfig | None = None, num_classes_topk: int | None = None
) -> list[dict[str, Any]]:
    """Runs the tracker over a whole video: `logits` [T, Q, K+1], `masks` [T, Q, h, w], `embeds`
    [T, Q, E]; returns `OnlineTracker.finish()`."""
    tracker = OnlineTracker(config)
    for t in range(logits.shape[0]):
        tracker.step({"logits": logits[t], "masks": masks[t], "embeds": embeds[t]})
    return tracker.finish(num_classes_topk)
