"""Uploads to the Hugging Face Hub through the real `huggingface_hub` client, and the model card they carry.

The card's metadata is built with `huggingface_hub.ModelCardData` (licence, base model, datasets, pipeline, the
run's results as `model-index`), so the Hub's own parser reads it. The Hub cannot be reached from the machines this
package is developed on, so the tests replace `HfApi` and check the folder and the arguments that would be sent,
then serve what was sent from a local Hub-compatible server and load it back over HTTP.
"""

from __future__ import annotations

import logging
import os

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCardData

from dataset_scripts.atomic_io import write_text_atomic
from dataset_scripts.cards import card_template, fill_card, hub_id
from dataset_scripts.paths import EMBEDDED_DIR
from trainers.methods import get_method


logger = logging.getLogger(__name__)


def push_folder_to_hub(folder: str, repo_id: str, private: bool | None = None, repo_type: str = "model",
                       commit_message: str | None = None, token: str | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` to it; returns the commit URL (or what the client returns).

    `private=None` leaves a new repo's visibility to the Hub (public unless the organisation defaults to private);
    `False` makes it public explicitly. An existing repo keeps its visibility."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Nothing to push: {folder} is not a folder")
    if not repo_id or repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type=repo_type, private=private, exist_ok=True)
    logger.info("uploading %s to %s (%s)", folder, repo_id, repo_type)
    return api.upload_folder(
        folder_path=folder,
        repo_id=repo_id,
        repo_type=repo_type,
        commit_message=commit_message or f"Upload {os.path.basename(os.path.normpath(folder))} with capt",
    )


CARD_TEMPLATE = "capt_model_card.md"  # in hub_cards/


def _results_table(summary: dict) -> str:
    rows = [name for name in dict.fromkeys(["zeroshot", summary["method"]]) if name in summary]
    novel = "novel_accuracy" in summary[rows[0]]
    lines = ["| model | base | novel | HM |", "|---|---|---|---|"] if novel else ["| model | accuracy |", "|---|---|"]
    for name in rows:
        entry = summary[name]
        if novel:
            lines.append(f"| {name} | {entry['base_accuracy']:.2f} | {entry['novel_accuracy']:.2f} | {entry['hm']:.2f} |")
        else:
            lines.append(f"| {name} | {entry['accuracy']:.2f} |")
    for key in ("correction_rate", "test_correction_rate", "test_break_rate"):
        value = summary.get(summary["method"], {}).get(key)
        if value is not None:
            lines.append(f"\n{key.replace('_', ' ')}: {value:.2f} %")
    return "\n".join(lines)


def _base_model_license(model: str) -> dict:
    """The card's `license` fields: the base model's own when it is a local folder whose card names one (the
    embedded default: MIT); otherwise `other`, pointing at the base model's page, since fine-tuned weights follow the
    base model's terms and its card cannot be read offline."""
    card = os.path.join(model, "README.md") if isinstance(model, str) else ""
    if not os.path.isfile(card):
        card = os.path.join(os.path.dirname(EMBEDDED_DIR), str(model), "README.md")
    if os.path.isfile(card):
        with open(card, encoding="utf-8") as handle:
            text = handle.read()
        if text.startswith("---"):
            license_ = (yaml.safe_load(text.split("---", 2)[1]) or {}).get("license")
            if license_:
                return {"license": license_}
    fields = {"license": "other", "license_name": "same-as-base-model"}
    if hub_id(model):
        fields["license_link"] = f"https://huggingface.co/{model}"
    return fields


METRIC_NAMES = {  # metrics.json key -> (model-index metric type, name shown on the Hub)
    "accuracy": ("accuracy", "accuracy"),
    "base_accuracy": ("accuracy", "base-class accuracy"),
    "novel_accuracy": ("accuracy", "novel-class accuracy"),
    "hm": ("harmonic_mean", "HM of base and novel accuracy"),
    "correction_rate": ("correction_rate", "bank correction rate"),
    "test_correction_rate": ("correction_rate", "test correction rate (vs zero-shot CLIP)"),
    "test_break_rate": ("break_rate", "test break rate (vs zero-shot CLIP)"),
}


def eval_results(summary: dict) -> list[EvalResult]:
    """The `model-index` entries for the trained model: every final metric of `metrics.json`, in %."""
    results = summary.get(summary["method"], {})
    dataset = summary["dataset"]
    dataset_type = hub_id(dataset) or os.path.basename(os.path.normpath(dataset))  # no local path in the metadata
    return [
        EvalResult(task_type="image-classification", task_name="Image classification", dataset_type=dataset_type,
                   dataset_name=f"{dataset_type} ({summary['shots']}-shot, seed {summary['seed']})",
                   dataset_split="test", metric_type=metric_type, metric_name=name,
                   metric_value=round(float(results[key]), 2))
        for key, (metric_type, name) in METRIC_NAMES.items() if results.get(key) is not None
    ]


def card_metadata(summary: dict, model_name: str, space_id: str | None = None) -> ModelCardData:
    """The card's YAML: library, pipeline and tags, licence, base model and dataset (Hub ids only), the widget kept
    for when the Hub runs it, `inference: false` (the hosted widget does not run custom code: the Space does), and
    the run's results as `model-index`."""
    method = summary["method"]
    tags = ["clip", "prompt-tuning", "capt", "zero-shot-image-classification"] + ([] if method == "capt" else [method])
    extra = {"inference": False, "widget": [{"src": WIDGET_IMAGE, "example_title": "Tiger"}]}
    if space_id:
        extra["spaces"] = [space_id]
    return ModelCardData(
        library_name="transformers", pipeline_tag="image-classification", tags=tags, metrics=["accuracy"],
        base_model=summary["model"] if hub_id(summary.get("model")) else None,
        datasets=[summary["dataset"]] if hub_id(summary.get("dataset")) else None,
        model_name=model_name, eval_results=eval_results(summary) or None,
        **_base_model_license(summary.get("model")), **extra,
    )


WIDGET_IMAGE = "https://huggingface.co/datasets/mishig/sample_images/resolve/main/tiger.jpg"


def _demo_line(space_id: str | None) -> str:
    if space_id:
        return (f"Try it in the Space [{space_id}](https://huggingface.co/spaces/{space_id}) (the hosted inference "
                "widget does not run custom code, so it is off).")
    return ("The hosted inference widget does not run custom code, so it is off: this repository's `app.py` is a "
            "Gradio demo (`pip install gradio && python app.py`, or duplicate it into a Space) and `handler.py` an "
            "Inference Endpoints handler, when written by `capt-write-space` or `--push_to_hub`.")


def write_model_card(folder: str, summary: dict, class_names, repo_id: str | None = None,
                     space_id: str | None = None) -> str | None:
    """Fill `hub_cards/capt_model_card.md` with a run's summary and write it as `folder/README.md`; `space_id` is
    the Space that demos the model (linked from the card)."""
    template = card_template(CARD_TEMPLATE)
    if not template.is_file():
        logger.warning("No model card template at %s: README.md not written", template)
        return None
    method = summary["method"]
    method_class = get_method(method)
    trained = method_class.trained_parts(folder)
    names = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")
    text = fill_card(
        CARD_TEMPLATE,
        method=method, method_title=method_class.title,
        base_model=summary["model"], dataset=summary["dataset"], model_name=repo_id or f"capt-{method}",
        repo_id=repo_id or "path/to/this/folder", shots=summary["shots"], seed=summary["seed"],
        subsample_classes=summary["subsample_classes"], template=summary["template"], num_classes=len(class_names),
        class_names=names, results_table=_results_table(summary), trained_parts=trained,
        front_matter=card_metadata(summary, repo_id or f"capt-{method}", space_id).to_yaml() + "\n",
        demo=_demo_line(space_id),
    )
    path = os.path.join(folder, "README.md")
    write_text_atomic(path, text)
    return path
