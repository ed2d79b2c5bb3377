"""Several data sets per task, as the real recipe reads them: per-data-set video folders, file
names and caption prefixes, class vocabularies per data set, and losses that score each sample
against its own data set's classes."""

import csv
import json
import shutil

import pytest
import torch

from streamformer_pretrain import MultiTaskDataModule, StreamFormerPretraining
from streamformer_pretrain.data import DatasetMixture, collate, task_readers
from streamformer_pretrain.readers import ClipOptions, GroundingDataset, LocalizationDataset, RetrievalDataset

OPTIONS = ClipOptions(clip_length=4, image_size=32, train=True)
EVAL = ClipOptions(clip_length=4, image_size=32, train=False)


def rewrite_csv(source, target, change):
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    rows = [change(i, dict(row)) for i, row in enumerate(rows)]
    with open(target, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def two_localization_sets(world, tmp_path):
    """The world's localization rows, every other video relabelled as "HACS" (files `v_<id>.mp4`
    in their own folder) with the classes in reverse id order."""
    hacs = tmp_path / "hacs"
    hacs.mkdir()
    ids = sorted({line.split(",")[0] for line in (world.root / "localization/train.csv").read_text().splitlines()[1:]})
    relabelled = set(ids[::2])
    for video_id in relabelled:
        shutil.copy(world.root / f"videos/{video_id}.mp4", hacs / f"v_{video_id}.mp4")
    rewrite_csv(
        world.root / "localization/train.csv",
        tmp_path / "loc.csv",
        lambda i, row: {**row, "dataset": "HACS" if row["video_id"] in relabelled else row["dataset"]},
    )
    classes = json.loads((world.root / "localization/label2id.json").read_text())["Synthetic"]
    reverse = {name: len(classes) - 1 - i for name, i in classes.items()}
    (tmp_path / "label2id.json").write_text(json.dumps({"Synthetic": classes, "HACS": reverse}))
    roots = {"Synthetic": str(world.root / "videos"), "HACS": str(hacs)}
    return dict(csv_path=str(tmp_path / "loc.csv"), video_root=roots, label2id=str(tmp_path / "label2id.json"))


def test_localization_reads_several_data_sets_with_their_own_classes(world, tmp_path):
    files = two_localization_sets(world, tmp_path)
    loc = LocalizationDataset(**files, options=EVAL)
    assert loc.vocabularies["HACS"] == loc.vocabularies["Synthetic"][::-1]
    seen = set()
    for index, sample in enumerate(loc.samples):
        item = loc.get(index, seed=0)
        assert item is not None and item["dataset"] == sample["dataset"]  # HACS files found under their v_ names
        seen.add(sample["dataset"])
        # Ids index the sample's own vocabulary: they name the actions of its rows.
        named = {loc.vocabularies[sample["dataset"]][c] for c in item["frame_labels"].tolist() if c >= 0}
        assert named <= {action for action, _ in sample["windows"]}, sample["video_id"]
    assert seen == {"Synthetic", "HACS"}


def test_a_data_set_without_a_video_root_fails_when_the_reader_is_built(world, tmp_path):
    files = two_localization_sets(world, tmp_path)
    files["video_root"] = {"Synthetic": files["video_root"]["Synthetic"]}
    with pytest.raises(ValueError, match=r"LocalizationDataset \(.*loc.csv\): no video root for data sets \['HACS'\]"):
        LocalizationDataset(**files, options=EVAL)
    files["video_root"]["HACS"] = str(tmp_path / "mistyped")
    with pytest.raises(FileNotFoundError, match=r"LocalizationDataset .*: video root of HACS .*mistyped does not exist"):
        LocalizationDataset(**files, options=EVAL)


def test_grounding_names_tacos_files_and_prefixes_action_captions(world, tmp_path):
    tacos = tmp_path / "tacos"
    tacos.mkdir()

    def change(i, row):
        dataset = ("TaCoS", "FineAction", "Synthetic")[i % 3]
        if dataset == "TaCoS":
            shutil.copy(world.root / f"videos/{row['video_id']}.mp4", tacos / f"{row['video_id']}-cam-002.avi")
        return {**row, "dataset": dataset}

    rows = rewrite_csv(world.root / "grounding/train.csv", tmp_path / "grounding.csv", change)
    roots = {"TaCoS": str(tacos), "FineAction": str(world.root / "videos"), "Synthetic": str(world.root / "videos")}
    train = GroundingDataset(str(tmp_path / "grounding.csv"), roots, 6.0, options=OPTIONS)
    evaluation = GroundingDataset(str(tmp_path / "grounding.csv"), roots, 6.0, options=EVAL)
    prefixes = set()
    for index, row in enumerate(rows[:9]):
        item = train.get(index, seed=index)
        assert item is not None, row  # TaCoS rows found their -cam-002.avi files
        if row["dataset"] == "FineAction":
            prefix = item["caption"].removesuffix(" " + row["text"])
            assert prefix in GroundingDataset.CAPTION_PREFIXES
            prefixes.add(prefix)
            assert evaluation.get(index, seed=0)["caption"] == f"A video of an action where {row['text']}"
        else:
            assert item["caption"] == row["text"]
    assert len(prefixes) > 1  # drawn per access when training
    assert len(GroundingDataset.CAPTION_PREFIXES) == 17


def test_retrieval_reads_only_the_start_of_trimmed_data_sets(world, tmp_path):
    rows = rewrite_csv(
        world.root / "retrieval/train.csv", tmp_path / "retrieval.csv", lambda i, row: {**row, "dataset": "DiDeMo"}
    )
    retrieval = RetrievalDataset(str(tmp_path / "retrieval.csv"), {"DiDeMo": str(world.root / "videos")}, {"DiDeMo": 1.0})
    _, indices, fps = retrieval.frames(world.root / f"videos/{rows[0]['video_id']}.mp4", torch.Generator(), end=1.0)
    assert max(indices) < fps  # the first second only
    whole = RetrievalDataset(str(tmp_path / "retrieval.csv"), {"DiDeMo": str(world.root / "videos")}, options=OPTIONS)
    trimmed = RetrievalDataset(str(tmp_path / "retrieval.csv"), {"DiDeMo": str(world.root / "videos")}, {"DiDeMo": 1.0}, OPTIONS)
    assert not torch.equal(whole.get(0, seed=0)["video"], trimmed.get(0, seed=0)["video"])


def test_task_readers_concatenate_data_sets_and_check_their_names(world, tmp_path):
    ar = dict(csv_path=str(world.root / "ar/train.csv"), prefix=str(world.root), label2id=str(world.root / "ar/label2id.json"))
    single = task_readers("ar", ar, OPTIONS)
    both = task_readers("ar", [{**ar, "dataset": "Kinetics"}, {**ar, "dataset": "SSV2"}], OPTIONS)
    assert isinstance(both, DatasetMixture) and len(both) == 2 * len(single)
    assert set(both.vocabularies) == {"Kinetics", "SSV2"}
    n = len(single)
    assert both.get(n + 1, seed=3)["dataset"] == "SSV2" and both.get(1, seed=3)["dataset"] == "Kinetics"
    assert torch.equal(both.get(n + 1, seed=3)["video"], single.get(1, seed=3)["video"])
    with pytest.raises(ValueError, match="read twice with different classes"):
        reversed_ids = tmp_path / "label2id.json"
        classes = json.loads((world.root / "ar/label2id.json").read_text())
        reversed_ids.write_text(json.dumps({name: len(classes) - 1 - i for name, i in classes.items()}))
        task_readers("ar", [ar, {**ar, "label2id": str(reversed_ids)}], OPTIONS)
    with pytest.raises(ValueError, match="no reader 'VisDataset'"):
        task_readers("ar", {**ar, "reader": "VisDataset"}, OPTIONS)


def test_losses_score_each_sample_against_its_own_data_sets_classes(world, tmp_path):
    files = two_localization_sets(world, tmp_path)
    tiny = dict(
        image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, lora_rank=4, lora_alpha=4.0,
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
    )  # fmt: skip
    data = MultiTaskDataModule(
        root=None, tasks=("localization",), task_files={"localization": files}, clip_length=4, image_size=32
    )
    module = StreamFormerPretraining(config=tiny)
    module.build(data, warm_up_text=False)
    module.eval()
    loc = data.train_sets["localization"]
    picks = [next(i for i, s in enumerate(loc.samples) if s["dataset"] == name) for name in ("Synthetic", "HACS", "HACS")]
    batch = collate([{**loc.get(i, seed=0), "task": "localization"} for i in picks])
    assert batch["dataset"] == ["Synthetic", "HACS", "HACS"]
    with torch.no_grad():
        mixed = module.task_loss(batch)
        groups = [
            module.task_loss(
                {**batch, "video": batch["video"][rows], "frame_labels": batch["frame_labels"][rows], "dataset": names}
            )
            for rows, names in ((slice(0, 1), ["Synthetic"]), (slice(1, 3), ["HACS", "HACS"]))
        ]
        one_vocabulary = module.task_loss({**batch, "dataset": ["Synthetic"] * 3})
    torch.testing.assert_close(mixed, (groups[0] + 2 * groups[1]) / 3)
    assert not torch.isclose(mixed, one_vocabulary)  # HACS ids mean other classes under Synthetic's vocabulary
    with pytest.raises(ValueError, match="several data sets"):
        module.class_embeddings("localization")


def test_the_real_recipe_config_names_readers_and_arguments_that_exist():
    """configs/pretrain/base.yaml cannot run here (no data); its data section must still parse
    as the DataModule's arguments and every entry bind to the reader it names."""
    import inspect
    from pathlib import Path

    import yaml
    from jsonargparse import ArgumentParser

    from streamformer_pretrain.data import DEFAULT_READERS, READERS_BY_NAME

    config = yaml.safe_load((Path(__file__).parents[3] / "configs/pretrain/base.yaml").read_text())
    parser = ArgumentParser()
    parser.add_class_arguments(MultiTaskDataModule)
    parser.parse_object(config["data"])  # raises on a type the DataModule does not take
    named = set()
    for task, files in config["data"]["task_files"].items():
        for entry in files if isinstance(files, list) else [files]:
            arguments = dict(entry)
            reader = READERS_BY_NAME[arguments.pop("reader", DEFAULT_READERS[task].__name__)]
            assert reader.task == task
            inspect.signature(reader).bind(**arguments)
            named.add(reader.__name__)
    assert named == set(READERS_BY_NAME)  # the recipe reads every format
