"""Action-recognition fine-tuning: mixup/cutmix, RandAugment, layer-wise lr decay, what each mode
trains, multi-view averaging, mean pooling per frame, and a tiny fit + test through the CLI."""

import math

import pytest
import torch
import torch.nn.functional as F

from streamformer.testing import tiny_model
from streamformer_pretrain.data import collate
from streamformer_pretrain.finetune import (
    ARDataModule,
    ARFinetuning,
    RandAugment,
    average_views,
    clip_indices,
    finetune_cli,
    layer_id,
    mix_videos,
)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A tiny randomized backbone directory: 2 layers, LoRA rank 4, 32 px, 8 time rows."""
    path = tmp_path_factory.mktemp("tiny") / "backbone"
    tiny_model(seed=0).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def no_lora_backbone(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-no-lora") / "backbone"
    tiny_model(seed=0, add_lora_spatial=False, lora_rank=0).save_pretrained(path)
    return str(path)


# -- mixup / cutmix -------------------------------------------------------------------------------


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixing_gives_soft_targets_and_mixes_every_frame_alike(mixup, cutmix):
    b, t, c = 6, 4, 6
    video = torch.randn(b, t, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(b)  # every sample and its partner differ in class
    mixed = mix_videos(video, labels, c, mixup, cutmix, generator=torch.Generator().manual_seed(3))
    assert mixed.video.shape == video.shape and mixed.targets.shape == (b, c)
    torch.testing.assert_close(mixed.targets.sum(1), torch.ones(b))
    assert (mixed.targets >= 0).all()
    kinds = set()
    for i in range(b):
        p = b - 1 - i
        if p == i:
            continue
        # Each pixel's share of the sample itself, recovered from the pixels: one map for all frames.
        share = (mixed.video[i] - video[p]) / (video[i] - video[p])
        torch.testing.assert_close(share, share[:1].expand_as(share), atol=1e-4, rtol=0)
        torch.testing.assert_close(share, share[:, :1].expand_as(share), atol=1e-4, rtol=0)
        lam = share.mean().item()
        assert mixed.targets[i, labels[i]].item() == pytest.approx(lam, abs=1e-4)
        assert mixed.targets[i, labels[p]].item() == pytest.approx(1 - lam, abs=1e-4)
        binary = bool(((share - 0).abs() < 1e-4).logical_or((share - 1).abs() < 1e-4).all())
        uniform = bool((share - share.flatten()[0]).abs().max() < 1e-4)
        assert binary or uniform  # a box of the partner (cutmix) or one blend everywhere (mixup)
        if 0.001 < lam < 0.999:
            kinds.add("cutmix" if binary else "mixup")
    assert (
        kinds
        == {"mixup": {"mixup"}, "cutmix": {"cutmix"}, "both": {"mixup", "cutmix"}}[
            "both" if mixup and cutmix else "mixup" if mixup else "cutmix"
        ]
    )


def test_label_smoothing_without_mixing():
    video, labels = torch.randn(4, 2, 3, 4, 4), torch.tensor([0, 1, 2, 0])
    mixed = mix_videos(video, labels, 3, 0.8, 1.0, mix_prob=0.0, label_smoothing=0.3)
    torch.testing.assert_close(mixed.video, video)
    expected = torch.full((4, 3), 0.1).scatter_(1, labels[:, None], 0.8)
    torch.testing.assert_close(mixed.targets, expected)


# -- RandAugment ----------------------------------------------------------------------------------


def test_rand_augment_keeps_shape_and_range_and_treats_frames_alike():
    clip = torch.rand(4, 3, 12, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for op in RandAugment.OPS:
        for level in (0.7, -0.7):
            out = RandAugment.apply(clip, op, level)
            assert out.shape == clip.shape, op
            assert out.min() >= -1 and out.max() <= 1, op
            for t in range(len(clip)):  # the op on frame t alone: no frame depends on another
                torch.testing.assert_close(out[t], RandAugment.apply(clip[t : t + 1], op, level)[0], msg=op)
        if op not in ("autocontrast", "posterize"):  # level 0 is the identity
            torch.testing.assert_close(RandAugment.apply(clip, op, 0.0), clip, atol=1e-5, rtol=0, msg=op)
    # A translation by 2 pixels moves the content by 2 pixels.
    shifted = RandAugment.apply(clip, "translate_x", 2 / (0.45 * 16))
    torch.testing.assert_close(shifted[..., :-2], clip[..., 2:], atol=1e-5, rtol=0)
    assert shifted[..., -2:].abs().max() < 1e-6  # grey fill

    augment = RandAugment(num_ops=2, magnitude=9)
    still = clip[:1].expand(4, -1, -1, -1)  # four identical frames stay identical
    changed = 0
    for seed in range(8):
        ops = augment.draw(torch.Generator().manual_seed(seed))
        assert len(ops) == 2 and all(abs(level) == pytest.approx(0.9) for _, level in ops)
        out = augment(clip, torch.Generator().manual_seed(seed))
        expected = clip
        for op, level in ops:
            expected = RandAugment.apply(expected, op, level)
        torch.testing.assert_close(out, expected)
        same = augment(still, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(same, same[:1].expand_as(same))
        changed += not torch.allclose(out, clip)
    assert changed >= 6


# -- optimiser groups and trainable parameters ----------------------------------------------------


def test_layer_wise_lr_decay(backbone):
    module = ARFinetuning(backbone, num_classes=5, mode="full", lr=1.0, layer_decay=0.5, weight_decay=0.05)
    assert module.backbone.config.num_hidden_layers == 2  # L + 1 = 3
    groups = {name: group for group in module.parameter_groups() for name in group["names"]}
    assert set(groups) == {name for name, p in module.named_parameters() if p.requires_grad}
    expected = {
        "backbone.embeddings.patch_embeddings.projection.weight": (0.125, 0.05),
        "backbone.embeddings.position_embeddings": (0.125, 0.0),
        "backbone.embeddings.time_embeddings": (0.125, 0.0),
        "backbone.encoder.layer.0.intermediate.dense.weight": (0.25, 0.05),
        "backbone.encoder.layer.0.layernorm_before.weight": (0.25, 0.0),
        "backbone.encoder.layer.0.temporal_attention_gating": (0.25, 0.0),
        "backbone.encoder.layer.1.attention.attention.qkv.lora_A.default.weight": (0.5, 0.05),
        "backbone.encoder.layer.1.output.dense.bias": (0.5, 0.0),
        "backbone.post_layernorm.weight": (1.0, 0.0),
        "backbone.head.probe": (1.0, 0.0),
        "backbone.head.mlp.fc1.weight": (1.0, 0.05),
        "head.classifier.weight": (1.0, 0.05),
        "head.fc_norm.bias": (1.0, 0.0),
    }
    for name, (lr, decay) in expected.items():
        assert (groups[name]["lr"], groups[name]["weight_decay"]) == (pytest.approx(lr), decay), name
    assert layer_id("encoder.layer.1.mlp", 2) == 2 and layer_id("backbone.embeddings.x", 2) == 0


def trainable(module):
    return {name for name, p in module.named_parameters() if p.requires_grad}


def test_modes_train_what_they_say(backbone, no_lora_backbone):
    lora = ARFinetuning(backbone, num_classes=3, mode="lora", lr=1e-2)
    names = trainable(lora)
    assert all("lora_" in name or name.startswith("head.") for name in names)
    assert any("lora_" in name for name in names) and "head.classifier.weight" in names
    assert lora.backbone.training  # drop path and dropout act while it trains
    # One optimizer step moves the LoRA adapters and the head, nothing else.
    before = {name: p.detach().clone() for name, p in lora.named_parameters()}
    optimizer = torch.optim.AdamW(lora.parameter_groups(), lr=1e-2)
    loss = F.cross_entropy(lora(torch.randn(2, 4, 3, 32, 32)), torch.tensor([0, 2]))
    loss.backward()
    optimizer.step()
    moved = {name for name, p in lora.named_parameters() if not torch.equal(p, before[name])}
    assert moved and moved <= names and any("lora_B" in name for name in moved)

    linear = ARFinetuning(backbone, num_classes=3, mode="linear")
    assert trainable(linear) == {"head.fc_norm.weight", "head.fc_norm.bias", "head.classifier.weight", "head.classifier.bias"}
    assert not linear.train().backbone.training  # the frozen backbone stays in eval mode

    spatial = trainable(ARFinetuning(backbone, num_classes=3, mode="spatial_lora"))
    assert "backbone.encoder.layer.0.attention.attention.qkv.base_layer.weight" not in spatial
    assert {
        "backbone.encoder.layer.0.intermediate.dense.weight",
        "backbone.encoder.layer.0.attention.attention.qkv.lora_A.default.weight",
    } <= spatial

    gates = trainable(ARFinetuning(backbone, num_classes=3, mode="full", gates_off=True))
    assert not any(name.endswith("temporal_attention_gating") for name in gates)

    with pytest.raises(ValueError, match="lora_rank=0"):
        ARFinetuning(no_lora_backbone, num_classes=3, mode="lora")


# -- evaluation and pooling -----------------------------------------------------------------------


def test_multi_view_average_is_the_mean_of_view_probabilities(backbone):
    logits = torch.tensor([[[0.0, math.log(9.0)], [math.log(3.0), 0.0]]])  # views: [0.1, 0.9] and [0.75, 0.25]
    torch.testing.assert_close(average_views(logits), torch.tensor([[0.425, 0.575]]))
    assert not torch.allclose(average_views(logits), logits.mean(1).softmax(-1))  # not the mean of the logits

    module = ARFinetuning(backbone, num_classes=4).eval()
    videos = torch.randn(2, 3, 4, 3, 32, 32)  # [B, V, T, 3, H, W]
    with torch.no_grad():
        per_view = torch.stack([module(videos[:, v]).softmax(-1) for v in range(3)]).mean(0)
        torch.testing.assert_close(average_views(module.view_logits(videos)), per_view)
    assert clip_indices(16, 4, 0, 1) == [2, 6, 10, 14]  # one view: segment middles
    assert [clip_indices(16, 4, k, 2) for k in range(2)] == [[1, 5, 9, 13], [3, 7, 11, 15]]


def test_mean_pooling_pools_each_frame_then_averages(backbone):
    module = ARFinetuning(backbone, num_classes=4, pooling="mean").eval()
    video = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = module.features(video)
        last = module.backbone(video).last_hidden_state  # [B, T, N, D], frame-major
        b, t, n, d = last.shape
        by_hand = torch.stack([module.backbone.head(last[:, i]) for i in range(t)], dim=1).mean(1)
        torch.testing.assert_close(features, by_hand)
        # The original's layout: tokens patch-major (frames fastest) cut into T groups of N.
        mixed_frames = last.transpose(1, 2).reshape(b * t, n, d)
        original = module.backbone.head(mixed_frames).view(b, t, d).mean(1)
        assert not torch.allclose(features, original, atol=1e-4)
        global_module = ARFinetuning(module.hparams.backbone, num_classes=4, pooling="global").eval()
        torch.testing.assert_close(global_module.features(video), module.backbone(video).pooler_output[:, -1])


# -- data -----------------------------------------------------------------------------------------


def test_broken_rows_are_skipped_and_counted(world, tmp_path):
    root = world.root
    rows = (root / "ar/train.csv").read_text().splitlines()[:2]
    csv = tmp_path / "train.csv"
    csv.write_text("\n".join([*rows, "ar/clips/missing.mp4,growing", "ar/clips/v000000.mp4,flying"]) + "\n")
    data = ARDataModule(str(csv), str(root / "ar/val.csv"), str(root), str(root / "ar/label2id.json"), clip_length=4, size=32)
    train = data.dataset("train")
    assert train.get(2, 0) is None and train.get(3, 0) is None  # a missing file, a class outside label2id
    batch = collate([train.get(0, 0), train.get(2, 0), train.get(1, 0)])
    assert batch["skipped"] == 1 and batch["video"].shape == (2, 4, 3, 32, 32)
    assert data.dataset("val").get(0, 0)["video"].shape == (1, 4, 3, 32, 32)  # one centre view


# -- a tiny fit and test through the CLI ----------------------------------------------------------


def test_tiny_fit_and_multi_view_test_through_the_cli(world, backbone, tmp_path):
    root = world.root
    cli = finetune_cli(
        [
            f"--model.backbone={backbone}",
            "--model.mode=lora",
            "--model.mixup_alpha=0.8",
            "--model.cutmix_alpha=1.0",
            "--model.lr=1e-3",
            "--model.warmup_epochs=0.5",
            f"--data.train_csv={root}/ar/train.csv",
            f"--data.val_csv={root}/ar/val.csv",
            f"--data.video_root={root}",
            f"--data.label2id={root}/ar/label2id.json",
            "--data.dataset=Synthetic",
            "--data.clip_length=4",
            "--data.size=32",
            "--data.batch_size=4",
            "--data.num_workers=0",
            "--data.rand_augment_magnitude=5",
            "--data.crop_scale=[0.5, 1.0]",
            "--data.test_clips=2",
            "--data.test_crops=3",
            "--data.flips=false",
            "--data.cache_videos=true",
            "--trainer.max_epochs=2",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    module, data, trainer = cli.model, cli.datamodule, cli.trainer
    assert module.hparams.num_classes == 8 == data.num_classes  # linked from label2id.json
    train_item = data.dataset("train").get(0, 123)
    assert train_item["video"].shape == (4, 3, 32, 32) and train_item["video"].abs().max() <= 1
    assert data.dataset("test").get(0, 0)["video"].shape == (6, 4, 3, 32, 32)  # 2 clips x 3 crops
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    trainer.fit(module, data)
    assert trainer.global_step == 12  # 24 clips, batch 4, 2 epochs
    assert {"train/loss", "val/top1", "val/top5"} <= set(trainer.callback_metrics)
    moved = {name for name, p in module.named_parameters() if not torch.equal(p, before[name])}
    assert moved and all("lora_" in name or name.startswith("head.") for name in moved)
    optimizer = trainer.optimizers[0]
    ratios = {g["layer_id"]: g["initial_lr"] / 1e-3 for g in optimizer.param_groups}
    assert ratios == pytest.approx({1: 0.75**2, 2: 0.75, 3: 1.0})  # LoRA of blocks 0 and 1; the head
    factor = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert factor.keywords == {"warmup": 3, "total": 12, "floor": pytest.approx(1e-3)}  # 0.5 of 6 steps per epoch
    (results,) = trainer.test(module, data, verbose=False)
    assert {"test/top1", "test/top5", "test/loss"} <= set(results)
    assert 0.0 <= results["test/top1"] <= results["test/top5"] <= 1.0


def test_finetune_is_a_streamformer_pretrain_command(capsys):
    from streamformer_pretrain.cli import main

    with pytest.raises(SystemExit) as done:
        main(["finetune", "fit", "--help"])
    assert done.value.code == 0 and "--model.mode" in capsys.readouterr().out
