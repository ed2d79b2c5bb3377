"""The synthetic world: determinism, every annotation file read back with the original readers,
masks that are the drawn objects, and actions that only motion (not a single frame) reveals."""

import ast
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from streamformer.synthetic import (
    ACTIONS,
    COLOURS,
    OAD_CLASSES,
    REVERSED_ACTION,
    SHAPES,
    WorldConfig,
    action_track,
    generate_world,
    oad_targets,
    sample_scene,
)
from streamformer.video import load_clip, video_info

SMALL = WorldConfig(num_frames=24)
GROUNDING_COLUMNS = ["video_id", "start_second", "end_second", "text", "relevant_windows", "dataset"]


def small_world(root: Path, seed: int = 0, num_train: int = 6, num_val: int = 3):
    return generate_world(root, num_train=num_train, num_val=num_val, seed=seed, config=SMALL, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return small_world(tmp_path_factory.mktemp("world"))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def decoded_frames(path: Path) -> np.ndarray:
    """Every frame of a world video as uint8 [T, H, W, 3], through the backbone's reader."""
    info = video_info(path)
    clip = load_clip(path, clip_length=info.frame_count, size=info.height)
    return ((clip.permute(0, 2, 3, 1).numpy() + 1) / 2 * 255).round().astype(np.uint8)


def annotation_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".mp4"}


def scenes(count: int):
    return [sample_scene(np.random.default_rng(seed)) for seed in range(count)]


def test_same_seed_same_world_other_seed_differs(world, tmp_path):
    again = small_world(tmp_path / "again")
    files = annotation_files(world.root)
    assert files == annotation_files(again.root) and len(files) > 9 * SMALL.num_frames
    for video_id in world.train_ids + world.val_ids:
        name = f"videos/{video_id}.mp4"
        same = np.array_equal(decoded_frames(world.root / name), decoded_frames(again.root / name))
        assert same, f"{name} differs between two encodings (x264's mb-tree reads uninitialised memory on tiny frames)"

    other = small_world(tmp_path / "other", seed=1)
    assert annotation_files(other.root)["retrieval/train.csv"] != files["retrieval/train.csv"]
    assert not np.array_equal(
        decoded_frames(other.root / "videos/v000000.mp4"), decoded_frames(world.root / "videos/v000000.mp4")
    )

    fewer = small_world(tmp_path / "fewer", num_train=3, num_val=1)  # video i depends on (seed, split, i) only
    assert read_rows(fewer.root / "retrieval/train.csv") == read_rows(world.root / "retrieval/train.csv")[:3]


def test_world_json_and_splits(world):
    meta = json.loads((world.root / "world.json").read_text())
    assert meta["seed"] == 0 and meta["splits"] == {"train": 6, "val": 3}
    assert WorldConfig(**meta["config"]) == SMALL
    vocabulary = meta["vocabulary"]
    assert (vocabulary["shapes"], vocabulary["actions"], vocabulary["colours"]) == (list(SHAPES), list(ACTIONS), list(COLOURS))
    assert {"a", "moving", "left", "circle", "that"} <= set(vocabulary["words"])
    assert not set(world.train_ids) & set(world.val_ids)
    for video_id in world.train_ids + world.val_ids:
        info = video_info(world.root / f"videos/{video_id}.mp4")
        assert (info.frame_count, info.fps, info.height, info.width) == (24, 8.0, 64, 64)


@pytest.mark.parametrize("split", ["train", "val"])
def test_action_recognition_csv(world, split):
    label2id = json.loads((world.root / "ar/label2id.json").read_text())
    assert label2id == {action: i for i, action in enumerate(ACTIONS)}
    with open(world.root / f"ar/{split}.csv", newline="") as f:
        rows = list(csv.reader(f))  # no header
    ids = world.train_ids if split == "train" else world.val_ids
    assert [path for path, _ in rows] == [f"ar/clips/{video_id}.mp4" for video_id in ids]
    grounding = read_rows(world.root / f"grounding/{split}.csv")
    for (path, label), video_id in zip(rows, ids, strict=True):
        assert label in label2id
        segments = [r for r in grounding if r["video_id"] == video_id]
        longest = max(segments, key=lambda r: float(r["end_second"]) - float(r["start_second"]))
        assert longest["text"].endswith(label)  # the class is the video's longest action
        info = video_info(world.root / path)  # trimmed to that action
        seconds = float(longest["end_second"]) - float(longest["start_second"])
        assert (info.frame_count, info.fps, info.height) == (round(seconds * 8), 8.0, 64)


@pytest.mark.parametrize("split", ["train", "val"])
def test_retrieval_csv(world, split):
    rows = read_rows(world.root / f"retrieval/{split}.csv")
    assert list(rows[0]) == ["video_id", "dataset", "text"] and len(rows) == world.records[f"retrieval/{split}.csv"]
    for row in rows:
        captions = ast.literal_eval(row["text"])
        assert row["dataset"] == "Synthetic" and (world.root / "videos" / f"{row['video_id']}.mp4").is_file()
        assert 1 <= len(captions) <= 3 and all(isinstance(c, str) and c.startswith("a ") for c in captions)
        assert any(action in captions[0] for action in ACTIONS)


@pytest.mark.parametrize("task", ["grounding", "localization"])
def test_grounding_and_localization_windows_lie_in_the_video(world, task):
    label2id = json.loads((world.root / "localization/label2id.json").read_text())
    assert label2id == {"Synthetic": {action: i for i, action in enumerate(ACTIONS)}}
    for split in ("train", "val"):
        rows = read_rows(world.root / f"{task}/{split}.csv")
        assert list(rows[0]) == GROUNDING_COLUMNS
        for row in rows:
            duration = video_info(world.root / "videos" / f"{row['video_id']}.mp4").duration
            windows = ast.literal_eval(row["relevant_windows"])
            assert windows and all(0 <= start < end <= duration for start, end in windows)
            assert (float(row["start_second"]), float(row["end_second"])) == (windows[0][0], windows[-1][1])
            assert row["dataset"] == "Synthetic"
            if task == "localization":
                assert row["text"] in label2id["Synthetic"]
            else:
                assert row["text"].startswith("a ") and any(row["text"].endswith(a) for a in ACTIONS)
        if task == "localization":  # one row per (video, class)
            assert len({(r["video_id"], r["text"]) for r in rows}) == len(rows)


@pytest.mark.parametrize("split", ["train", "val"])
def test_vis_json_masks_decode_to_the_shapes(world, split):
    label2id = json.loads((world.root / "vis/label2id.json").read_text())
    assert label2id == {"Synthetic": {"background": 0, "circle": 1, "square": 2, "triangle": 3}}
    data = json.loads((world.root / f"vis/{split}_Synthetic.json").read_text())
    assert data["categories"] == [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}]
    videos = {v["id"]: v for v in data["videos"]}
    assert len(videos) == (6 if split == "train" else 3)
    fill = {1: (0.6, 0.92), 2: (0.92, 1.0), 3: (0.35, 0.65)}  # area / bbox area: pi/4, 1, 1/2
    for video in videos.values():
        assert len(video["file_names"]) == video["length"] == 24
        assert all((world.root / "vis" / name).is_file() for name in video["file_names"])
    for ann in data["annotations"]:
        video = videos[ann["video_id"]]
        assert ann["iscrowd"] == 0 and len(ann["segmentations"]) == len(ann["areas"]) == len(ann["bboxes"]) == video["length"]
        for seg, area, (x, y, w, h) in (
            (s, a, b) for s, a, b in zip(ann["segmentations"], ann["areas"], ann["bboxes"], strict=True) if s
        ):
            mask = mask_utils.decode(mask_utils.frPyObjects(seg, video["height"], video["width"])).astype(bool)
            ys, xs = np.nonzero(mask)
            assert area == mask.sum() > 0 and (x, y, w, h) == (xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1)
            if area >= 40:
                low, high = fill[ann["category_id"]]
                assert low <= area / (w * h) <= high
        absent = [i for i, s in enumerate(ann["segmentations"]) if s is None]
        assert all(ann["areas"][i] is None and ann["bboxes"][i] is None for i in absent)


@pytest.mark.parametrize("split", ["train", "val"])
def test_rvos_expressions_pick_out_one_object(world, split):
    rows = read_rows(world.root / f"rvos/{split}_MEVIS.csv")
    assert list(rows[0]) == ["video_id", "text", "frames", "length", "obj_id", "anno_id"]
    by_video: dict[str, list[str]] = {}
    for row in rows:
        by_video.setdefault(row["video_id"], []).append(row["text"])
        frames, (obj_id,), (anno_id,) = (ast.literal_eval(row[k]) for k in ("frames", "obj_id", "anno_id"))
        assert len(frames) == int(row["length"]) == 24 and obj_id in (0, 1)
        per_frame = json.loads((world.root / f"rvos/masks/{anno_id}.json").read_text())
        assert len(per_frame) == len(frames)
        masks = np.stack([mask_utils.decode(m) if m else np.zeros((64, 64), np.uint8) for m in per_frame]).astype(bool)
        assert masks.any()
        _, colour, shape, *_ = row["text"].split()  # "the red circle that moves left"
        video = decoded_frames(world.root / "videos" / f"{row['video_id']}.mp4")
        big = masks.sum(axis=(1, 2)) >= 30
        mean = video[big][masks[big]].mean(axis=0)
        assert min(COLOURS, key=lambda c: np.abs(mean - COLOURS[c]).sum()) == colour
        assert shape in SHAPES
    assert all(len(texts) == 2 and len(set(texts)) == 2 for texts in by_video.values())  # two objects, told apart


def test_oad_targets_are_one_hot_rows_at_4_fps(world):
    info = json.loads((world.root / "oad/data_info.json").read_text())["Synthetic"]
    assert info["class_names"] == list(OAD_CLASSES) and info["num_classes"] == 10 and info["ignore_index"] == 9
    assert (info["metrics"], info["fps"]) == ("AP", 4)
    assert (info["train_session_set"], info["test_session_set"]) == (world.train_ids, world.val_ids)
    for video_id in world.train_ids + world.val_ids:
        target = np.load(world.root / f"oad/target_perframe/{video_id}.npy")
        duration = video_info(world.root / f"videos/{video_id}.mp4").duration
        assert target.dtype == np.float32 and target.shape == (int(duration * 4), 10)
        assert set(np.unique(target)) == {0.0, 1.0} and (target.sum(axis=1) == 1).all()
        assert target[0, 0] == 1 or target[0, 9] == 1  # opens with background, or straddles an action's start


def test_oad_ambiguous_rows_straddle_a_boundary():
    for scene in scenes(30):
        labels, target = scene.frame_labels() + 1, oad_targets(scene)
        for row, span in enumerate(labels.reshape(-1, 2)):  # 8 fps -> 2 frames per 0.25 s row
            assert target[row].argmax() == (9 if span[0] != span[1] else span[0])


@pytest.mark.parametrize("split", ["train", "val"])
def test_qa_asks_only_about_finished_actions(world, split):
    items = json.loads((world.root / f"qa/{split}.json").read_text())
    windows = {(r["video_id"], r["text"]): float(r["end_second"]) for r in read_rows(world.root / f"grounding/{split}.csv")}
    assert items
    for item in items:
        assert set(item) == {"video_id", "time_s", "question", "answer", "options"}
        assert len(set(item["options"])) == 4 and item["answer"] in item["options"]
        if item["question"].startswith("What did the "):  # "What did the red circle do?" -> an action
            caption = f"a {item['question'][len('What did the ') : -len(' do?')]} {item['answer']}"
        else:  # "Which object was moving left?" -> an object
            caption = f"a {item['answer']} {item['question'][len('Which object was ') : -1]}"
        assert windows[(item["video_id"], caption)] <= item["time_s"] <= 3.0


def test_masks_are_exactly_the_drawn_objects():
    for scene in scenes(20):
        frames, masks = scene.render()
        assert (masks.sum(axis=0) <= 1).all()  # objects never overlap
        for obj, mask in zip(scene.objects, masks, strict=True):
            assert (frames[mask] == np.array(COLOURS[obj.colour], np.uint8)).all()
            assert not mask[obj.radius == 0].any() and mask[obj.radius >= 1.5].any(axis=(1, 2)).all()
        for colour, rgb in COLOURS.items():  # each colour is painted exactly inside its objects' masks
            painted = (frames == np.array(rgb, np.uint8)).all(axis=-1)
            owners = [m for o, m in zip(scene.objects, masks, strict=True) if o.colour == colour]
            assert np.array_equal(painted, np.any(owners, axis=0) if owners else np.zeros_like(painted))


def test_background_stretches_are_still():
    for scene in scenes(30):
        frames, labels = scene.render().frames, scene.frame_labels()
        assert labels[0] == -1 and labels[-1] == -1  # background before and after the actions
        for t in range(len(labels) - 1):
            if labels[t] == labels[t + 1] == -1:
                assert np.array_equal(frames[t], frames[t + 1])


def test_a_single_action_can_sit_anywhere_in_the_video():
    """Where the background before a single action ends is uniform over its possible range: were it
    nearly fixed, a moment prediction that ignores the video would find the action."""
    offsets = []
    for scene in scenes(400):
        if len(scene.segments) == 1:
            segment, frames = scene.segments[0], scene.config.num_frames
            spare = frames - (segment.end - segment.start) - 2  # background frames beyond the one on each side
            offsets.append((segment.start - 1) / spare)
    offsets = np.array(offsets)
    assert len(offsets) > 200 and offsets.min() < 0.05 and offsets.max() > 0.95
    thirds = np.histogram(offsets, bins=3, range=(0, 1))[0] / len(offsets)
    assert (np.abs(thirds - 1 / 3) < 0.07).all(), thirds


def centroid_and_area(mask: np.ndarray) -> tuple[float, float, int]:
    ys, xs = np.nonzero(mask)
    return (xs.mean(), ys.mean(), len(xs)) if len(xs) else (np.nan, np.nan, 0)


def same_size(a0: int, a1: int) -> bool:
    return abs(a1 - a0) <= 0.15 * a0  # a shape shifted by a fraction of a pixel covers a few more or fewer pixels


def test_motion_defines_the_class():
    seen = set()
    for scene in scenes(60):
        masks = scene.render().masks
        for segment in scene.segments:
            x0, y0, a0 = centroid_and_area(masks[segment.actor, segment.start - 1])  # the start state
            x1, y1, a1 = centroid_and_area(masks[segment.actor, segment.end - 1])
            check = {
                "moving left": x1 < x0 - 10 and abs(y1 - y0) < 1 and same_size(a0, a1),
                "moving right": x1 > x0 + 10 and abs(y1 - y0) < 1 and same_size(a0, a1),
                "moving up": y1 < y0 - 10 and abs(x1 - x0) < 1 and same_size(a0, a1),
                "moving down": y1 > y0 + 10 and abs(x1 - x0) < 1 and same_size(a0, a1),
                "appearing": a0 == 0 < a1,
                "disappearing": a0 > 0 == a1,
                "growing": a1 > 3 * a0 > 0,
                "shrinking": a0 > 3 * a1 > 0,
            }
            assert check[segment.action], (segment, (x0, y0, a0), (x1, y1, a1))
            middle = masks[segment.actor, (segment.start + segment.end) // 2]
            assert middle.any()  # the object is on screen mid-action
            # A causal model can see the action from its first frame: each frame of the window has
            # moved on from the one before it, and the frame after the window repeats the last.
            actor = scene.objects[segment.actor]
            state = np.stack([actor.x, actor.y, actor.radius], axis=1)[segment.start - 1 : segment.end + 1]
            steps = np.abs(np.diff(state, axis=0)).sum(axis=1)
            assert (steps[: segment.end - segment.start] > 0).all() and (steps[segment.end - segment.start :] == 0).all()
            bystanders = np.delete(masks, segment.actor, axis=0)[:, segment.start : segment.end]
            assert all((b == b[0]).all() for b in bystanders)  # one object acts at a time
            seen.add(segment.action)
    assert seen == set(ACTIONS)


def test_reversed_actions_are_the_same_frames_played_backwards():
    progress = np.linspace(0, 1, 9)
    for action in ACTIONS:
        forward = action_track(action, progress, radius=7.0, distance=20.0)
        assert np.allclose(forward[::-1], action_track(REVERSED_ACTION[action], progress, radius=7.0, distance=20.0))
        assert forward[4, 2] > 0  # visible at mid-path, where the pair's frames coincide


def test_single_frames_do_not_reveal_the_action():
    """Reversal pairs (left/right, up/down, appearing/disappearing, growing/shrinking) are sampled
    symmetrically: the actor's position and size mid-action, and averaged over the whole video (what
    a bag of frames sees), have the same distribution for both actions of a pair."""
    mid: dict[str, list] = {a: [] for a in ACTIONS}
    pooled: dict[str, list] = {a: [] for a in ACTIONS}
    for scene in scenes(1200):
        for segment in scene.segments:
            obj = scene.objects[segment.actor]
            t = (segment.start + segment.end) / 2 - 1  # the path runs from frame start - 1 to end - 1
            mid[segment.action].append([np.interp(t, np.arange(len(obj.x)), v) for v in (obj.x, obj.y, obj.radius)])
            pooled[segment.action].append([obj.x.mean(), obj.y.mean(), obj.radius.mean()])
    for action, partner in REVERSED_ACTION.items():
        for states in (mid, pooled):
            a, b = np.array(states[action]), np.array(states[partner])
            assert min(len(a), len(b)) > 150
            standard_error = np.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
            assert (np.abs(a.mean(0) - b.mean(0)) < 4 * standard_error + 1e-9).all(), (action, partner)
            assert (np.abs(a.std(0) - b.std(0)) <= 0.25 * np.maximum(a.std(0), b.std(0))).all(), (action, partner)


def test_config_is_validated():
    with pytest.raises(ValueError, match="even"):
        WorldConfig(size=33)
    with pytest.raises(ValueError, match="num_frames"):
        WorldConfig(num_frames=8)
