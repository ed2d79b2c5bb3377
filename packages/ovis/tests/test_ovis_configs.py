"""The shipped configs: every key is one the CLI takes, the real-data recipe builds the original's
sizes, and the synthetic recipe instantiates as written."""

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
import yaml
from transformers import Mask2FormerConfig

from streamformer import StreamFormerConfig, StreamFormerVisionModel
from streamformer_ovis.adapter import AdapterConfig, StreamFormerAdapter, query_token_count
from streamformer_ovis.cli import lightning_cli
from streamformer_ovis.data import Source, VisDataModule
from streamformer_ovis.head import CTVISHead, head_config
from streamformer_ovis.module import OnlineVISTraining
from streamformer_ovis.tracker import TrackerConfig

CONFIGS = Path(__file__).parents[3] / "configs" / "ovis"


def fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_key_is_an_argument(name):
    config = yaml.safe_load((CONFIGS / name).read_text())
    model = config["model"]
    assert set(model) <= set(inspect.signature(OnlineVISTraining).parameters) - {"categories"}  # linked from the data
    assert set(model.get("adapter", {})) <= fields(AdapterConfig)
    assert set(model.get("tracker", {})) <= fields(TrackerConfig)
    assert all(hasattr(Mask2FormerConfig(), key) for key in model.get("head", {}))
    assert set(config["data"]) <= set(inspect.signature(VisDataModule).parameters)
    sources = [*config["data"]["train"], config["data"]["val"]]
    assert all(set(source) <= fields(Source) for source in sources)


def test_real_data_recipe_builds_the_original_sizes():
    model = yaml.safe_load((CONFIGS / "ytvis19-ctvis.yaml").read_text())["model"]
    backbone = StreamFormerVisionModel(StreamFormerConfig(lora_rank=32))  # StreamFormer-B/16, LoRA rank 32
    adapter = StreamFormerAdapter(backbone, AdapterConfig(**model["adapter"]))
    head = CTVISHead(head_config(40, **model["head"]), adapter.output_channels, model["reid_dim"])
    assert query_token_count(224, 224) == 1029  # 784 + 196 + 49 SPM tokens at 224 px
    assert adapter.interaction_indexes == [[0, 2], [3, 5], [6, 8], [9, 11]]
    assert len(adapter.interactions[-1].extra_extractors) == 2 and adapter.interactions[0].injector is None
    assert head.class_embed.out_features == 41  # 40 YouTube-VIS 2019 classes + no object
    assert head.decoder.queries_features.num_embeddings == 100
    assert len(head.decoder.decoder.layers) == 9  # DEC_LAYERS 10: 9 masked-attention layers
    assert len(head.pixel_decoder.encoder.layers) == 6
    assert [m.out_features for m in head.reid_embed if isinstance(m, torch.nn.Linear)] == [256, 256, 256]
    trainable = {n.split(".")[0] for n, p in adapter.named_parameters() if p.requires_grad}
    assert "backbone" in trainable and all("lora_" in n for n, p in backbone.named_parameters() if p.requires_grad)


def test_synthetic_recipe_instantiates_as_written(setup):
    vis = setup / "world" / "vis"
    cli = lightning_cli([f"--config={CONFIGS / 'synthetic-tiny.yaml'}", f"--model.backbone={setup / 'backbone'}",
                         f"--data.train=[{{json: {vis}/train_Synthetic.json, images: {vis}}}]",
                         f"--data.val={{json: {vis}/val_Synthetic.json, images: {vis}}}"], run=False)  # fmt: skip
    assert cli.model.categories.names == ("circle", "square", "triangle")
    assert cli.model.model.head.config.num_queries == 10 and cli.trainer.max_steps == 400
