"""OAD feature extraction: time grid, both protocols against the model run by hand, resume,
broken videos, atomic writes, the temporal-branch switch, lengths against the THUMOS-layout targets."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from streamformer import StreamFormerVisionModel
from streamformer.testing import tiny_model
from streamformer.video import VideoReadError, open_video, preprocess, read_frames, write_video
from streamformer_oad.features import (
    FeatureExtractor,
    VideoFeatureDataset,
    VideoFrames,
    extract_features,
    feature_frames,
    list_videos,
    save_npy_atomic,
    video_features,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tiny_model().save_pretrained(path)
    return path


@pytest.fixture
def model(model_dir):
    return StreamFormerVisionModel.from_pretrained(model_dir).eval()


def noise_video(path, frame_count: int = 24, fps: float = 8.0, seed: int = 0, size: tuple[int, int] = (48, 64)):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (frame_count, *size, 3), dtype=np.uint8)
    return write_video(path, frames, fps)


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# -- the time grid ------------------------------------------------------------------------------


def test_feature_frames_follow_the_original_grid():
    # 6 s at 24 fps: 24 chunks whose starts are linspace(0, 144, 24) truncated, the last clamped
    ends = feature_frames(144)
    starts = np.linspace(0, 144, 24).astype(int)
    assert len(ends) == 24 and ends[0] == 5 and ends[-1] == 143
    assert (ends[:-1] == starts[:-1] + 5).all() and starts[-1] == 144  # only the last start overruns
    assert (np.diff(ends) > 0).all()
    assert feature_frames(13).tolist() == [5, 12]  # starts [0, 13] -> [0, 7]
    assert feature_frames(13, grid="uniform").tolist() == [5, 11]
    assert feature_frames(144, grid="uniform").tolist() == list(range(5, 144, 6))
    assert feature_frames(5).tolist() == [] and feature_frames(6).tolist() == [5]
    assert feature_frames(20, chunk=4).tolist() == [3, 8, 13, 18, 19]  # starts 0 5 10 15 20 -> 16
    with pytest.raises(ValueError):
        feature_frames(10, grid="nope")


# -- the protocols against the model run by hand ------------------------------------------------


@torch.inference_mode()
@pytest.mark.parametrize("window,sinks", [(None, 0), (5, 1), (7, 0)])
def test_stream_equals_offline_causal_forward(model, window, sinks):
    frames = pixels(40)
    ends = feature_frames(40)  # [5, 11, 18, 24, 31, 39]
    reference = model(frames[None], max_frames=window, sink_frames=sinks).pooler_output[0, ends]
    for per_forward in (1, 6, 7, 48):
        features = video_features(model, frames, "stream", max_frames=window, sink_frames=sinks, frames_per_forward=per_forward)
        assert features.shape == (len(ends), 32) and features.dtype == torch.float32
        torch.testing.assert_close(features, reference, atol=1e-5, rtol=0)


@torch.inference_mode()
def test_chunks_equal_independent_clips(model):
    frames = pixels(40)
    ends = feature_frames(40)
    reference = torch.stack([model(frames[e - 5 : e + 1][None]).pooler_output[0, -1] for e in ends])
    for per_forward in (6, 13, 48):
        features = video_features(model, frames, "chunks", frames_per_forward=per_forward)
        torch.testing.assert_close(features, reference, atol=1e-5, rtol=0)
    # the protocols describe the same frames but differ: the stream has seen the past
    stream = video_features(model, frames, "stream")
    assert stream.shape == features.shape
    assert not torch.allclose(stream[1:], features[1:], atol=1e-3)
    with pytest.raises(ValueError, match="stream protocol"):
        video_features(model, frames, "chunks", max_frames=4)  # a window shorter than a chunk


@torch.inference_mode()
def test_too_short_video_gives_no_features(model):
    assert video_features(model, pixels(5), "stream").shape == (0, 32)
    assert video_features(model, pixels(5), "chunks").shape == (0, 32)


# -- temporal branch off ---------------------------------------------------------------------------


@torch.inference_mode()
def test_temporal_off_is_per_frame_encoding(model):
    frames = pixels(30)
    ends = feature_frames(30)

    def alone(frame: int, position: int) -> torch.Tensor:
        """Frame `frame` encoded by itself at stream position `position` (its time embedding row)."""
        return model(frames[frame][None, None], cache=model.new_cache(start_frame=position)).pooler_output[0, 0]

    stream_on = video_features(model, frames, "stream")
    assert not torch.allclose(stream_on, torch.stack([alone(e, e) for e in ends]), atol=1e-3)  # the check has teeth

    assert model.temporal_gates().tolist() == pytest.approx([0.7, 0.7])
    model.disable_temporal()
    assert model.temporal_gates().tolist() == [0.0, 0.0]
    stream_off = video_features(model, frames, "stream")
    torch.testing.assert_close(stream_off, torch.stack([alone(e, e) for e in ends]), atol=1e-5, rtol=0)
    chunks_off = video_features(model, frames, "chunks")
    torch.testing.assert_close(chunks_off, torch.stack([alone(e, 5) for e in ends]), atol=1e-5, rtol=0)
    # frames between the grid frames no longer matter
    scrambled = pixels(30, seed=1)
    scrambled[ends] = frames[ends]
    torch.testing.assert_close(video_features(model, scrambled, "stream"), stream_off, atol=1e-5, rtol=0)


def test_feature_extractor_temporal_switch(model):
    module = FeatureExtractor(model, temporal=False)
    assert module.model.temporal_gates().abs().sum() == 0


def test_a_video_failing_mid_decode_is_that_videos_error(model, tmp_path, monkeypatch):
    frames = VideoFrames(noise_video(tmp_path / "v.mp4"), 32)
    monkeypatch.setattr(frames, "take", lambda *a: (_ for _ in ()).throw(VideoReadError("v.mp4 ended before frame 30")))
    item = {"session": "v", "path": "v.mp4", "frames": frames, "error": None}
    with torch.inference_mode():
        (result,) = FeatureExtractor(model).predict_step([item], 0)
    assert result["features"] is None and "ended before frame 30" in result["error"]


# -- decoding ---------------------------------------------------------------------------------


def test_video_frames_resample_like_the_original_and_decode_as_consumed(tmp_path, monkeypatch):
    path = noise_video(tmp_path / "a.mp4", frame_count=25, fps=10.0)
    frames = VideoFrames(path, size=32, fps=24)
    count = int(25 / 10 * 24)  # 60
    original = np.linspace(0, 24, count).astype(int)
    assert len(frames) == count and frames.index.tolist() == original.tolist()
    expected = preprocess(open_video_frames(path, original), 32, "center_crop")
    reads = []
    read = frames.decoder.read
    monkeypatch.setattr(frames.decoder, "read", lambda indices: reads.append(list(indices)) or read(indices))
    got = torch.cat([frames.take(np.arange(start, min(start + 7, count))) for start in range(0, count, 7)])
    assert torch.equal(got, expected)
    assert max(len(r) for r in reads) <= 7  # one request's frames at a time, never the whole video
    assert sorted(i for r in reads for i in r) == list(range(25))  # each source frame decoded once
    # An overlapping request (the chunks protocol's last clips) reuses the frames it already has.
    reads.clear()
    torch.testing.assert_close(frames.take(np.array([55, 56, 57, 58, 59])), expected[55:])
    assert reads == []
    # Picklable for DataLoader workers: the decoder is re-opened on the other side.
    again = pickle.loads(pickle.dumps(frames))
    assert torch.equal(again.take(np.arange(count)), expected)


def open_video_frames(path, indices):
    return read_frames(open_video(path), list(indices), str(path))


def test_dataset_reports_a_broken_video_without_substitution(tmp_path):
    good = noise_video(tmp_path / "good.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    dataset = VideoFeatureDataset([("good", str(good)), ("bad", str(bad)), ("gone", str(tmp_path / "gone.mp4"))], 32)
    item = dataset[1]
    assert item["session"] == "bad" and item["frames"] is None and "bad.mp4" in item["error"]
    assert dataset[2]["frames"] is None and "not found" in dataset[2]["error"]
    assert dataset[0]["error"] is None and len(dataset[0]["frames"]) == 72  # 3 s at 24 fps


def test_list_videos(tmp_path):
    for name in ("b.mp4", "a.avi", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert list_videos(tmp_path) == [("a", str(tmp_path / "a.avi")), ("b", str(tmp_path / "b.mp4"))]
    assert list_videos([tmp_path / "b.mp4"]) == [("b", str(tmp_path / "b.mp4"))]
    with pytest.raises(ValueError, match="twice"):
        list_videos([("s", "x.mp4"), ("s", "y.mp4")])


# -- end to end: files, resume, failures, atomic writes --------------------------------------


def test_extract_resumes_and_skips_broken_videos(tmp_path, model_dir, model, caplog):
    videos = tmp_path / "videos"
    for i in range(3):
        noise_video(videos / f"v{i}.mp4", frame_count=24 + 8 * i, seed=i)
    (videos / "broken.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    out = tmp_path / "features"
    extract_features(model_dir, [(f"v{i}", videos / f"v{i}.mp4") for i in (0, 2)], out, accelerator="cpu", progress=False)
    (out / "v0.npy").unlink()
    (out / "v2.npy").unlink()
    sentinel = np.full((2, 2), 7.0, dtype=np.float32)
    np.save(out / "v1.npy", sentinel)  # stands for a finished file of a killed run
    os.utime(out / "v1.npy", (1_000_000, 1_000_000))

    summary = extract_features(model_dir, videos, out, protocol="stream", accelerator="cpu", devices=1, progress=False)
    assert (summary.written, summary.skipped_existing, summary.failed) == (2, 1, ["broken"])
    assert any("broken" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)  # logged by name
    assert sorted(os.listdir(out)) == ["extraction.json", "v0.npy", "v1.npy", "v2.npy"]  # no temporary files left
    assert os.stat(out / "v1.npy").st_mtime == 1_000_000 and (np.load(out / "v1.npy") == sentinel).all()

    for i, seconds in ((0, 3), (2, 5)):
        features = np.load(out / f"v{i}.npy")
        assert features.dtype == np.float32 and features.shape == (seconds * 4, 32)
        frames = VideoFrames(videos / f"v{i}.mp4", 32)
        with torch.inference_mode():
            expected = model(frames.take(np.arange(len(frames)))[None]).pooler_output[0, feature_frames(len(frames))]
        np.testing.assert_allclose(features, expected.numpy(), atol=1e-5, rtol=0)

    again = extract_features(model_dir, videos, out, accelerator="cpu", devices=1, progress=False)
    assert (again.written, again.skipped_existing, again.failed) == (0, 3, ["broken"])

    # The folder belongs to this backbone and protocol: other settings are refused, not mixed in.
    with pytest.raises(ValueError, match="protocol differ"):
        extract_features(model_dir, videos, out, protocol="chunks", accelerator="cpu", devices=1, progress=False)
    other = tmp_path / "other-backbone"
    tiny_model(seed=1).save_pretrained(other)
    with pytest.raises(ValueError, match="backbone differ"):
        extract_features(other, videos, out, accelerator="cpu", devices=1, progress=False)
    replaced = extract_features(other, videos, out, accelerator="cpu", progress=False, replace_stale=True)
    assert (replaced.written, replaced.skipped_existing) == (3, 0)  # the sentinel is gone, recomputed
    (out / "extraction.json").unlink()
    with pytest.raises(ValueError, match="backbone is unknown"):
        extract_features(model_dir, videos, out, accelerator="cpu", devices=1, progress=False)

    # A run that cannot start does not claim a new folder for its settings.
    fresh = tmp_path / "fresh"
    with pytest.raises(FileNotFoundError):
        extract_features(tmp_path / "no-such-model", videos, fresh, accelerator="cpu", progress=False)
    with pytest.raises(ValueError, match="stream protocol"):
        extract_features(model_dir, videos, fresh, protocol="chunks", max_frames=4, accelerator="cpu", progress=False)
    assert not (fresh / "extraction.json").exists()


def test_save_npy_atomic_never_leaves_a_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "s.npy"
    save_npy_atomic(target, np.ones((3, 4), np.float32))
    assert (np.load(target) == 1).all() and os.listdir(tmp_path) == ["s.npy"]

    def dies_midway(handle, array):
        handle.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt  # a killed run

    monkeypatch.setattr(np, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_npy_atomic(target, np.zeros((3, 4), np.float32))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["s.npy"] and (np.load(target) == 1).all()  # the old file, whole


# -- lengths against the THUMOS-layout targets of the synthetic world -------------------------


@pytest.mark.parametrize("protocol", ["stream", "chunks"])
def test_lengths_match_synthetic_targets(tmp_path_factory, model_dir, protocol):
    from streamformer.synthetic import generate_world

    world = tmp_path_factory.getbasetemp() / "world"
    if not (world / "world.json").exists():
        generate_world(world, num_train=2, num_val=1, progress=False)
    out = tmp_path_factory.mktemp(protocol)
    summary = extract_features(
        model_dir,
        world / "videos",
        out,
        protocol=protocol,
        temporal=protocol == "stream",
        accelerator="cpu",
        devices=1,
        progress=False,
    )
    assert summary.written == 3 and not summary.failed
    for target in sorted((world / "oad" / "target_perframe").glob("*.npy")):
        assert np.load(out / target.name).shape == (len(np.load(target)), 32)  # 6 s at 4 fps: 24


def test_extract_shards_over_two_processes(tmp_path, model_dir):
    """Two CPU ranks (gloo): every video written exactly once, equal to the single-process files."""
    videos = tmp_path / "videos"
    for i in range(3):
        noise_video(videos / f"v{i}.mp4", frame_count=16 + 8 * i, seed=i)
    (videos / "broken.mp4").write_bytes(b"not a video at all" * 64)
    single = extract_features(model_dir, videos, tmp_path / "one", accelerator="cpu", devices=1, progress=False)
    summary = extract_features(
        model_dir, videos, tmp_path / "two", accelerator="cpu", devices=2, strategy="ddp_spawn", progress=False
    )
    assert (summary.written, summary.failed) == (single.written, single.failed) == (3, ["broken"])
    assert sorted(os.listdir(tmp_path / "two")) == ["extraction.json", "v0.npy", "v1.npy", "v2.npy"]
    for name in ("v0.npy", "v1.npy", "v2.npy"):
        np.testing.assert_allclose(np.load(tmp_path / "two" / name), np.load(tmp_path / "one" / name), atol=1e-6, rtol=0)
