"""Uploads to the Hugging Face Hub through the real `huggingface_hub` client.

The Hub cannot be reached from the machines this package is developed on, so the tests replace `HfApi` and check
the folder and the arguments that would be sent.
"""

from __future__ import annotations

import logging
import os

import yaml
from huggingface_hub import HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id

from dataset_scripts.atomic_io import write_text_atomic
from dataset_scripts.cards import card_template, fill_card
from dataset_scripts.coop_datasets import list_datasets
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


def _hub_id(value) -> str | None:
    """`value` when it can name a Hub repository; None for local paths, CoOp benchmark names and other text.

    The Hub validates a card's `base_model` and `datasets` and refuses the whole upload (HTTP 400) when they hold a
    local path, so only Hub ids go into the card's metadata (the body still names whatever was used).
    """
    if not isinstance(value, str) or not value or value in list_datasets():
        return None
    # a local path, from here or inside this package (the embedded default's `embedded/...`, from any folder)
    if os.path.exists(value) or os.path.exists(os.path.join(os.path.dirname(EMBEDDED_DIR), value)):
        return None
    try:
        validate_repo_id(value)
    except HFValidationError:
        return None
    return value


def _hub_references(summary: dict) -> str:
    """The `base_model:` / `datasets:` lines of the card's YAML metadata (Hub ids only, YAML-quoted as needed)."""
    references = {}
    if _hub_id(summary.get("model")):
        references["base_model"] = summary["model"]
    if _hub_id(summary.get("dataset")):
        references["datasets"] = [summary["dataset"]]
    return yaml.safe_dump(references, sort_keys=False, allow_unicode=True) if references else ""


def write_model_card(folder: str, summary: dict, class_names, repo_id: str | None = None) -> str | None:
    """Fill `hub_cards/capt_model_card.md` with a run's summary and write it as `folder/README.md`."""
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
        hub_references=_hub_references(summary), method_tag="" if method == "capt" else f"- {method}\n",
    )
    path = os.path.join(folder, "README.md")
    write_text_atomic(path, text)
    return path
