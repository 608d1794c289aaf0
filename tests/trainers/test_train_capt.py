"""The Accelerate trainer: arguments, end-to-end runs, metrics.json, resume, Hub upload, and bad input."""

from __future__ import annotations

import json
import os

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from modeling_capt import CaptForImageClassification
from trainers.args import layers_to_transform, parse_args
from trainers.metrics import classification_metrics, confusion_matrix, harmonic_mean
from trainers.train_capt import main

from conftest import CLASS_NAMES, reset_accelerate, small_run_args


@pytest.fixture
def run_args(tmp_path, tiny_clip_dir):
    return small_run_args(tmp_path, tiny_clip_dir) + ["--output_dir", str(tmp_path / "out")]


# --------------------------------------------------------------------------------------------------- arguments
def test_config_file_then_flags_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("method: coop\nshots: 8\nlearning_rate: 0.01\n")
    model_args, data_args, _, train_args = parse_args(["--config", str(config), "--shots", "2"])
    assert model_args.method == "coop"
    assert data_args.shots == 2
    assert train_args.learning_rate == 0.01
    json_config = tmp_path / "run.json"
    json_config.write_text(json.dumps({"method": "zeroshot"}))
    assert parse_args(["--config", str(json_config)])[0].method == "zeroshot"
    assert parse_args([f"--config={json_config}"])[0].method == "zeroshot"


@pytest.mark.parametrize("value, layers", [("[-3, -1]", [-3, -1]), ("-1", [-1]), ("'0,2'", [0, 2])])
def test_config_file_layers_as_a_list(tmp_path, value, layers):
    """`layers_to_transform` is a comma list on the command line; a config file may give a list or one integer."""
    config = tmp_path / "run.yaml"
    config.write_text(f"layers_to_transform: {value}\n")
    assert layers_to_transform(parse_args(["--config", str(config)])[2]) == layers


@pytest.mark.parametrize(
    "content, error",
    [("shots: four\n", "shots must be int"), ("layers_to_transform: [1.5]\n", "layers_to_transform must be str"), ("nonsense: 1\n", "unknown"), ("use_sam: 3\n", "use_sam must be bool")],
)
def test_config_file_errors(tmp_path, content, error):
    config = tmp_path / "run.yaml"
    config.write_text(content)
    with pytest.raises(ValueError, match=error):
        parse_args(["--config", str(config)])


@pytest.mark.parametrize(
    "argv, error",
    [
        (["--method", "maple"], "--method"),
        (["--push_to_hub"], "hub_model_id"),
        (["--push_to_hub", "--hub_model_id", "capt-test"], "--hub_model_id must look like 'org/name'"),
        (["--train_dir", "x"], "go together"),
        (["--dataset", "oxford_pets"], "data_dir"),
        (["--prompt_generator", "json"], "prompt_file"),
        (["--learning_rate", "0"], "--learning_rate must be positive"),
        (["--learning_rate", "-0.1"], "--learning_rate must be positive"),
        (["--max_eval_samples", "0"], "--max_eval_samples must be at least 1"),
        (["--max_eval_samples", "-3"], "--max_eval_samples must be at least 1"),
        (["--save_every_epochs", "-1"], "--save_every_epochs must be 0 or more"),
        (["--save_total_limit", "-1"], "--save_total_limit must be 0 or more"),
        (["--method", "zeroshot", "--resume_from_checkpoint", "."], "zeroshot trains nothing"),
        (["--config="], "--config needs a file path"),
    ],
)
def test_bad_flags(argv, error):
    with pytest.raises(ValueError, match=error):
        parse_args(argv)


@pytest.mark.parametrize("flag", ["--model_name_or_path", "--bank_path", "--bank_base_model",
                                  "--resume_from_checkpoint"])
def test_missing_local_paths_are_named_before_any_work(tmp_path, flag):
    missing = str(tmp_path / "missing" / "folder")
    with pytest.raises(FileNotFoundError, match=f"{flag}.*{missing}"):
        parse_args([flag, missing])
    parse_args(["--bank_path", "org/bank-on-the-hub"])  # a Hub id is not checked locally


@pytest.mark.parametrize("flag", ["--dataset_name", "--train_dir", "--test_dir", "--data_dir", "--prompt_file"])
def test_missing_data_paths_are_named_before_any_work(tmp_path, flag):
    """A mistyped local data path is named as missing (not looked up on the Hub, not found after model loading)."""
    missing = str(tmp_path / "missing" / "folder")
    existing = str(tmp_path)
    partner = {"--train_dir": ["--test_dir", existing], "--test_dir": ["--train_dir", existing],
               "--data_dir": ["--dataset", "oxford_pets"], "--prompt_file": ["--prompt_generator", "json"]}
    with pytest.raises(FileNotFoundError, match=f"{flag}.*{missing}"):
        parse_args([flag, missing] + partner.get(flag, []))
    with pytest.raises(FileNotFoundError, match="--dataset_name.*no such file"):
        parse_args(["--dataset_name", "./my-data"])



@pytest.mark.parametrize("method", ["zeroshot", "coop", "capt"])
def test_help_lists_every_flag_of_the_method_with_its_help(method, capsys):
    """Flag help comes from the argument dataclasses: `--method M --help` names every flag of M's run, each with the
    help text its field declares, and no other method's flags."""
    from dataclasses import fields

    from trainers.args import argument_classes
    from trainers.methods import METHODS

    with pytest.raises(SystemExit):
        main(["--method", method, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    own = {f.name: f for group in argument_classes(method) for f in fields(group)}
    for name, f in own.items():
        assert f"--{name}" in text, name
        assert " ".join(f.metadata["help"].split()) in text, name
    others = {f.name for other in METHODS.values() for f in fields(other.Arguments)} - set(own)
    assert not [name for name in others if f"--{name} " in text]


# --------------------------------------------------------------------------------------------------- metrics
def test_metrics_by_hand():
    matrix = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    metrics = classification_metrics([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(400 / 6)
    assert metrics["per_class_accuracy"] == {"a": 50.0, "b": 100.0, "c": pytest.approx(200 / 3)}
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="out of range"):
        confusion_matrix([0, 3], [0, 1], 3)


# --------------------------------------------------------------------------------------------------- runs
@pytest.mark.parametrize("method", ["zeroshot", "coop", "capt"])
def test_end_to_end_runs(run_args, tmp_path, method):
    summary = main(run_args + ["--method", method])
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(summary))
    assert metrics["method"] == method and metrics["seed"] == 1 and metrics["shots"] == 4
    for name in {"zeroshot", method}:
        entry = metrics[name]
        for key in ("accuracy", "base_accuracy", "novel_accuracy", "hm"):
            assert 0.0 <= entry[key] <= 100.0
        assert entry["hm"] == pytest.approx(harmonic_mean(entry["base_accuracy"], entry["novel_accuracy"]))
        assert np.array(entry["confusion_matrix"]).sum() == 3 * 3  # 3 base classes x 3 test images
        assert np.array(entry["novel_confusion_matrix"]).sum() == 3 * 3
    model = CaptForImageClassification.from_pretrained(out / "model")
    assert model.config.class_names == CLASS_NAMES[:3]
    if method == "capt":
        for key in ("correction_rate", "test_correction_rate", "test_break_rate"):
            assert key in metrics["capt"]
        assert (out / "confusion_bank" / "README.md").exists()
        assert model.mgde is not None and model.adapted_layer_names
    if method != "zeroshot":
        assert (out / "checkpoints" / "epoch_2" / "capt_progress.json").exists()
        assert (out / "adapter" / "adapter_config.json").exists()


def test_zero_shot_metrics_match_direct_evaluation(run_args, tmp_path, tiny_clip_dir):
    summary = main(run_args + ["--method", "zeroshot", "--subsample_classes", "all"])
    model = CaptForImageClassification.from_clip(tiny_clip_dir, CLASS_NAMES)
    test = datasets.load_dataset("parquet", data_files=str(tmp_path / "data" / "test" / "test.parquet"))["train"]
    pixels = model.image_processor(images=[im.convert("RGB") for im in test["image"]], return_tensors="pt")
    with torch.no_grad():
        preds = model(pixel_values=pixels["pixel_values"]).logits.argmax(-1)
    expected = 100.0 * (preds == torch.tensor(test["label"])).float().mean().item()
    assert summary["zeroshot"]["accuracy"] == pytest.approx(expected)
    assert "novel_accuracy" not in summary["zeroshot"]


def test_resume_skips_finished_epochs(run_args, tmp_path, capsys):
    main(run_args + ["--method", "coop", "--num_train_epochs", "1"])
    capsys.readouterr()
    reset_accelerate()
    main(run_args + ["--method", "coop", "--num_train_epochs", "2", "--resume_from_checkpoint", "latest"])
    printed = capsys.readouterr().out
    assert "epoch 1:" not in printed and "epoch 2:" in printed
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        reset_accelerate()
        main(run_args + ["--method", "coop", "--resume_from_checkpoint", str(tmp_path / "missing")])


def test_a_shorter_run_into_the_same_output_dir_keeps_its_own_checkpoint(run_args, tmp_path):
    """A 1-epoch run into the folder of a 3-epoch run: pruning deleted the new epoch_1 and kept the old epoch_3, which
    `--resume_from_checkpoint latest` then resumed (training nothing and saving the old run's weights)."""
    main(run_args + ["--method", "coop", "--num_train_epochs", "3"])
    reset_accelerate()
    main(run_args + ["--method", "coop", "--num_train_epochs", "1"])
    assert sorted(os.listdir(tmp_path / "out" / "checkpoints")) == ["epoch_1"]
    reset_accelerate()
    main(run_args + ["--method", "coop", "--num_train_epochs", "3", "--save_total_limit", "0",
                     "--output_dir", str(tmp_path / "longer")])
    reset_accelerate()
    with pytest.raises(ValueError, match="after epoch 3, past this run's --num_train_epochs 1"):
        main(run_args + ["--method", "coop", "--num_train_epochs", "1", "--output_dir", str(tmp_path / "longer"),
                         "--resume_from_checkpoint", "latest"])


def test_resume_refuses_a_checkpoint_of_other_training_flags(run_args, tmp_path, monkeypatch):
    from trainers import train_capt

    main(run_args + ["--method", "coop", "--num_train_epochs", "1"])
    metrics = (tmp_path / "out" / "metrics.json").read_text()
    reset_accelerate()
    monkeypatch.setattr(train_capt, "prepare_splits", lambda *a: pytest.fail("work started before the check"))
    with pytest.raises(ValueError, match=r"other training flags \(--learning_rate: checkpoint 0.002, this run 0.01\)"):
        main(run_args + ["--method", "coop", "--num_train_epochs", "2", "--learning_rate", "0.01",
                         "--resume_from_checkpoint", "latest"])
    assert (tmp_path / "out" / "metrics.json").read_text() == metrics  # nothing already saved is touched


@pytest.mark.parametrize("method", ["coop", "capt"])
def test_resume_gives_the_uninterrupted_weights(run_args, tmp_path, method):
    """Resuming after epoch 1 continues the training loader's shuffle and CAPT's random draws where they were."""
    from safetensors.torch import load_file

    flags = ["--method", method, "--save_total_limit", "0"] + (["--random_samples"] if method == "capt" else [])
    main(run_args + flags + ["--output_dir", str(tmp_path / "full"), "--num_train_epochs", "3"])
    reset_accelerate()
    main(run_args + flags + ["--output_dir", str(tmp_path / "resumed"), "--num_train_epochs", "3",
                             "--resume_from_checkpoint", str(tmp_path / "full" / "checkpoints" / "epoch_1")])
    full = load_file(tmp_path / "full" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert full.keys() == resumed.keys()
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=0, msg=name)


def test_interrupted_checkpoint_saves_leave_a_loadable_latest(tmp_path, monkeypatch):
    """A crash while a checkpoint is written or replaced: `latest` finds a complete one, pruning does not crash."""
    from trainers import checkpointing

    root = tmp_path / "checkpoints"

    class Saver:  # the parts of Accelerator that save_checkpoint uses
        is_main_process, process_index = True, 0

        def __init__(self, content):
            self.content = content

        def wait_for_everyone(self):
            pass

        def save_state(self, directory, **kwargs):
            os.makedirs(directory)
            for name in ("model.safetensors", "optimizer.bin"):
                (tmp_path / directory / name).write_text(self.content)

    checkpointing.save_checkpoint(Saver("first"), str(root / "epoch_1"), 1)
    checkpointing.save_checkpoint(Saver("first"), str(root / "epoch_2"), 2)
    # a crash inside the deletion of the checkpoint being replaced (resumed from epoch 1, saving epoch 2 again)
    real_rmtree = checkpointing.shutil.rmtree

    def crashing_rmtree(path, *args, **kwargs):
        for name in sorted(os.listdir(path))[:1]:
            os.remove(os.path.join(path, name))
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpointing.shutil, "rmtree", crashing_rmtree)
    with pytest.raises(KeyboardInterrupt):
        checkpointing.save_checkpoint(Saver("second"), str(root / "epoch_2"), 2)
    monkeypatch.setattr(checkpointing.shutil, "rmtree", real_rmtree)
    # and a crash after the progress file of epoch 3 was written, before its rename
    os.makedirs(root / "epoch_3.tmp")
    (root / "epoch_3.tmp" / checkpointing.PROGRESS_FILE).write_text('{"epoch": 3}')

    latest = checkpointing.latest_checkpoint(str(tmp_path))
    assert latest == str(root / "epoch_2")
    assert sorted(os.listdir(latest)) == ["capt_progress.json", "model.safetensors", "optimizer.bin"]
    checkpointing.prune_checkpoints(str(root), 1)
    assert checkpointing.latest_checkpoint(str(tmp_path)) == str(root / "epoch_2")


def test_push_to_hub_uploads_the_saved_folder(run_args, monkeypatch):
    from conftest import RecordingHub

    hub_calls = RecordingHub(monkeypatch)
    main(run_args + ["--method", "zeroshot", "--push_to_hub", "--hub_model_id", "org/capt-test", "--hub_private"])
    create, upload = hub_calls.calls
    assert create["repo_id"] == "org/capt-test" and create["exist_ok"] and create["private"] is True
    assert upload["repo_id"] == "org/capt-test" and upload["repo_type"] == "model"
    out = run_args[run_args.index("--output_dir") + 1]
    assert upload["folder_path"] == os.path.join(out, "model")
    # the self-contained checkpoint, its card and its serving files (trainers/write_space.py: a Space's app and an
    # Endpoint's handler); nothing of the run around it (checkpoints, prefix cache, metrics), and of the modeling
    # files only those zero-shot CLIP's class reaches (not CAPT's)
    assert upload["files"] == ["README.md", "app.py", "config.json", "configuration_prompt_clip.py", "handler.py",
                               "model.safetensors", "modeling_prompt_clip.py", "preprocessor_config.json",
                               "requirements.txt", "tokenizer.json", "tokenizer_config.json"]
    card = open(os.path.join(upload["folder_path"], "README.md")).read()
    assert "org/capt-test" in card and "zero-shot CLIP" in card and "| zeroshot |" in card

    hub_calls.calls.clear()  # without --hub_private a new repo's visibility is the Hub's default, not forced public
    main(run_args + ["--method", "zeroshot", "--push_to_hub", "--hub_model_id", "org/capt-test"])
    assert hub_calls.calls[0]["private"] is None


# --------------------------------------------------------------------------------------------------- bad input
def _write(path, images, labels, features):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(path)


def test_bad_data_fails_before_training(tmp_path, tiny_clip_dir):
    base = ["--model_name_or_path", tiny_clip_dir, "--output_dir", str(tmp_path / "out"), "--method", "coop",
            "--shots", "2", "--subsample_classes", "all"]
    image = Image.new("RGB", (32, 32))
    good = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    _write(str(tmp_path / "ok" / "test.parquet"), [image] * 2, [0, 1], good)

    plain = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    _write(str(tmp_path / "plain" / "train.parquet"), [image] * 2, [0, 1], plain)
    with pytest.raises(ValueError, match="ClassLabel"):
        main(base + ["--train_dir", str(tmp_path / "plain"), "--test_dir", str(tmp_path / "ok")])

    _write(str(tmp_path / "empty" / "train.parquet"), [], [], good)
    with pytest.raises(ValueError, match="empty"):
        main(base + ["--train_dir", str(tmp_path / "empty"), "--test_dir", str(tmp_path / "ok")])

    corrupt = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=["a", "b"])})
    _write(str(tmp_path / "corrupt" / "train.parquet"), [{"bytes": b"not an image", "path": None}] * 2, [0, 1], corrupt)
    with pytest.raises(ValueError, match="Cannot decode the image of train row"):
        main(base + ["--train_dir", str(tmp_path / "corrupt"), "--test_dir", str(tmp_path / "ok")])
    assert not os.path.exists(tmp_path / "out" / "checkpoints")


def _image_folder(root, counts: dict) -> str:
    """An ImageFolder tree `root/<split>/<class>/<i>.png` of grayscale images, `counts[split][class]` per class."""
    rng = np.random.default_rng(0)
    for split, per_class in counts.items():
        for name, count in per_class.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for index in range(count):
                Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(
                    os.path.join(root, split, name, f"{index}.png"))
    return str(root)


def test_a_training_class_without_images_fails_before_any_work(tmp_path, tiny_clip_dir, monkeypatch, caplog):
    """An ImageFolder whose test tree has a class folder the training tree lacks: CAPT stops before loading CLIP,
    naming the class (it failed after zero-shot evaluation and the bank, deep in the representative retrieval)."""
    import trainers.train_capt as train_capt

    tree = _image_folder(tmp_path / "data", {"train": {"golden_retriever": 2, "red_fox": 2, "tabby_cat": 2},
                                            "test": {"golden_retriever": 1, "gray_wolf": 1, "red_fox": 1,
                                                     "tabby_cat": 1}})
    argv = ["--model_name_or_path", tiny_clip_dir, "--dataset_name", tree, "--output_dir", str(tmp_path / "out"),
            "--shots", "4", "--num_train_epochs", "1", "--heatmap", "false"]

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(train_capt.CLIPModel, "from_pretrained", no_model)
    with pytest.raises(ValueError, match=r"no image of the class\(es\) \['gray_wolf'\]"):
        main(argv)
    assert "--shots 4: 4 of 4 classes have fewer training images" in caplog.text
    monkeypatch.undo()
    reset_accelerate()
    summary = main(argv + ["--method", "coop"])  # trains nothing on it, but still classifies it: a warning
    assert summary["coop"]["per_class_accuracy"].keys() == {"golden retriever", "gray wolf"}
    assert "no image of the class(es) ['gray_wolf']" in caplog.text


@pytest.mark.parametrize("flags, error", [
    (["--layers_to_transform", "5"], "layers_to_transform index 5 is out of range for 2 layers"),
    (["--mgde_top_k", "9"], "mgde_top_k must be between 1 and 3"),
    (["--alpha_gamma", "-1"], "alpha_gamma must be a non-negative number"),
    (["--mgde_num_clusters", "0"], "mgde_num_clusters must be positive"),  # was silently raised to 1
    (["--method", "coop", "--n_ctx", "0"], "n_ctx must be a positive integer"),
])
def test_model_flags_the_model_refuses_fail_before_any_work(run_args, monkeypatch, flags, error):
    """They failed when the trained model was built: after loading the data, the zero-shot evaluation and the bank."""
    import trainers.train_capt as train_capt

    monkeypatch.setattr(train_capt, "prepare_splits", lambda *a: pytest.fail("work started before the check"))
    with pytest.raises(ValueError, match=error):
        main(run_args + flags)


@pytest.mark.parametrize("method", ["coop", "capt", "visprompt"])
def test_a_single_training_class_fails_before_any_work(tmp_path, tiny_clip_dir, monkeypatch, method):
    """A 2-class dataset split base-to-novel trains on one class: CAPT failed after the zero-shot evaluation, and CoOp
    trained on a loss that is always 0."""
    import trainers.train_capt as train_capt

    tree = _image_folder(tmp_path / "data", {"train": {"cat": 2, "dog": 2}, "test": {"cat": 1, "dog": 1}})
    monkeypatch.setattr(train_capt.CLIPModel, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match=r"at least two training classes, got \['cat'\].*--subsample_classes all"):
        main(["--model_name_or_path", tiny_clip_dir, "--dataset_name", tree, "--output_dir", str(tmp_path / "out"),
              "--method", method])


def test_bank_script_builds_a_bank_the_trainer_loads(run_args, tmp_path, tiny_clip_dir):
    from dataset_scripts.build_confusion_bank import main as build_bank_main
    from dataset_scripts.confusion_bank import load_bank

    data = tmp_path / "data"
    bank = build_bank_main(["--model", tiny_clip_dir, "--device", "cpu", "--train_dir", str(data / "train"),
                            "--test_dir", str(data / "test"), "--shots", "4", "--output_dir", str(tmp_path / "bank")])
    assert len(bank) == 3 * 4  # 3 base classes x 4 shots
    loaded = load_bank(str(tmp_path / "bank"), class_names=CLASS_NAMES[:3], template="a photo of a {}.")
    assert torch.equal(loaded.probs, bank.probs) and torch.equal(loaded.indices, bank.indices)
    with pytest.raises(ValueError, match="dog|class"):
        load_bank(str(tmp_path / "bank"), class_names=["cat", "wolf", "bird"])
    summary = main(run_args + ["--method", "capt", "--bank_path", str(tmp_path / "bank"), "--num_train_epochs", "1"])
    assert summary["capt"]["bank_misclassified"] == int(bank.num_misclassified)
    # the script and the trainer fingerprint the same training set alike; the run's saved bank keeps the fingerprint
    assert loaded.data_fingerprint == bank.data_fingerprint is not None
    assert load_bank(str(tmp_path / "out" / "confusion_bank")).data_fingerprint == bank.data_fingerprint


def test_a_bank_of_another_seeds_few_shot_draw_fails_before_any_work(run_args, tmp_path, tiny_clip_dir, monkeypatch):
    """A bank built by the script with --seed 2 has the size and labels of the run's --seed 1 training set (few-shot
    rows are ordered by class) but describes other images: its fingerprint refuses it before any model is loaded."""
    from dataset_scripts.build_confusion_bank import main as build_bank_main
    from trainers import train_capt

    data = tmp_path / "data"
    bank = build_bank_main(["--model", tiny_clip_dir, "--device", "cpu", "--train_dir", str(data / "train"),
                            "--test_dir", str(data / "test"), "--shots", "4", "--seed", "2",
                            "--output_dir", str(tmp_path / "bank")])
    assert bank.data_fingerprint
    monkeypatch.setattr(train_capt.CLIPModel, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match="built from other images than this training set.*--seed"):
        main(run_args + ["--method", "capt", "--seed", "1", "--bank_path", str(tmp_path / "bank")])


def test_bank_script_takes_the_trainers_column_flags(tmp_path, tiny_clip_dir, monkeypatch):
    """A source with `img` / `fine_label` columns: the bank script takes --image_column/--label_column as the trainer
    does (it had no such flags), and refuses a non-bank --output_dir before reading any data."""
    import dataset_scripts.build_confusion_bank as bank_script

    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=CLASS_NAMES[:4])})
    (tmp_path / "data").mkdir()
    for split, per_class in (("train", 3), ("test", 1)):
        labels = [y for y in range(4) for _ in range(per_class)]
        datasets.Dataset.from_dict({"img": [Image.new("RGB", (32, 32), (40 * y, 0, 0)) for y in labels],
                                    "fine_label": labels}, features=features).to_parquet(
            str(tmp_path / "data" / f"{split}.parquet"))
    common = ["--model", tiny_clip_dir, "--device", "cpu", "--dataset_name", str(tmp_path / "data"),
              "--image_column", "img", "--label_column", "fine_label", "--shots", "2"]
    bank = bank_script.main(common + ["--output_dir", str(tmp_path / "bank")])
    assert len(bank) == 2 * 2 and bank.class_names == CLASS_NAMES[:2]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    monkeypatch.setattr(bank_script, "prepare_splits", lambda *a: pytest.fail("work started before the check"))
    with pytest.raises(ValueError, match="holds no Confusion Bank"):
        bank_script.main(common + ["--output_dir", str(tmp_path / "notes")])
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_prompt_file_is_used_with_a_bank_that_stores_prompts(run_args, tmp_path):
    """A bank saved by a run carries its (template) prompts; --prompt_generator json must still use the file."""
    main(run_args + ["--method", "capt", "--num_train_epochs", "1", "--save_every_epochs", "0"])
    saved = tmp_path / "out" / "confusion_bank"
    stored = json.loads((saved / "bank_metadata.json").read_text())["semantic_prompts"]
    assert stored and all(item["source"] == "template" for item in stored)
    prompt_file = tmp_path / "prompts.json"
    prompt_file.write_text(json.dumps({"version": 1, "pairs": [
        {"classes": item["classes"], "commonality": f"both {item['classes'][0]}", "difference": "not alike"}
        for item in stored
    ]}))
    reset_accelerate()
    main(run_args + ["--method", "capt", "--num_train_epochs", "1", "--save_every_epochs", "0",
                     "--bank_path", str(saved), "--prompt_generator", "json", "--prompt_file", str(prompt_file),
                     "--output_dir", str(tmp_path / "again")])
    used = json.loads((tmp_path / "again" / "confusion_bank" / "bank_metadata.json").read_text())["semantic_prompts"]
    assert used and all(item["source"] == "json" and item["difference"] == "not alike" for item in used)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("script", ["evaluate", "bank"])
def test_scripts_name_a_missing_local_checkpoint_or_data_path(tmp_path, tiny_clip_dir, script):
    """evaluate_capt.py and build_confusion_bank.py name a mistyped local path instead of failing on a Hub lookup."""
    from dataset_scripts.build_confusion_bank import main as bank_main
    from trainers.evaluate_capt import main as evaluate_main

    missing = str(tmp_path / "no-such-model")
    if script == "evaluate":
        calls = [(["--checkpoint", missing, "--dataset_name", str(tmp_path)], "--checkpoint"),
                 (["--checkpoint", tiny_clip_dir, "--dataset_name", "./no-such-data"], "--dataset_name")]
    else:
        out = ["--output_dir", str(tmp_path / "bank")]
        calls = [(["--model", missing] + out, "--model"),
                 (["--model", tiny_clip_dir, "--dataset_name", "./no-such-data"] + out, "--dataset_name"),
                 (["--model", tiny_clip_dir, "--train_dir", missing, "--test_dir", missing] + out, "--train_dir")]
    for argv, flag in calls:
        with pytest.raises(FileNotFoundError, match=f"{flag}: no such file or folder"):
            (evaluate_main if script == "evaluate" else bank_main)(argv)


def test_bank_script_refuses_cuda_without_a_gpu(tmp_path, tiny_clip_dir):
    from dataset_scripts.build_confusion_bank import main as build_bank_main

    with pytest.raises(ValueError, match="--device cuda: torch sees no CUDA device"):
        build_bank_main(["--model", tiny_clip_dir, "--train_dir", str(tmp_path), "--device", "cuda",
                         "--output_dir", str(tmp_path / "bank")])
    assert not (tmp_path / "bank").exists()


def test_capt_end_to_end_on_the_embedded_default(tmp_path):
    """The main job on the shipped model and data (its defaults: 16 shots, 10 epochs; 400 test images): CAPT lifts
    the base classes over zero-shot CLIP, and metrics.json's accuracy, test correction and break rates are those of
    the saved model, recomputed here image by image against zero-shot CLIP."""
    import math

    from dataset_scripts.paths import EMBEDDED_DATA, EMBEDDED_MODEL

    summary = main(["--output_dir", str(tmp_path / "out"), "--max_eval_samples", "400", "--save_every_epochs", "0"])
    assert summary["method"] == "capt" and summary["model"].endswith("capt-tiny-fashion")
    zero_shot, capt = summary["zeroshot"], summary["capt"]
    assert sum(map(sum, zero_shot["confusion_matrix"])) + sum(map(sum, zero_shot["novel_confusion_matrix"])) == 400
    # the shipped zero-shot model is far above chance on its base classes (5 classes: chance is 20 %)
    assert zero_shot["base_accuracy"] > 40.0
    # training works: CAPT beats zero-shot CLIP on the base classes it trained on (README: about +8 points)
    assert capt["base_accuracy"] >= zero_shot["base_accuracy"] + 4.0, (zero_shot["base_accuracy"], capt)
    # the correction rate is a share of the bank's misclassified images (whole images), and most are corrected
    misclassified = capt["bank_misclassified"]
    assert 0 < misclassified < 80  # 16 shots x 5 base classes
    corrected = capt["correction_rate"] * misclassified / 100
    assert corrected == pytest.approx(round(corrected), abs=1e-3) and capt["correction_rate"] > 30.0
    assert capt["correction_rate_counts"] == [round(corrected), misclassified]  # printed as "64.71 % (11/17)"
    assert capt["test_correction_rate"] == pytest.approx(100 * capt["test_correction_rate_counts"][0]
                                                         / capt["test_correction_rate_counts"][1])
    assert capt["test_break_rate"] == pytest.approx(100 * capt["test_break_rate_counts"][0]
                                                    / capt["test_break_rate_counts"][1])
    assert capt["novel_top_confused_pairs"] and zero_shot["novel_top_confused_pairs"]
    assert os.path.exists(tmp_path / "out" / "confusion_heatmap.png")
    reloaded = CaptForImageClassification.from_pretrained(tmp_path / "out" / "model")
    base_names = ["t-shirt", "trouser", "pullover", "dress", "coat"]
    assert reloaded.config.class_names == base_names
    assert reloaded.adapted_layer_names and reloaded.mgde is not None

    # the same 400 test images (--max_eval_samples shuffles with seed 0), base classes only, predicted here
    test = datasets.load_dataset("parquet", data_files=os.path.join(EMBEDDED_DATA, "test.parquet"))["train"]
    test = test.shuffle(seed=0).select(range(400)).filter(lambda row: row["label"] < 5)
    labels = torch.tensor(test["label"])
    zero_shot_model = CaptForImageClassification.from_clip(EMBEDDED_MODEL, base_names)

    def predict(model):
        pixels = model.image_processor(images=[image.convert("RGB") for image in test["image"]], return_tensors="pt")
        with torch.no_grad():
            return model.eval()(pixel_values=pixels["pixel_values"]).logits.argmax(-1)

    before, after = predict(zero_shot_model), predict(reloaded)
    assert zero_shot["base_accuracy"] == pytest.approx(100.0 * (before == labels).float().mean().item())
    assert capt["base_accuracy"] == pytest.approx(100.0 * (after == labels).float().mean().item())
    wrong, right = before != labels, before == labels
    fixed, broken = (after[wrong] == labels[wrong]).sum().item(), (after[right] != labels[right]).sum().item()
    assert fixed > broken  # CAPT corrects more zero-shot errors than it makes new ones
    assert capt["test_correction_rate"] == pytest.approx(100.0 * fixed / wrong.sum().item())
    expected_break = 100.0 * broken / right.sum().item()
    assert capt["test_break_rate"] == pytest.approx(expected_break) and not math.isnan(expected_break)


def test_trainer_reads_coop_folders_and_the_parquet_benchmark_alike(tmp_path, tiny_clip_dir):
    from dataset_scripts.build_benchmark import build_benchmark
    from fixtures_coop import make_oxford_pets

    make_oxford_pets(str(tmp_path / "DATA"))
    build_benchmark("oxford_pets", str(tmp_path / "DATA"), str(tmp_path / "OUT"), show_progress=False)
    common = ["--model_name_or_path", tiny_clip_dir, "--method", "zeroshot", "--shots", "1", "--heatmap", "false"]
    from_folders = main(common + ["--dataset", "oxford_pets", "--data_dir", str(tmp_path / "DATA"),
                                  "--output_dir", str(tmp_path / "a")])
    reset_accelerate()
    from_parquet = main(common + ["--dataset_name", str(tmp_path / "OUT"), "--dataset_config_name", "oxford_pets",
                                  "--output_dir", str(tmp_path / "b")])
    assert from_folders["template"] == "a photo of a {}, a type of pet."
    for key in ("base_accuracy", "novel_accuracy", "confusion_matrix", "novel_confusion_matrix"):
        assert from_folders["zeroshot"][key] == from_parquet["zeroshot"][key]


def test_bank_script_takes_a_capt_checkpoint_of_the_same_classes(run_args, tmp_path, tiny_clip_dir, image_processor):
    from dataset_scripts.build_confusion_bank import main as build_bank_main

    data = tmp_path / "data"
    common = ["--device", "cpu", "--train_dir", str(data / "train"), "--test_dir", str(data / "test"), "--shots", "4"]
    for names, folder in ((CLASS_NAMES[:3], "capt-base"), (CLASS_NAMES[1:4], "capt-other")):
        model = CaptForImageClassification.from_clip(tiny_clip_dir, names, template="itap of a {}.")
        model.save_pretrained(tmp_path / folder)
        image_processor.save_pretrained(tmp_path / folder)
    bank = build_bank_main(["--model", str(tmp_path / "capt-base"), "--output_dir", str(tmp_path / "bank")] + common)
    assert bank.template == "itap of a {}." and bank.base_model == str(tmp_path / "capt-base")
    with pytest.raises(ValueError, match="classifies"):
        build_bank_main(["--model", str(tmp_path / "capt-other"), "--output_dir", str(tmp_path / "bank2")] + common)
    assert not (tmp_path / "bank2").exists()


def test_a_failed_final_save_keeps_the_previous_model_folder(run_args, tmp_path, monkeypatch):
    from trainers import train_capt

    main(run_args + ["--method", "zeroshot"])
    model_dir = tmp_path / "out" / "model"
    before = {name: (model_dir / name).read_bytes() for name in os.listdir(model_dir)}
    (model_dir / "stale.txt").write_text("from an earlier run")

    def failing_card(folder, *args, **kwargs):
        (tmp_path / "out" / "card-was-called").write_text(folder)
        raise OSError("disk full")

    reset_accelerate()
    monkeypatch.setattr(train_capt, "write_model_card", failing_card)
    with pytest.raises(OSError, match="disk full"):
        main(run_args + ["--method", "zeroshot"])
    assert {name: (model_dir / name).read_bytes() for name in os.listdir(model_dir) if name != "stale.txt"} == before
    assert not any(name.startswith(".") for name in os.listdir(tmp_path / "out"))  # no staging folder left
    monkeypatch.undo()
    reset_accelerate()
    main(run_args + ["--method", "zeroshot"])
    assert not (model_dir / "stale.txt").exists()  # a new model folder holds only the new run's files
