"""The shipped configs: the real-data recipes build the original's MAT (parameter counts of the
original module structure), and every key is one the CLI takes."""

import inspect
from pathlib import Path

import pytest
import torch
import yaml

from streamformer_oad.model import MAT, MATConfig
from streamformer_oad.module import LINKED_LENGTHS, OADDataModule, OnlineActionDetection, lightning_cli

CONFIGS = Path(__file__).parents[3] / "configs" / "oad"
PARAMETERS = {"thumos-mat.yaml": 104_638_486, "thumos-mat-visual.yaml": 98_334_742, "tvseries-mat.yaml": 98_343_967}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_real_data_recipes_build_the_original_mat(name):
    config = yaml.safe_load((CONFIGS / name).read_text())
    with torch.device("meta"):
        model = MAT(MATConfig(**config["model"]["config"]))
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_key_is_an_argument(name):
    config = yaml.safe_load((CONFIGS / name).read_text())
    assert set(config["model"]) <= set(inspect.signature(OnlineActionDetection).parameters)
    data_arguments = set(inspect.signature(OADDataModule).parameters)
    assert set(config["data"]) <= data_arguments - set(LINKED_LENGTHS.values())  # lengths come from the model


def test_linked_lengths_reach_the_data(toy_data):
    run = lightning_cli(
        [f"--config={CONFIGS / 'synthetic-mat.yaml'}", f"--data.root={toy_data}", "--data.dataset=Toy"], run=False
    )
    lengths = run.datamodule.lengths
    config = run.model.config
    assert (lengths.work, lengths.anticipation, lengths.future, lengths.memory_samples) == (
        config.work_memory_length,
        config.anticipation_length,
        config.future_length,
        config.long_memory_num_samples,
    )
