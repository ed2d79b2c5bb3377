"""The `streamformer` command end to end on tiny checkpoints and videos the test writes."""

import json

import pytest
import torch
from backbone_helpers import original_layout_checkpoint, tiny_siglip
from safetensors import safe_open
from test_video import counter_video

from streamformer import StreamFormerModel, StreamFormerVisionModel
from streamformer.cli import main
from streamformer.testing import tiny_model


@pytest.fixture
def model_dir(tmp_path):
    tiny_model().save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_info(model_dir, tmp_path, capsys):
    main(["info", "--path", str(model_dir)])
    out = capsys.readouterr().out
    assert "streamformer format" in out and '"hidden_size": 32' in out
    main(["info", "--path", str(counter_video(tmp_path / "v.mp4"))])
    assert "30 frames, 10.00 fps, 96x64" in capsys.readouterr().out


def test_convert_siglip_and_original(tmp_path, capsys):
    tiny_siglip().save_pretrained(tmp_path / "siglip")
    main(["convert", str(tmp_path / "siglip"), str(tmp_path / "from-siglip"), "--num_frames", "8"])
    assert isinstance(StreamFormerModel.from_pretrained(tmp_path / "from-siglip"), StreamFormerModel)

    original_layout_checkpoint(tmp_path / "original", num_layers=2)
    main(["convert", str(tmp_path / "original"), str(tmp_path / "ours"), "--merge_lora", "true"])
    assert "ignored: 2" in capsys.readouterr().out
    converted = StreamFormerVisionModel.from_pretrained(tmp_path / "ours")
    assert not converted.config.add_lora_spatial


@torch.no_grad()
def test_encode_clip_and_stream_agree(model_dir, tmp_path):
    video = counter_video(tmp_path / "v.mp4", frame_count=20, fps=10)
    main(["encode", str(video), str(model_dir), str(tmp_path / "clip.safetensors"), "--clip_length", "4"])
    with safe_open(tmp_path / "clip.safetensors", "pt") as f:
        assert f.get_tensor("spatial").shape == (4, 16, 32) and f.get_tensor("global").shape == (32,)
        assert json.loads(f.metadata()["frame_indices"]) == [2, 7, 12, 17]  # the middle frame of each quarter

    main(
        [
            "encode",
            str(video),
            str(model_dir),
            str(tmp_path / "s.safetensors"),
            "--fps",
            "10",
            "--chunk_size",
            "3",
            "--max_frames",
            "4",
        ]
    )
    with safe_open(tmp_path / "s.safetensors", "pt") as f:
        temporal = f.get_tensor("temporal")
        indices = json.loads(f.metadata()["frame_indices"])
    assert temporal.shape == (20, 32) and indices == list(range(20))
    # Streaming in chunks of 3 equals one offline pass over all frames with the same window.
    from streamformer.video import load_clip

    frames = load_clip(video, clip_length=20, size=32)
    offline = StreamFormerVisionModel.from_pretrained(model_dir).eval()(frames[None], max_frames=4).pooler_output[0]
    torch.testing.assert_close(temporal, offline, atol=1e-5, rtol=0)
    assert not list(tmp_path.glob("*.partial"))


def test_stream_prints_frames_and_plots(model_dir, tmp_path, capsys):
    import matplotlib.image

    from streamformer.cli import stream
    from streamformer.video import load_clip

    video = counter_video(tmp_path / "v.mp4", frame_count=12, fps=10)
    main(["stream", str(video), str(model_dir), "--max_frames", "4", "--plot", str(tmp_path / "s.png")])
    out = capsys.readouterr().out
    assert out.count("ms/frame") == 12 and "12 frames" in out
    image = matplotlib.image.imread(tmp_path / "s.png")
    assert image.shape == (700, 800, 4) and image[..., :3].std() > 0.05  # 8 x 7 in at 100 dpi, drawn on
    # The reported norms and cosines are those of the offline forward's features, frame by frame.
    records = stream(str(video), str(model_dir), max_frames=4, plot=None, device="cpu")
    with torch.no_grad():
        model = StreamFormerVisionModel.from_pretrained(model_dir).eval()
        features = model(load_clip(video, clip_length=12, size=32)[None], max_frames=4).pooler_output[0]
    assert [r["frame"] for r in records] == list(range(12))
    assert [r["time_s"] for r in records] == pytest.approx([i / 10 for i in range(12)])
    assert [r["norm"] for r in records] == pytest.approx(features.norm(dim=1).tolist(), abs=1e-4)
    cosines = [1.0, *torch.cosine_similarity(features[1:], features[:-1], dim=1).tolist()]
    assert [r["cos_prev"] for r in records] == pytest.approx(cosines, abs=1e-5)


def test_bad_arguments_are_clear_errors(model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["stream", str(tmp_path / "nothing.mp4"), str(model_dir)])
    assert "video file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["stream", str(counter_video(tmp_path / "v.mp4")), str(model_dir), "--max_frames", "2", "--sink_frames", "2"])
    assert "must exceed sink_frames" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["encode", "v.mp4", str(tmp_path), "x.safetensors"])
    assert "no config.json" in capsys.readouterr().err
