"""AR read-outs (`streamformer_pretrain.ar`): zero-shot with hand-made class embeddings whose
answer is known, the frames-seen curve against real streaming, the resumable feature cache, the
linear probe, and the two commands end to end on a tiny checkpoint."""

import copy
import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from streamformer import StreamFormerVisionModel
from streamformer.synthetic import DATASET
from streamformer_pretrain import MultiTaskDataModule, StreamFormerPretraining, ar
from streamformer_pretrain.cli import main

TINY = dict(
    image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=64, lora_rank=4, lora_alpha=4.0,
    text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
)  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Every tensor here is tiny: one intra-op thread is faster, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def data_module(world) -> MultiTaskDataModule:
    return MultiTaskDataModule(root=str(world.root), tasks=("ar",), clip_length=4, image_size=32, batch_size=4)


@pytest.fixture(scope="module")
def tiny(world):
    """An initialised (untrained) module with its temporal gates open, so frames do mix."""
    torch.manual_seed(0)
    module = StreamFormerPretraining(config=TINY)
    module.build(data_module(world), warm_up_text=False)
    with torch.no_grad():
        for layer in module.model.timesformer.encoder.layer:
            layer.temporal_attention_gating.fill_(0.5)
    return module.eval()


@pytest.fixture(scope="module")
def checkpoint(world, tmp_path_factory):
    """A `fit` checkpoint of two steps, written as `streamformer-pretrain fit` writes one."""
    root = tmp_path_factory.mktemp("fit")
    module = StreamFormerPretraining(config=TINY, text_warmup_steps=5, lr=1e-3)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", devices=1, use_distributed_sampler=False, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
    )  # fmt: skip
    trainer.fit(module, data_module(world))
    return root / "ckpt" / "last.ckpt"


def world_files(world) -> dict[str, str]:
    root = world.root
    return {"video_root": str(root), "label2id": str(root / "ar/label2id.json")}


def one_video_per_class(world, folder, num_classes=None):
    """A CSV of the world's val split with one video per class (the first), and its own
    label2id, numbered in order of appearance (not the world's ids)."""
    with open(world.root / "ar/val.csv") as f:
        rows = list(csv.reader(f))
    first = {}
    for path, name in rows:
        first.setdefault(name, path)
    names = list(first)[:num_classes]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "val.csv", "w", newline="") as f:
        csv.writer(f).writerows([(first[name], name) for name in names])
    (folder / "label2id.json").write_text(json.dumps({name: i for i, name in enumerate(names)}))
    return folder / "val.csv", folder / "label2id.json"


def clips(reader) -> torch.Tensor:
    return torch.stack([reader.get(i, seed=i)["video"] for i in range(len(reader))])


@pytest.mark.parametrize("num_classes", [None, 3])
def test_zero_shot_scores_known_answers(world, tiny, tmp_path, monkeypatch, num_classes):
    """Class embeddings made equal to the videos' own features: every video is its class's
    nearest (top-1 = 1); shifted by one class, none is (top-1 = 0); equal to the first frame's
    features, the curve's first point is 1. Top-k is capped at the number of classes."""
    path, label2id = one_video_per_class(world, tmp_path, num_classes)
    reader = ar.ar_dataset(path, world.root, label2id, 4, 32)
    with torch.no_grad():
        out = tiny.model.timesformer(clips(reader))
    own = F.normalize(out.global_output, dim=-1)  # row c: the video of class c

    def run(embeddings):
        monkeypatch.setattr(ar, "class_text_embeddings", lambda module, names, templates: embeddings)
        return ar.zero_shot(None, path, world.root, label2id, module=tiny, batch_size=3)

    results = run(own)
    c = len(reader)
    k = min(5, c)
    assert c == len(json.loads(label2id.read_text())) == (num_classes or c) and (num_classes or c > 5)
    assert results["top1"] == results["top5"] == 1.0
    assert results["top5_k"] == k and results["chance_top1"] == 1 / c and results["chance_top5"] == k / c
    assert results["num_videos"] == c and results["skipped"] == 0 and results["streaming_exact"]
    assert len(results["curve"]) == 4 and results["curve"][-1] == results["top1"]
    shifted = run(own.roll(1, dims=0))
    assert shifted["top1"] == 0.0 and shifted["curve"][-1] == 0.0
    first_frame = run(F.normalize(out.pooler_output[:, 0], dim=-1))
    assert first_frame["curve"][0] == 1.0 and first_frame["curve"][-1] == first_frame["top1"]


def test_class_text_embeddings_follow_the_modules_rule(world, tiny):
    names = data_module(world).vocabularies("ar")[DATASET]
    torch.testing.assert_close(ar.class_text_embeddings(tiny, names), tiny.class_embeddings("ar"))
    with pytest.warns(UserWarning, match="1 of 2 class names have words the tokenizer does not know"):
        ar.class_text_embeddings(tiny, [names[0], "juggling flamingos"])


def test_the_curve_is_what_streaming_gives(world, tiny):
    """pooler_output[:, k - 1] of one offline pass = the global feature after streaming k frames."""
    reader = ar.ar_dataset(world.root / "ar/val.csv", world.root, world.root / "ar/label2id.json", 4, 32)
    vision, clip = tiny.model.timesformer, clips(reader)[:2]
    assert ar.streaming_is_exact(vision, 4)
    with torch.inference_mode():
        offline = vision(clip).pooler_output
        cache = vision.new_cache(batch_size=2)
        for t in range(4):
            streamed = vision(clip[:, t : t + 1], cache=cache).global_output
            torch.testing.assert_close(streamed, offline[:, t], atol=1e-5, rtol=1e-5)
    assert not (offline[:, 0] - offline[:, -1]).abs().max() < 1e-4  # the gates are open: frames do mix


class Counting(nn.Module):
    """The vision model, counting its calls (and failing at call `fail_at`)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls, self.fail_at = inner, 0, None

    def forward(self, video):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed")
        return self.inner(video)


def test_features_are_cached_once_and_resume(world, tiny, tmp_path):
    reader = ar.ar_dataset(world.root / "ar/val.csv", world.root, world.root / "ar/label2id.json", 4, 32)
    vision = tiny.model.timesformer
    counting, cache = Counting(vision), tmp_path / "cache"
    first = ar.extract_features(counting, reader, cache, batch_size=2, shard_size=4)
    assert counting.calls == 6 and sorted(p.name for p in cache.iterdir())[-1] == "shard-000002.safetensors"
    with torch.no_grad():
        pooled = vision(clips(reader)).pooler_output
    torch.testing.assert_close(first.features, pooled[:, -1], atol=1e-5, rtol=1e-5)
    assert first.labels.tolist() == [reader.label2id[name] for _, name in reader.samples] and first.skipped == []

    counting.calls = 0  # a rerun (other batch and shard sizes: the cache keeps its own shards) computes nothing
    again = ar.extract_features(counting, reader, cache, batch_size=5, shard_size=100)
    mean = ar.extract_features(counting, reader, cache, feature="mean")
    assert counting.calls == 0
    assert torch.equal(again.features, first.features) and torch.equal(again.labels, first.labels)
    torch.testing.assert_close(mean.features, pooled.mean(1), atol=1e-5, rtol=1e-5)

    (cache / "shard-000001.safetensors").unlink()  # a lost shard: only its batches run again
    resumed = ar.extract_features(counting, reader, cache, batch_size=2)
    assert counting.calls == 2 and torch.equal(resumed.features, first.features)

    killed, cache = Counting(vision), tmp_path / "killed"  # killed in the second shard: the first is kept
    killed.fail_at = 4
    with pytest.raises(RuntimeError, match="killed"):
        ar.extract_features(killed, reader, cache, batch_size=2, shard_size=4)
    assert sorted(p.name for p in cache.iterdir()) == ["meta.json", "shard-000000.safetensors"]
    killed.fail_at, killed.calls = None, 0
    assert torch.equal(ar.extract_features(killed, reader, cache, batch_size=2).features, first.features)
    assert killed.calls == 4

    gates_off = copy.deepcopy(counting)
    gates_off.inner.disable_temporal()
    with pytest.raises(ValueError, match=r"other \['model'\]"):
        ar.extract_features(gates_off, reader, tmp_path / "cache")


def blobs(seed: int, per_class: int, num_classes: int = 4, dim: int = 16):
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(100))
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centres[labels] + 0.5 * torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed)), labels


def test_linear_probe_learns_is_deterministic_and_never_chooses_on_val():
    train, val = blobs(1, 20), blobs(2, 10)
    results = ar.linear_probe(*train, *val, seed=0, epochs=25, num_classes=4)
    assert results["top1"] > 0.9 and results["top5"] == 1.0 and results["top5_k"] == 4
    assert set(results["selection"]) == {f"{d:g}" for d in ar.WEIGHT_DECAYS}
    assert ar.linear_probe(*train, *val, seed=0, epochs=25, num_classes=4) == results
    noise = torch.randn(40, 16, generator=torch.Generator().manual_seed(3))
    blind = ar.linear_probe(*train, noise, val[1], seed=0, epochs=25, num_classes=4)  # scored on noise, chosen as before
    assert blind["weight_decay"] == results["weight_decay"] and blind["selection"] == results["selection"]
    single = ar.linear_probe(*train, *val, seed=0, epochs=25, weight_decay=1e-3)
    assert single["weight_decay"] == 1e-3 and single["selection"] == {} and single["top1"] > 0.9


def test_plot_curve(tmp_path):
    path = ar.plot_curve({"trained": [0.2, 0.5, 0.7], "gates off": [0.2, 0.3, 0.3]}, 0.125, tmp_path / "a/curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_commands_end_to_end(world, checkpoint, tmp_path, capsys, monkeypatch):
    files = world_files(world)
    val_csv = str(world.root / "ar/val.csv")
    main(["zero-shot", "--checkpoint", str(checkpoint), "--csv", val_csv, "--video_root", files["video_root"],
          "--label2id", files["label2id"], "--device", "cpu", "--output", str(tmp_path / "zs.json"),
          "--plot", str(tmp_path / "zs.png")])  # fmt: skip
    printed = capsys.readouterr().out
    assert "| top-1 |" in printed and "| top-5 |" in printed and "top-1 by frames seen: 1: " in printed
    results = json.loads((tmp_path / "zs.json").read_text())
    assert results["num_videos"] == 12 and results["chance_top1"] == 1 / 8 and len(results["curve"]) == 4
    assert (tmp_path / "zs.png").exists()
    assert ar.zero_shot(checkpoint, val_csv, device="cpu", **files) == results

    calls = []
    forward = StreamFormerVisionModel.forward
    monkeypatch.setattr(StreamFormerVisionModel, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    probe = ["linear-probe", "--checkpoint", str(checkpoint), "--train_csv", str(world.root / "ar/train.csv"),
             "--val_csv", val_csv, "--video_root", files["video_root"], "--label2id", files["label2id"],
             "--cache", str(tmp_path / "cache"), "--seeds", "[0,1]", "--device", "cpu", "--epochs", "20",
             "--output", str(tmp_path / "probe.json")]  # fmt: skip
    main(probe)
    printed = capsys.readouterr().out
    assert calls and "seed 1: top-1 " in printed and "top-1 " in printed and " ± " in printed
    first = json.loads((tmp_path / "probe.json").read_text())
    assert first["num_train"] == 24 and first["num_val"] == 12 and len(first["top1"]) == 2
    calls.clear()
    main(probe)  # the cached features: the model runs on no clip
    assert calls == [] and json.loads((tmp_path / "probe.json").read_text()) == first

    main(["export", str(checkpoint), str(tmp_path / "backbone")])  # the positional commands still dispatch
    assert "wrote the backbone" in capsys.readouterr().out


def test_ar_curves_command(world, checkpoint, tmp_path):
    """The trained, gates-off and before-pretraining curves: one point per frame, the trained
    curve's last point its global top-1, the table and the plot written."""
    main(["ar-curves", "--checkpoint", str(checkpoint), "--root", str(world.root), "--output", str(tmp_path / "cli.md"),
          "--device", "cpu"])  # fmt: skip
    results = ar.streaming_curves(checkpoint, world.root, tmp_path / "curves.md", device="cpu")
    assert (tmp_path / "cli.md").read_text() == (tmp_path / "curves.md").read_text()
    assert set(results) == {"trained", "trained, gates off", "before pretraining"}
    for result in results.values():
        assert len(result["curve"]) == result["clip_length"] and result["curve"][-1] == pytest.approx(result["top1"])
    assert (tmp_path / "curves.png").stat().st_size > 0 and "| before pretraining |" in (tmp_path / "curves.md").read_text()


def test_ar_demo_table(world, checkpoint, tmp_path):
    """Every row read out three ways, resumed from its results on a second run."""
    from streamformer_pretrain.ar_demo import ROWS, run_ar_demo

    config = str(Path(__file__).parents[3] / "configs" / "ar" / "synthetic-lora.yaml")
    args = dict(checkpoint=str(checkpoint), world=str(world.root), seeds=[0], output=str(tmp_path / "runs"),
                table=str(tmp_path / "ar.md"), config=config)  # fmt: skip
    results = run_ar_demo(**args)
    assert set(results) == set(ROWS)
    for result in results.values():
        assert len(result["probe"]) == len(result["lora"]) == 1 and 0 <= result["zero_shot"] <= 1
    assert run_ar_demo(**args) == results  # resumed: nothing recomputed differs
    assert "| before pretraining |" in (tmp_path / "ar.md").read_text()
