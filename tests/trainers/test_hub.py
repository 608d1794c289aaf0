"""The model card's YAML metadata (the Hub refuses an upload whose card names a local path as base model or dataset),
and what `push_folder_to_hub` would send to the Hub."""

from __future__ import annotations

import pytest
import yaml

from dataset_scripts.paths import EMBEDDED_MODEL
from trainers.hub import write_model_card

from conftest import RecordingHub


def _summary(model: str, dataset: str) -> dict:
    return {
        "method": "coop", "model": model, "dataset": dataset, "shots": 16, "seed": 1, "subsample_classes": "base",
        "template": "a photo of a {}.", "zeroshot": {"accuracy": 50.0}, "coop": {"accuracy": 60.0},
    }


def _metadata(folder, summary) -> dict:
    text = open(write_model_card(str(folder), summary, ["a", "b"]), encoding="utf-8").read()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_local_paths_stay_out_of_the_card_metadata(tmp_path):
    local_data = tmp_path / "data" / "train"
    local_data.mkdir(parents=True)
    metadata = _metadata(tmp_path, _summary(EMBEDDED_MODEL, str(local_data)))
    assert "base_model" not in metadata and "datasets" not in metadata
    assert metadata["library_name"] == "transformers" and "coop" in metadata["tags"]
    text = (tmp_path / "README.md").read_text()
    assert EMBEDDED_MODEL in text  # the body still says what the model was built from


def test_relative_local_folder_and_coop_benchmark_name_are_not_hub_datasets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "embedded" / "fashion-subset").mkdir(parents=True)
    assert "datasets" not in _metadata(tmp_path, _summary("openai/clip-vit-base-patch16", "embedded/fashion-subset"))
    assert "datasets" not in _metadata(tmp_path, _summary("openai/clip-vit-base-patch16", "oxford_pets"))


def test_the_embedded_default_is_not_a_hub_dataset_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where `embedded/fashion-subset` does not exist, but reads like a Hub id
    assert "datasets" not in _metadata(tmp_path, _summary("openai/clip-vit-base-patch16", "embedded/fashion-subset"))


def test_hub_ids_are_kept_and_quoted(tmp_path):
    metadata = _metadata(tmp_path, _summary("openai/clip-vit-base-patch16", "tanganke/dtd"))
    assert metadata["base_model"] == "openai/clip-vit-base-patch16"
    assert metadata["datasets"] == ["tanganke/dtd"]
    metadata = _metadata(tmp_path, _summary("openai/clip-vit-base-patch16", "C:/data: x"))
    assert "datasets" not in metadata  # not a Hub id, and no YAML mapping smuggled into the metadata


def test_capt_card_tags_once_and_says_what_was_trained(tmp_path):
    """The card's tags held `capt` twice for a CAPT run, and its text named the MGDE layer for a --no_use_mgde run."""
    import json

    summary = dict(_summary("openai/clip-vit-base-patch16", "tanganke/dtd"), method="capt", capt={"accuracy": 70.0})
    (tmp_path / "config.json").write_text(json.dumps({"adapter_config": {"adapter_branches": "both", "use_mgde": True}}))
    metadata = _metadata(tmp_path, summary)
    assert metadata["tags"] == ["clip", "prompt-tuning", "capt", "zero-shot-image-classification"]
    assert "The Diff-Manner adapters and the MGDE layer are trained" in (tmp_path / "README.md").read_text()
    (tmp_path / "config.json").write_text(json.dumps({"adapter_config": {"adapter_branches": "global",
                                                                         "use_mgde": False}}))
    _metadata(tmp_path, summary)
    text = (tmp_path / "README.md").read_text()
    assert "The Diff-Manner adapters (global branch only) (no MGDE layer) are trained" in text
    assert _metadata(tmp_path, _summary("openai/clip-vit-base-patch16", "tanganke/dtd"))["tags"] == [
        "clip", "prompt-tuning", "capt", "zero-shot-image-classification", "coop"]


def test_push_folder_to_hub_creates_the_repo_then_uploads_only_that_folder(tmp_path, monkeypatch):
    from trainers.hub import push_folder_to_hub

    hub = RecordingHub(monkeypatch)
    folder = tmp_path / "out" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (tmp_path / "out" / "metrics.json").write_text("{}")  # beside the folder: not uploaded
    assert push_folder_to_hub(str(folder), "org/capt-x", private=True, token="hf_t",
                              commit_message="first") == "upload_folder-result"
    create, upload = hub.calls
    assert create == {"method": "create_repo", "token": "hf_t", "repo_id": "org/capt-x", "repo_type": "model",
                      "private": True, "exist_ok": True}
    assert upload["method"] == "upload_folder" and upload["token"] == "hf_t"
    assert upload["repo_id"] == "org/capt-x" and upload["repo_type"] == "model"
    assert upload["folder_path"] == str(folder) and upload["files"] == ["config.json"]
    assert upload["commit_message"] == "first"

    hub.calls.clear()
    push_folder_to_hub(str(folder) + "/", "org/capt-x")
    create, upload = hub.calls
    assert create["private"] is None  # not asked for: the Hub's default (an organisation may default to private)
    assert upload["commit_message"] == "Upload model with capt"


@pytest.mark.parametrize("repo_id", ["capt-x", "", "a/b/c"])
def test_push_folder_to_hub_refuses_a_bad_repo_id_or_folder_before_any_call(tmp_path, monkeypatch, repo_id):
    from trainers.hub import push_folder_to_hub

    hub = RecordingHub(monkeypatch)
    with pytest.raises(ValueError, match="org/name"):
        push_folder_to_hub(str(tmp_path), repo_id)
    with pytest.raises(FileNotFoundError, match="Nothing to push"):
        push_folder_to_hub(str(tmp_path / "missing"), "org/capt-x")
    assert hub.calls == []


def _capt_summary(model: str, dataset: str) -> dict:
    return {
        "method": "capt", "model": model, "dataset": dataset, "shots": 16, "seed": 1, "subsample_classes": "base",
        "template": "a photo of a {}.", "zeroshot": {"base_accuracy": 76.0, "novel_accuracy": 82.4, "hm": 79.07},
        "capt": {"base_accuracy": 84.0, "novel_accuracy": 85.0, "hm": 84.5, "correction_rate": 64.71,
                 "test_correction_rate": 47.5, "test_break_rate": 4.47},
    }


def test_the_model_card_validates_with_huggingface_hub_and_carries_the_results(tmp_path):
    """huggingface_hub's own parser reads the card back: licence, base model, datasets, pipeline, inference off with
    the Space linked, and every final metric of metrics.json as model-index eval results."""
    from huggingface_hub import ModelCard

    path = write_model_card(str(tmp_path), _capt_summary("openai/clip-vit-base-patch16", "tanganke/dtd"), ["a", "b"],
                            repo_id="org/capt-x", space_id="org/capt-x-demo")
    card = ModelCard.load(path, ignore_metadata_errors=False)
    data = card.data
    assert data.license == "other" and data.license_link == "https://huggingface.co/openai/clip-vit-base-patch16"
    assert data.base_model == "openai/clip-vit-base-patch16" and data.datasets == ["tanganke/dtd"]
    assert data.pipeline_tag == "image-classification" and "zero-shot-image-classification" in data.tags
    assert data.inference is False and data.spaces == ["org/capt-x-demo"]
    assert "https://huggingface.co/spaces/org/capt-x-demo" in card.text
    assert data.model_name == "org/capt-x"
    results = {result.metric_name: result for result in data.eval_results}
    assert {name: result.metric_value for name, result in results.items()} == {
        "base-class accuracy": 84.0, "novel-class accuracy": 85.0, "HM of base and novel accuracy": 84.5,
        "bank correction rate": 64.71, "test correction rate (vs zero-shot CLIP)": 47.5,
        "test break rate (vs zero-shot CLIP)": 4.47,
    }
    assert all(r.task_type == "image-classification" and r.dataset_type == "tanganke/dtd" and r.dataset_split == "test"
               for r in data.eval_results)
    # the card survives huggingface_hub's own round trip (what push_to_hub would upload)
    assert ModelCard(str(card)).data.to_dict() == data.to_dict()


def test_the_model_card_of_a_local_run_names_no_path_and_takes_the_base_models_licence(tmp_path):
    from huggingface_hub import ModelCard

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    card = ModelCard.load(write_model_card(str(tmp_path), _capt_summary(EMBEDDED_MODEL, str(data_dir)), ["a", "b"]))
    assert card.data.license == "mit"  # the embedded default's card says MIT
    assert card.data.base_model is None and card.data.datasets is None
    assert {r.dataset_type for r in card.data.eval_results} == {"data"}  # the folder's name, not its path
    assert str(tmp_path) not in str(card.data.to_dict())
    assert "app.py" in card.text  # no Space given: how to run the demo this repository carries


@pytest.mark.slow
def test_the_pushed_checkpoint_loads_over_http_from_a_hub_server(local_hub, monkeypatch, tmp_path, tiny_clip_dir):
    """The trainer's --push_to_hub folder, committed to a local Hub (olah), loads with AutoModel and the pipelines
    through HF_ENDPOINT in a clean process, with remote code, and classifies as the local folder does."""
    import json
    import os

    from local_hub import run_with_endpoint, serve_uploads
    from trainers.train_capt import main

    from conftest import small_run_args

    calls = serve_uploads(monkeypatch, local_hub)
    out = tmp_path / "out"
    main(small_run_args(tmp_path, tiny_clip_dir) + ["--method", "capt", "--output_dir", str(out),
                                                    "--save_every_epochs", "0", "--heatmap", "true", "--push_to_hub",
                                                    "--hub_model_id", "org/capt-pushed"])
    upload = calls[-1]
    assert upload["files"] == sorted(os.listdir(out / "model"))  # the pushed folder is what the Hub serves
    assert {"app.py", "handler.py", "requirements.txt", "confusion_heatmap.png"} <= set(upload["files"])
    code = f"""
import json
from PIL import Image
from transformers import AutoModel, pipeline

model = AutoModel.from_pretrained("org/capt-pushed", trust_remote_code=True)
image = Image.new("RGB", (32, 32), (200, 30, 30))
remote = pipeline("image-classification", model="org/capt-pushed", trust_remote_code=True)(image)
local = pipeline("image-classification", model={str(out / "model")!r}, trust_remote_code=True)(image)
zero_shot = pipeline("zero-shot-image-classification", model="org/capt-pushed", trust_remote_code=True)(
    image, candidate_labels=["red", "blue"])
print(json.dumps({{"class": type(model).__name__, "module": type(model).__module__, "remote": remote,
                  "local": local, "zero_shot": zero_shot}}))
"""
    found = json.loads(run_with_endpoint(local_hub, code, tmp_path / "hf_home").strip().splitlines()[-1])
    assert found["class"] == "CaptModel" and found["module"].startswith("transformers_modules.org.")
    assert found["remote"] == found["local"]
    assert sorted(row["label"] for row in found["zero_shot"]) == ["blue", "red"]
    assert (tmp_path / "hf_home" / "hub" / "models--org--capt-pushed").is_dir()  # downloaded, not read locally
