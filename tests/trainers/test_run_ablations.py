"""The ablation table runs each variant through the protocol runner and tabulates the metrics it wrote."""

from __future__ import annotations

import json

import pytest
import os

from trainers.run_ablations import run_ablations

from conftest import write_image_dataset


def test_ablation_table_on_a_small_dataset(tmp_path, tiny_clip_dir):
    paths = write_image_dataset(tmp_path / "data", per_class_train=3, per_class_test=2)
    data_dir = str(tmp_path / "data" / "train")
    # a folder with both splits, like embedded/fashion-subset
    import shutil

    shutil.copy(paths["test"], tmp_path / "data" / "train" / "test.parquet")
    common = ["--model_name_or_path", tiny_clip_dir, "--num_train_epochs", "1",
              "--save_every_epochs", "0", "--heatmap", "false"]
    result = run_ablations(["--variants", "coop", "sem_sam", "--seeds", "1", "2", "--shots", "2", "--dataset_name", data_dir,
                            "--settings", "base2novel", "--output_dir", str(tmp_path / "runs"), "--", *common])
    table = result["table"]
    assert "| zero-shot CLIP |" in table and "| CoOp |" in table and "| SEM + SAM, no MGDE (Table 5) |" in table
    assert len(result["rows"]["sem_sam"]) == 2  # two seeds
    bases = [metrics["capt"]["base_accuracy"] for _, metrics in result["rows"]["sem_sam"]]
    mean = sum(bases) / 2
    std = (sum((b - mean) ** 2 for b in bases) / 2) ** 0.5
    assert f"| SEM + SAM, no MGDE (Table 5) | {mean:.2f} ± {std:.2f} |" in table
    for _, metrics in result["rows"]["sem_sam"]:
        assert metrics["method"] == "capt" and "test_break_rate" in metrics["capt"]
    # a second call reruns nothing and gives the same table
    again = run_ablations(["--variants", "coop", "sem_sam", "--seeds", "1", "2", "--shots", "2", "--dataset_name", data_dir,
                           "--settings", "base2novel", "--output_dir", str(tmp_path / "runs"), "--table_only", "--",
                           *common])
    assert again["table"] == table
    assert json.loads((tmp_path / "runs" / "sem_sam" / "base2novel" / "train" / "seed1.json").read_text())["method"] == "capt"


def test_cells_use_the_population_std_like_the_protocol_tables():
    from trainers.run_ablations import _cell

    assert _cell([80.0, 82.0, None]) == "81.00 ± 1.00"  # ddof 0 (the sample std would be 1.41)
    assert _cell([80.0]) == "80.00 ± 0.00" and _cell([None]) == "–"


def test_table9_rows_build_their_bank_from_the_same_seeds_checkpoint_and_all_classes_get_a_table(tmp_path, tiny_clip_dir):
    """Table 9 is the bank's base model (not the pair count, now labelled Figure 9); the ranking rows also run on all
    classes."""
    import shutil

    paths = write_image_dataset(tmp_path / "data", per_class_train=3, per_class_test=2)
    shutil.copy(paths["test"], tmp_path / "data" / "train" / "test.parquet")
    common = ["--model_name_or_path", tiny_clip_dir, "--num_train_epochs", "1", "--save_every_epochs", "0",
              "--heatmap", "false"]
    result = run_ablations(["--variants", "coop", "capt", "bank_coop", "bank_capt", "k_pairs_1", "--seeds", "1", "--shots", "2",
                            "--dataset_name", str(tmp_path / "data" / "train"), "--output_dir", str(tmp_path / "runs"),
                            "--", *common])
    table = result["table"]
    assert "| bank from CAPT (Table 9) |" in table and "| bank from CoOp (Table 9) |" in table and "| 1 confusion pair per sample (Figure 9) |" in table
    assert "Table 9) |" not in table.split("bank from CoOp")[0]
    assert "All classes" in table and "| variant | accuracy |" in table
    (record, metrics), = result["rows"]["bank_coop"]
    assert any(arg.endswith(os.path.join("coop", "base2novel", "train", "seed1", "model"))
               for arg in record["config"]["trainer_args"])
    with open(os.path.join(tmp_path, "runs", "bank_coop", "base2novel", "train", "seed1", "confusion_bank",
                           "bank_metadata.json"), encoding="utf-8") as handle:
        assert json.load(handle)["base_model"].endswith("model")
    assert "k_pairs_1@few_shot" in result["rows"] and "bank_coop@few_shot" not in result["rows"]


@pytest.mark.parametrize("name", __import__("trainers.run_ablations", fromlist=["VARIANTS"]).VARIANTS)
def test_every_variants_flags_parse(name):
    """A flag value starting with '-' (layer -3) must be written --flag=value, or argparse takes it for a flag."""
    from trainers.args import parse_args
    from trainers.run_ablations import VARIANTS

    variant = VARIANTS[name]
    parse_args(["--method", variant.method, *variant.flags])
