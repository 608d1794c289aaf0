"""The ablation table runs each variant through the protocol runner and tabulates the metrics it wrote."""

from __future__ import annotations

import json

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
                            "--output_dir", str(tmp_path / "runs"), "--", *common])
    table = result["table"]
    assert "| zero-shot CLIP |" in table and "| CoOp |" in table and "| SEM + SAM (Table 5) |" in table
    assert len(result["rows"]["sem_sam"]) == 2  # two seeds
    bases = [metrics["capt"]["base_accuracy"] for _, metrics in result["rows"]["sem_sam"]]
    mean = sum(bases) / 2
    std = (sum((b - mean) ** 2 for b in bases) / 2) ** 0.5
    assert f"| SEM + SAM (Table 5) | {mean:.2f} ± {std:.2f} |" in table
    for _, metrics in result["rows"]["sem_sam"]:
        assert metrics["method"] == "capt" and "test_break_rate" in metrics["capt"]
    # a second call reruns nothing and gives the same table
    again = run_ablations(["--variants", "coop", "sem_sam", "--seeds", "1", "2", "--shots", "2", "--dataset_name", data_dir,
                           "--output_dir", str(tmp_path / "runs"), "--table_only", "--", *common])
    assert again["table"] == table
    assert json.loads((tmp_path / "runs" / "sem_sam" / "base2novel" / "train" / "seed1.json").read_text())["method"] == "capt"


def test_cells_use_the_population_std_like_the_protocol_tables():
    from trainers.run_ablations import _cell

    assert _cell([80.0, 82.0, None]) == "81.00 ± 1.00"  # ddof 0 (the sample std would be 1.41)
    assert _cell([80.0]) == "80.00 ± 0.00" and _cell([None]) == "–"
