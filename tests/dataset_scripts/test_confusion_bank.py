"""Saving a Confusion Bank as a Parquet dataset, loading it back (locally and from the Hub), and publishing it."""

import json
import os
import stat

import datasets
import pytest
import torch

from dataset_scripts import confusion_bank as bank_io
from dataset_scripts.bank import CaptConfusionBank


CLASS_NAMES = ["annual crop", "forest", "river", "sea lake"]
TEMPLATE = "a centered satellite photo of {}."
PROMPTS = [{"pair": [0, 1], "commonality": "Both are green fields.", "difference": "Forests have canopies."}]


@pytest.fixture
def bank():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(24) % 4
    logits = torch.randn(24, 4, generator=generator)
    logits[torch.arange(24), labels] += 1.0
    return CaptConfusionBank.from_tensors(
        torch.randperm(24, generator=generator) * 5,
        labels,
        logits.softmax(-1),
        torch.randn(24, 8, generator=generator),
        CLASS_NAMES,
        template=TEMPLATE,
        base_model="openai/clip-vit-base-patch16 (zero-shot)",
    )


def assert_same_bank(loaded, bank):
    for name in ("indices", "labels", "probs", "preds", "embeds", "confusion_matrix"):
        assert torch.equal(getattr(loaded, name), getattr(bank, name)), name
    assert loaded.class_names == bank.class_names
    assert (loaded.template, loaded.base_model, loaded.fallback) == (bank.template, bank.base_model, bank.fallback)


def test_bank_to_dataset(bank):
    dataset = bank_io.bank_to_dataset(bank)
    assert len(dataset) == 24
    assert dataset.features["label"].names == CLASS_NAMES
    assert dataset.features["pred"].names == CLASS_NAMES
    row = dataset[3]
    assert row["index"] == int(bank.indices[3]) and row["label"] == int(bank.labels[3])
    assert torch.equal(torch.tensor(row["probs"]), bank.probs[3])
    assert torch.equal(torch.tensor(row["embed"]), bank.embeds[3])


def test_round_trip_through_parquet(bank, tmp_path):
    folder = bank_io.save_bank(bank, tmp_path / "bank", semantic_prompts=PROMPTS)
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    assert files == ["README.md", "bank_metadata.json", "data/train-00000-of-00001.parquet"]
    metadata = json.loads((folder / "bank_metadata.json").read_text())
    assert metadata["class_names"] == CLASS_NAMES and metadata["semantic_prompts"] == PROMPTS
    card = (folder / "README.md").read_text()
    assert "configs:" in card and "data/train-*" in card and "openai/clip-vit-base-patch16" in card
    assert f"Misclassified by the base model: {bank.num_misclassified}" in card

    loaded = bank_io.load_bank(folder, class_names=CLASS_NAMES, template=TEMPLATE)
    assert_same_bank(loaded, bank)
    assert loaded.semantic_prompts == PROMPTS


def test_round_trip_keeps_the_training_set_fingerprint(bank, tmp_path):
    """The fingerprint of the training set goes to bank_metadata.json and the card, and back (also through a
    state dict); a bank saved without one (an older version) loads with none."""
    fingerprint = "capt-rows-sha256-v1:" + "ab" * 32
    bank.data_fingerprint = fingerprint
    folder = bank_io.save_bank(bank, tmp_path / "bank")
    assert json.loads((folder / "bank_metadata.json").read_text())["data_fingerprint"] == fingerprint
    assert f"Training-set fingerprint: `{fingerprint}`" in (folder / "README.md").read_text()
    assert bank_io.load_bank(folder).data_fingerprint == fingerprint
    restored = CaptConfusionBank()
    restored.load_state_dict(bank.state_dict())
    assert restored.data_fingerprint == fingerprint

    metadata = json.loads((folder / "bank_metadata.json").read_text())
    del metadata["data_fingerprint"]
    (folder / "bank_metadata.json").write_text(json.dumps(metadata))
    assert bank_io.load_bank(folder).data_fingerprint is None
    metadata["data_fingerprint"] = 7
    (folder / "bank_metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="data_fingerprint must be a string"):
        bank_io.load_bank(folder)


def test_round_trip_keeps_the_pool_fallback(tmp_path):
    """A bank saved with `fallback="none"` loads with it (its candidate pools stay those of the saved bank)."""
    labels, preds = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 1, 1])  # class 1 has no misclassified sample
    bank = CaptConfusionBank.from_tensors(torch.arange(4), labels, torch.nn.functional.one_hot(preds, 2).float(),
                                          torch.eye(4), ["a", "b"], fallback="none")
    assert bank.pool_rows(1).tolist() == []
    loaded = bank_io.load_bank(bank_io.save_bank(bank, tmp_path / "bank"))
    assert_same_bank(loaded, bank)
    assert loaded.pool_rows(0).tolist() == [0] and loaded.pool_rows(1).tolist() == []


def test_saved_bank_reads_as_a_plain_dataset(bank, tmp_path):
    folder = bank_io.save_bank(bank, tmp_path / "bank")
    dataset = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert dataset.features["label"].names == CLASS_NAMES
    assert dataset["index"] == bank.indices.tolist()


def test_card_split_metadata_is_well_formed(bank, tmp_path, caplog):
    folder = bank_io.save_bank(bank, tmp_path / "bank")
    with caplog.at_level("WARNING"):
        loaded = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    assert "malformed" not in caplog.text
    assert loaded["train"].info.splits["train"].num_examples == len(bank)


def test_load_checks_compatibility(bank, tmp_path):
    folder = bank_io.save_bank(bank, tmp_path / "bank")
    with pytest.raises(ValueError, match="class 2 is 'river' in the bank but 'lake' here"):
        bank_io.load_bank(folder, class_names=["annual crop", "forest", "lake", "sea lake"])
    with pytest.raises(ValueError, match="template"):
        bank_io.load_bank(folder, template="a photo of a {}.")


@pytest.mark.parametrize("content", ["{bad", "[]", '{"class_names": ["a"]}'])
def test_damaged_metadata_is_a_clear_error(bank, tmp_path, content):
    folder = bank_io.save_bank(bank, tmp_path / "bank")
    (folder / bank_io.METADATA_FILE).write_text(content)
    with pytest.raises(ValueError, match="bank_metadata.json.*damaged"):
        bank_io.load_bank(folder)


def test_edited_bank_rows_fail_the_content_hash(bank, tmp_path):
    """A bank's rows are checked against the content hash recorded in its metadata (a NaN written into the table, or
    any other change, is refused on load)."""
    import pyarrow.parquet as pq

    folder = bank_io.save_bank(bank, tmp_path / "bank")
    metadata = json.loads((folder / bank_io.METADATA_FILE).read_text())
    assert len(metadata["content_sha256"]) == 64
    data_file = folder / bank_io.DATA_FILE
    rows = pq.read_table(data_file).to_pylist()
    rows[3]["embed"][0] = float("nan")
    dataset = datasets.Dataset.from_list(rows, features=bank_io.bank_features(CLASS_NAMES, 4, bank.embed_dim))
    dataset.to_parquet(str(data_file))
    with pytest.raises(ValueError, match="content_sha256.*damaged"):
        bank_io.load_bank(folder)
    del metadata["content_sha256"]  # a bank saved before hashes: the finiteness check still catches the NaN
    (folder / bank_io.METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="embeds holds non-finite"):
        bank_io.load_bank(folder)


def test_saved_bank_folder_has_the_usual_permissions(bank, tmp_path):
    umask = os.umask(0o022)
    try:
        folder = bank_io.save_bank(bank, tmp_path / "bank")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755  # not mkdtemp's 0700
    assert stat.S_IMODE(os.stat(folder / bank_io.METADATA_FILE).st_mode) == 0o644


def test_save_replaces_a_bank_and_refuses_other_folders(bank, tmp_path):
    folder = bank_io.save_bank(bank, tmp_path / "bank")
    bank.base_model = "round 2"
    bank_io.save_bank(bank, folder)
    assert bank_io.load_bank(folder).base_model == "round 2"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bank"]  # no temporary folder left behind

    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds no Confusion Bank"):
        bank_io.save_bank(bank, other)
    assert (other / "todo.txt").read_text() == "keep me"


def test_load_from_hub_goes_through_snapshot_download(bank, tmp_path, monkeypatch):
    folder = bank_io.save_bank(bank, tmp_path / "bank")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(folder)

    monkeypatch.setattr(bank_io, "snapshot_download", fake_snapshot_download)
    loaded = bank_io.load_bank("someone/capt-bank-eurosat", class_names=CLASS_NAMES, revision="v1")
    assert_same_bank(loaded, bank)
    (repo_id, kwargs), = calls
    assert repo_id == "someone/capt-bank-eurosat"
    assert kwargs["repo_type"] == "dataset" and kwargs["revision"] == "v1"


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(bank, tmp_path, monkeypatch):
    folder = bank_io.save_bank(bank, tmp_path / "bank")
    calls = []

    class FakeHfApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return "commit-info"

    monkeypatch.setattr(bank_io, "HfApi", FakeHfApi)
    assert bank_io.push_bank_to_hub(folder, "me/capt-bank", private=True, token="hf_x") == "commit-info"
    assert calls[0] == ("init", "hf_x")
    assert calls[1] == ("create_repo", "me/capt-bank", {"repo_type": "dataset", "private": True, "exist_ok": True})
    upload = calls[2][1]
    assert upload["repo_id"] == "me/capt-bank" and upload["repo_type"] == "dataset"
    assert upload["folder_path"] == str(folder)

    with pytest.raises(FileNotFoundError, match="save_bank"):
        bank_io.push_bank_to_hub(tmp_path, "me/capt-bank")


def test_push_to_hub_sends_the_saved_bank_files_through_the_real_client(bank, tmp_path, monkeypatch):
    from conftest import RecordingHub

    folder = bank_io.save_bank(bank, tmp_path / "bank")
    hub = RecordingHub(monkeypatch)
    assert bank_io.push_bank_to_hub(folder, "me/capt-bank") == "upload_folder-result"
    create, upload = hub.calls
    assert create["repo_id"] == "me/capt-bank" and create["repo_type"] == "dataset" and create["exist_ok"]
    assert create["private"] is None  # not asked for: the Hub's default (an organisation may default to private)
    assert upload["repo_type"] == "dataset" and upload["commit_message"] == "Upload CAPT Confusion Bank"
    assert upload["folder_path"] == str(folder)
    assert upload["files"] == sorted(["README.md", bank_io.METADATA_FILE, bank_io.DATA_FILE])


def test_the_bank_card_validates_with_huggingface_hub(bank, tmp_path):
    """huggingface_hub's DatasetCard reads the card: licence, task, size, pretty name; the base model linked when it
    is a Hub id."""
    from huggingface_hub import DatasetCard

    folder = bank_io.save_bank(bank, tmp_path / "bank")
    card = DatasetCard.load(folder / "README.md", ignore_metadata_errors=False)
    data = card.data
    assert data.license == "other" and data.license_name
    assert data.task_categories == ["image-classification"] and data.size_categories == ["n<1K"]
    assert data.pretty_name == "CAPT Confusion Bank of clip-vit-base-patch16 (zero-shot)"
    assert data.configs[0]["config_name"] == "default"
    assert "`openai/clip-vit-base-patch16 (zero-shot)`" in card.text  # not a Hub id: named, not linked

    bank.base_model = "openai/clip-vit-base-patch16"
    card = DatasetCard.load(bank_io.save_bank(bank, tmp_path / "bank") / "README.md")
    assert "[openai/clip-vit-base-patch16](https://huggingface.co/openai/clip-vit-base-patch16)" in card.text


@pytest.mark.slow
def test_the_pushed_bank_loads_over_http_from_a_hub_server(bank, local_hub, tmp_path, monkeypatch):
    """push_bank_to_hub's folder, committed to a local Hub (olah), reads back over HF_ENDPOINT both as a plain
    dataset (`datasets.load_dataset`) and as a bank (`load_bank`, through snapshot_download)."""
    from local_hub import run_with_endpoint, serve_uploads

    calls = serve_uploads(monkeypatch, local_hub)
    folder = bank_io.save_bank(bank, tmp_path / "bank")
    bank_io.push_bank_to_hub(folder, "org/capt-bank")
    assert calls[-1]["files"] == sorted(["README.md", bank_io.METADATA_FILE, bank_io.DATA_FILE])
    code = """
import json
import datasets
from dataset_scripts.confusion_bank import load_bank

plain = datasets.load_dataset("org/capt-bank", split="train")
bank = load_bank("org/capt-bank", class_names=%r)
print(json.dumps({"rows": plain.num_rows, "label_names": plain.features["label"].names, "labels": list(plain["label"]),
                  "bank_labels": bank.labels.tolist(), "template": bank.template}))
""" % (CLASS_NAMES,)
    found = json.loads(run_with_endpoint(local_hub, code, tmp_path / "hf_home").strip().splitlines()[-1])
    assert found["rows"] == len(bank) and found["label_names"] == CLASS_NAMES
    assert found["labels"] == found["bank_labels"] == bank.labels.tolist()
    assert found["template"] == TEMPLATE
    assert (tmp_path / "hf_home" / "hub" / "datasets--org--capt-bank").is_dir()
