import math

import pytest
import torch

from streamformer_ovis.tracker import (
    Assignment,
    OnlineTracker,
    TrackerConfig,
    bisoftmax,
    fuse_embedding,
    mask_nms,
    track_video,
)

K = 3  # classes
SIZE = 8  # mask side
DIM = 4  # embedding width
E = torch.eye(DIM)  # orthonormal embeddings E[0], E[1], ...


def make_frame(dets: list[dict], k: int = K) -> dict:
    """One frame of head output: a query per detection (class `cls` with probability `score`, the
    rest "no object", mask logits +4 inside `box` = (r0, r1, c0, c1), -4 outside, embedding
    `embed`), plus one trailing junk query (no object, below every threshold)."""
    q = len(dets) + 1
    logits = torch.full((q, k + 1), -30.0)
    logits[:, k] = 0.0
    masks = torch.full((q, SIZE, SIZE), -4.0)
    embeds = torch.zeros(q, DIM)
    embeds[-1] = E[-1]
    for i, d in enumerate(dets):
        logits[i, d.get("cls", 0)] = math.log(d["score"])
        logits[i, k] = math.log(1 - d["score"])
        r0, r1, c0, c1 = d["box"]
        masks[i, r0:r1, c0:c1] = 4.0
        embeds[i] = d["embed"]
    return {"logits": logits, "masks": masks, "embeds": embeds}


A_BOX = (0, 4, 0, 4)
B_BOX = (4, 8, 4, 8)


def det(embed, score=0.9, box=A_BOX, cls=0) -> dict:
    return {"embed": embed, "score": score, "box": box, "cls": cls}


# ---------------------------------------------------------------- pure functions


def test_bisoftmax_sums_to_half_the_sizes():
    s = torch.randn(3, 5)
    assert bisoftmax(s).sum().item() == pytest.approx((3 + 5) / 2, abs=1e-5)


def test_bisoftmax_one_by_one_is_one():
    assert bisoftmax(torch.tensor([[-7.3]])).item() == pytest.approx(1.0)


def test_bisoftmax_identity():
    m = bisoftmax(torch.eye(2))
    diag = math.e / (math.e + 1)
    assert torch.allclose(m, torch.tensor([[diag, 1 - diag], [1 - diag, diag]]), atol=1e-6)
    assert diag == pytest.approx(0.731, abs=1e-3)


def test_fuse_identical_embedding_leaves_fused_unchanged():
    e = torch.tensor([0.6, 0.8, 0.0, 0.0])
    assert torch.allclose(fuse_embedding(e, torch.stack([e, e]), e.clone()), e)


def test_fuse_orthogonal_and_opposite_give_no_update():
    fused = E[0] * 2
    assert torch.equal(fuse_embedding(fused, E[:1], E[1]), fused)  # β = 0
    assert torch.equal(fuse_embedding(fused, E[:1], -E[0]), fused)  # cos = -1, β clamped to 0


def test_fuse_partial_similarity():
    new = (E[0] + E[1]) / math.sqrt(2)
    cached = torch.stack([E[0], E[2]])  # cos 0.707 and 0 → β = 0.354
    beta = (1 / math.sqrt(2)) / 2
    assert torch.allclose(fuse_embedding(E[3], cached, new), (1 - beta) * E[3] + beta * new)
    assert torch.equal(fuse_embedding(E[3], torch.empty(0, DIM), new), new)  # nothing cached


def test_mask_nms():
    masks = torch.zeros(3, SIZE, SIZE, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True  # 16 px
    masks[1, 0:4, 0:5] = True  # 20 px, IoU with 0: 16 / 20 = 0.8
    masks[2, 4:8, 4:8] = True  # disjoint
    keep = mask_nms(masks, torch.tensor([0.5, 0.9, 0.7]), 0.6)
    assert keep.tolist() == [1, 2]
    assert mask_nms(masks, torch.tensor([0.5, 0.9, 0.7]), 0.85).tolist() == [1, 2, 0]  # IoU 0.8 ≤ 0.85


# ---------------------------------------------------------------- tracker


def ids(out: list[Assignment]) -> list[int]:
    return [a.track_id for a in out]


def test_one_object_keeps_one_id():
    tracker = OnlineTracker()
    outs = [tracker.step(make_frame([det(E[0], score=0.5 + 0.03 * t)])) for t in range(12)]
    assert all(ids(o) == [0] for o in outs)
    assert [o[0].new for o in outs] == [True] + [False] * 11
    assert len(tracker.tracks) == 1 and tracker.tracks[0].exist_frames == 12
    assert [r["track_id"] for r in tracker.finish()] == [0] * K


def test_two_objects_keep_two_ids():
    tracker = OnlineTracker()
    seen = {}
    for t in range(12):
        sa, sb = (0.9, 0.6) if t % 2 else (0.6, 0.9)  # alternate which one comes first
        out = tracker.step(make_frame([det(E[0], sa, A_BOX), det(E[1], sb, B_BOX)]))
        by_query = {a.query: a.track_id for a in out}
        assert sorted(by_query) == [0, 1]
        seen.setdefault("a", by_query[0])
        seen.setdefault("b", by_query[1])
        assert by_query == {0: seen["a"], 1: seen["b"]}
    assert seen["a"] != seen["b"] and len(tracker.tracks) == 2


def test_greedy_gives_a_track_one_detection_per_frame():
    tracker = OnlineTracker()
    assert ids(tracker.step(make_frame([det(E[0])]))) == [0]
    out = tracker.step(make_frame([det(E[0], 0.8, A_BOX), det(E[0], 0.9, B_BOX)]))
    assert [(a.track_id, a.query, a.new) for a in out] == [(0, 1, False), (1, 0, True)]


def _weighting_video(frame_weight: bool) -> list[Assignment]:
    """Track 0 seen in frames 0-4 (embedding a), track 1 started at frame 4 (embedding b, a·b = 0.9);
    at frame 5 a detection with embedding b: raw bi-softmax prefers track 1, weighting track 0."""
    a = E[0]
    b = 0.9 * E[0] + math.sqrt(1 - 0.81) * E[1]
    tracker = OnlineTracker(TrackerConfig(frame_weight=frame_weight))
    for _ in range(4):
        tracker.step(make_frame([det(a)]))
    assert ids(tracker.step(make_frame([det(a, 0.9, A_BOX), det(b, 0.8, B_BOX)]))) == [0, 1]
    return tracker.step(make_frame([det(b, 0.8, B_BOX)]))


def test_frame_weight():
    assert ids(_weighting_video(frame_weight=True)) == [0]
    assert ids(_weighting_video(frame_weight=False)) == [1]


def _reappear_video(gap: int) -> tuple[OnlineTracker, list[Assignment], list[int]]:
    """Object b in every frame; object a at frame 0, absent for `gap` frames, back at frame gap + 1."""
    tracker = OnlineTracker()
    assert ids(tracker.step(make_frame([det(E[1], 0.9, B_BOX), det(E[0], 0.8, A_BOX)]))) == [0, 1]
    for _ in range(gap):
        assert ids(tracker.step(make_frame([det(E[1], 0.9, B_BOX)]))) == [0]
    alive_before = [t.track_id for t in tracker.bank]
    out = tracker.step(make_frame([det(E[1], 0.9, B_BOX), det(E[0], 0.8, A_BOX)]))
    return tracker, out, alive_before


def test_track_absent_past_dead_frames_leaves_bank():
    tracker, out, alive_before = _reappear_video(gap=21)
    assert alive_before == [0]  # track 1 unseen for 21 > 20 frames: out of the bank
    assert [(a.track_id, a.new) for a in out] == [(0, False), (2, True)]
    assert not tracker.tracks[1].alive


def test_track_absent_for_dead_frames_still_matches():
    tracker, out, alive_before = _reappear_video(gap=20)
    assert alive_before == [0, 1]
    assert [(a.track_id, a.new) for a in out] == [(0, False), (1, False)]
    assert tracker.tracks[1].alive and tracker.tracks[1].frames == [0, 21]


def test_reappeared_track_masks_are_none_where_absent():
    tracker, _, _ = _reappear_video(gap=21)
    results = {r["track_id"]: r for r in tracker.finish()}
    assert set(results) == {0, 2}  # track 1 (one detection, then gone) is noise
    masks = results[2]["masks"]
    assert len(masks) == 23 and all(m is None for m in masks[:22])
    assert torch.equal(masks[22] > 0, make_frame([det(E[0])])["masks"][0] > 0)
    assert all(m is not None for m in results[0]["masks"])


def test_mask_nms_suppresses_duplicate_in_tracker():
    tracker = OnlineTracker()
    for t in range(3):
        out = tracker.step(make_frame([det(E[0], 0.9, (0, 4, 0, 4)), det(E[1], 0.8, (0, 4, 0, 5))]))
        assert [(a.track_id, a.query) for a in out] == [(0, 0)], t
    assert len(tracker.tracks) == 1


def test_noise_track_excluded_from_finish():
    def run(config: TrackerConfig) -> OnlineTracker:
        tracker = OnlineTracker(config)
        for t in range(12):
            dets = [det(E[1], 0.9, B_BOX)] + ([det(E[0], 0.8, A_BOX)] if t < 2 else [])
            tracker.step(make_frame(dets))
        return tracker

    tracker = run(TrackerConfig())
    assert tracker.tracks[1].noise and tracker.tracks[1].alive  # noise is output-only, still in the bank
    assert not tracker.tracks[0].noise
    assert {r["track_id"] for r in tracker.finish()} == {0}
    tracker = run(TrackerConfig(noise_frame_num=100))
    assert {r["track_id"] for r in tracker.finish()} == {0, 1}


def test_finish_hand_case():
    k = 2
    tracker = OnlineTracker()
    junk_logits = torch.tensor([-30.0, -30.0, 10.0])
    m0 = torch.tensor([[2.0, -1.0], [0.5, -3.0]])
    m1 = torch.tensor([[1.0, -1.0], [-1.0, -1.0]])
    junk_mask = torch.full((2, 2), -5.0)
    emb = torch.eye(2)
    tracker.step(
        {
            "logits": torch.stack([torch.tensor([2.0, 0.0, -1.0]), junk_logits]),
            "masks": torch.stack([m0, junk_mask]),
            "embeds": emb,
        }
    )
    tracker.step(
        {
            "logits": torch.stack([torch.tensor([0.0, 1.0, -1.0]), junk_logits]),
            "masks": torch.stack([m1, junk_mask]),
            "embeds": emb,
        }
    )

    probs = torch.tensor([1.0, 0.5, -1.0]).softmax(-1)  # mean logits
    mask_score = torch.tensor([2.0, 0.5, 1.0]).sigmoid().mean().item()  # pixels with positive logits, both frames
    results = tracker.finish()
    assert [(r["track_id"], r["category"]) for r in results] == [(0, 0), (0, 1)]
    assert results[0]["score"] == pytest.approx(probs[0].item() * mask_score, rel=1e-5)
    assert results[1]["score"] == pytest.approx(probs[1].item() * mask_score, rel=1e-5)
    assert torch.equal(results[0]["masks"][0], m0) and torch.equal(results[0]["masks"][1], m1)
    assert len(tracker.finish(num_classes_topk=1)) == 1
    assert k == tracker.num_classes


def test_finish_top_k_over_tracks_and_classes():
    pa = torch.tensor([0.9, 0.04, 0.03, 0.03])
    pb = torch.tensor([0.02, 0.5, 0.4, 0.08])
    tracker = OnlineTracker()
    for _ in range(3):
        frame = make_frame([det(E[0], 0.9, A_BOX), det(E[1], 0.8, B_BOX)])
        frame["logits"][0], frame["logits"][1] = pa.log(), pb.log()
        tracker.step(frame)
    results = tracker.finish()  # K = 3 of the 6 (track, class) pairs
    assert [(r["track_id"], r["category"]) for r in results] == [(0, 0), (1, 1), (1, 2)]
    mask_score = torch.tensor(4.0).sigmoid().item()
    expected = [0.9 * mask_score, 0.5 * mask_score, 0.4 * mask_score]  # softmax[:, :K], not renormalised
    assert [r["score"] for r in results] == pytest.approx(expected, rel=1e-5)


def test_empty_mask_scores_zero_and_reset():
    tracker = OnlineTracker()
    frame = make_frame([det(E[0])])
    frame["masks"][0] = -1.0  # no positive pixel
    tracker.step(frame)
    assert all(r["score"] == 0.0 for r in tracker.finish())
    tracker.reset()
    assert tracker.finish() == [] and tracker.num_frames == 0 and not tracker.tracks
    assert ids(tracker.step(make_frame([det(E[1])]))) == [0]


def test_track_video_matches_stepping():
    frames = [make_frame([det(E[0], 0.9, A_BOX), det(E[1], 0.7, B_BOX, cls=2)]) for _ in range(4)]
    stacked = {key: torch.stack([f[key] for f in frames]) for key in ("logits", "masks", "embeds")}
    results = track_video(stacked["logits"], stacked["masks"], stacked["embeds"])
    tracker = OnlineTracker()
    for f in frames:
        tracker.step(f)
    expected = tracker.finish()
    assert [(r["track_id"], r["category"], r["score"]) for r in results] == [
        (r["track_id"], r["category"], r["score"]) for r in expected
    ]


def test_bad_shapes():
    tracker = OnlineTracker()
    frame = make_frame([det(E[0])])
    with pytest.raises(ValueError):
        tracker.step({**frame, "embeds": frame["embeds"][:1]})
    tracker.step(frame)
    with pytest.raises(ValueError):
        tracker.step(make_frame([det(E[0])], k=K + 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_gpu():
    tracker = OnlineTracker()
    for _ in range(3):
        frame = {key: v.cuda() for key, v in make_frame([det(E[0], 0.9, A_BOX), det(E[1], 0.8, B_BOX)]).items()}
        out = tracker.step(frame)
        assert sorted(ids(out)) == [0, 1]
    results = tracker.finish()
    assert results and all(m.is_cuda for r in results for m in r["masks"])
