"""Save, load and publish CAPT Confusion Banks as Hugging Face datasets (Parquet + dataset card).

A saved bank is a folder (or a Hub dataset repository) laid out as

```
README.md                               dataset card: YAML `configs:` + features, and the bank's metadata
bank_metadata.json                      content_sha256 (of the rows), class_names, template, base_model, fallback,
                                        data_fingerprint, semantic_prompts (data)
data/train-00000-of-00001.parquet       one row per training sample: index, label, pred, probs, embed
```

so `datasets.load_dataset(folder_or_repo)` reads it like any dataset, and `load_bank` turns it back into a
`CaptConfusionBank`. Nothing is pickled: tensors go through Parquet, metadata through JSON.

```python
>>> from dataset_scripts.confusion_bank import load_bank, push_bank_to_hub, save_bank
>>> save_bank(bank, "outputs/bank-eurosat")
>>> bank = load_bank("outputs/bank-eurosat", class_names=class_names, template=template)
>>> push_bank_to_hub("outputs/bank-eurosat", "me/capt-bank-eurosat")
```
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.parquet as pq
import torch
import yaml
from datasets import ClassLabel, Features, List, Value
from huggingface_hub import HfApi, snapshot_download

from dataset_scripts.atomic_io import write_directory_atomic
from dataset_scripts.bank import CaptConfusionBank, check_bank_matches_training_set, top_confused_pairs
from dataset_scripts.cards import fill_card, hub_link, size_category


DATA_FILE = "data/train-00000-of-00001.parquet"
METADATA_FILE = "bank_metadata.json"
CARD_FILE = "README.md"

logger = logging.getLogger(__name__)


def bank_features(class_names: list[str], num_classes: int, embed_dim: int) -> Features:
    """The `datasets.Features` of a bank with these classes and embedding size."""
    return Features(
        {
            "index": Value("int64"),
            "label": ClassLabel(names=list(class_names)),
            "pred": ClassLabel(names=list(class_names)),
            "probs": List(Value("float32"), length=num_classes),
            "embed": List(Value("float32"), length=embed_dim),
        }
    )


def bank_to_dataset(bank: CaptConfusionBank) -> datasets.Dataset:
    r"""One row per bank sample, with the class names as `ClassLabel` features.

    Args:
        bank (`CaptConfusionBank`):
            The bank.

    Returns:
        `datasets.Dataset` with columns `index` (int64), `label` and `pred` (`ClassLabel`), `probs`
        (`K` float32) and `embed` (`P` float32), in the bank's row order.
    """
    features = bank_features(bank.class_names, bank.num_classes, bank.embed_dim)
    columns = {
        "index": bank.indices.cpu().numpy(),
        "label": bank.labels.cpu().numpy(),
        "pred": bank.preds.cpu().numpy(),
        "probs": bank.probs.cpu().float().numpy(),
        "embed": bank.embeds.cpu().float().numpy(),
    }
    return datasets.Dataset.from_dict(columns, features=features)


def content_sha256(indices: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, embeds: torch.Tensor) -> str:
    """SHA-256 of a bank's rows as stored (int64 indices and labels, float32 probabilities and embeddings, little-endian,
    in row order): recorded in `bank_metadata.json` and checked on load, so a damaged or edited table is refused."""
    digest = hashlib.sha256()
    for tensor, dtype in ((indices, "<i8"), (labels, "<i8"), (probs, "<f4"), (embeds, "<f4")):
        array = tensor.detach().cpu().numpy().astype(dtype, copy=False)
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _metadata(bank: CaptConfusionBank, semantic_prompts: Any) -> dict[str, Any]:
    return {
        "content_sha256": content_sha256(bank.indices, bank.labels, bank.probs.float(), bank.embeds.float()),
        "class_names": list(bank.class_names),
        "template": bank.template,
        "base_model": bank.base_model,
        "fallback": bank.fallback,
        "num_samples": len(bank),
        "num_misclassified": bank.num_misclassified,
        "embed_dim": bank.embed_dim,
        "data_fingerprint": bank.data_fingerprint,
        "semantic_prompts": semantic_prompts,
    }


def _dataset_card(bank: CaptConfusionBank, metadata: dict[str, Any], num_bytes: int) -> str:
    class_label = {"class_label": {"names": {str(i): name for i, name in enumerate(bank.class_names)}}}
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        "dataset_info": {
            "features": [
                {"name": "index", "dtype": "int64"},
                {"name": "label", "dtype": class_label},
                {"name": "pred", "dtype": class_label},
                {"name": "probs", "list": "float32", "length": bank.num_classes},
                {"name": "embed", "list": "float32", "length": bank.embed_dim},
            ],
            "splits": [{"name": "train", "num_bytes": num_bytes, "num_examples": len(bank)}],
        },
        "tags": ["capt", "confusion-bank", "clip"],
        # what a base model made of a training set: the training data's and the base model's terms both apply
        "license": "other",
        "license_name": "training-data-and-base-model-terms",
        "pretty_name": f"CAPT Confusion Bank of {os.path.basename(os.path.normpath(bank.base_model or 'a CLIP'))}",
        "task_categories": ["image-classification"],
        "size_categories": [size_category(len(bank))],
    }
    pairs = top_confused_pairs(bank.confusion_matrix, bank.class_names, k=10)
    return fill_card(
        "confusion_bank_card.md",
        front_matter=yaml.safe_dump(header, sort_keys=False, allow_unicode=True),
        base_model=hub_link(bank.base_model) if bank.base_model else "unspecified",
        template=bank.template,
        num_classes=bank.num_classes,
        class_names=", ".join(bank.class_names),
        num_samples=len(bank),
        data_fingerprint=bank.data_fingerprint or "not recorded",
        num_misclassified=bank.num_misclassified,
        misclassified_share=bank.num_misclassified / max(len(bank), 1),
        semantic_prompts_stored="yes" if metadata["semantic_prompts"] is not None else "no",
        pair_rows="\n".join(f"| {true} | {pred} | {count} |" for true, pred, count in pairs) or "| - | - | 0 |",
    )


def check_bank_output_dir(output_dir: str | os.PathLike) -> None:
    """Raise a `ValueError` if `output_dir` is a non-empty folder that is not a saved bank: [`save_bank`] replaces
    the folder as a whole, so it never takes the place of other files. Call it early to refuse before any work."""
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / METADATA_FILE).is_file():
        raise ValueError(f"{output_dir} is a non-empty folder that holds no Confusion Bank; refusing to replace it")


def save_bank(bank: CaptConfusionBank, output_dir: str | os.PathLike, semantic_prompts: Any = None) -> Path:
    r"""Write a bank as a Parquet dataset with its card and metadata, atomically.

    Everything is written to a temporary folder beside `output_dir`, which then takes the place of `output_dir`
    by `os.replace`; a previous bank there is swapped out and removed, so readers see the old bank or the new one,
    never a half-written folder. `output_dir` is replaced as a whole: a non-empty folder that is not a saved bank
    is refused.

    Args:
        bank (`CaptConfusionBank`):
            The bank.
        output_dir (`str` or `os.PathLike`):
            Folder of the saved bank.
        semantic_prompts (*optional*):
            JSON-serialisable semantic prompts to store with the bank; defaults to `bank.semantic_prompts`.

    Returns:
        `Path` of `output_dir`.
    """
    output_dir = Path(output_dir)
    check_bank_output_dir(output_dir)
    if semantic_prompts is None:
        semantic_prompts = bank.semantic_prompts
    metadata = _metadata(bank, semantic_prompts)
    try:
        metadata_text = json.dumps(metadata, indent=2, ensure_ascii=False)
    except TypeError as err:
        raise TypeError(f"semantic_prompts must be JSON-serialisable data: {err}") from None

    def write(folder):
        staged = Path(folder)
        (staged / "data").mkdir()
        # The table carries the features (ClassLabel names included) in its schema metadata.
        table = bank_to_dataset(bank).data.table
        pq.write_table(table, staged / DATA_FILE)
        (staged / METADATA_FILE).write_text(metadata_text + "\n", encoding="utf-8")
        (staged / CARD_FILE).write_text(_dataset_card(bank, metadata, table.nbytes), encoding="utf-8")

    write_directory_atomic(output_dir, write)
    return output_dir


def _column_to_tensor(table, name: str, dtype: torch.dtype, width: int | None = None) -> torch.Tensor:
    column = table.column(name).combine_chunks()
    if width is None:
        return torch.from_numpy(column.to_numpy().copy()).to(dtype)
    values = column.flatten().to_numpy().copy()
    return torch.from_numpy(values).to(dtype).reshape(-1, width)


def load_bank(
    path_or_repo_id: str | os.PathLike,
    class_names: list[str] | None = None,
    template: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
) -> CaptConfusionBank:
    r"""Load a bank saved by `save_bank` from a local folder or a Hub dataset repository.

    Args:
        path_or_repo_id (`str` or `os.PathLike`):
            A local folder, or else the id of a Hub dataset repository (fetched with
            `huggingface_hub.snapshot_download`).
        class_names (`list[str]`, *optional*):
            The class list the bank is to be used with; a mismatch raises a `ValueError`.
        template (`str`, *optional*):
            The prompt template the bank is to be used with; a mismatch raises a `ValueError`.
        revision (`str`, *optional*):
            Hub revision (branch, tag or commit).
        token (`str` or `bool`, *optional*):
            Hub token.

    Returns:
        `CaptConfusionBank`, with `semantic_prompts` and `data_fingerprint` set from the metadata. The fingerprint is
        not checked here (no training set is given): `dataset_scripts.bank.check_bank_matches_training_set` does.
    """
    folder = Path(path_or_repo_id)
    if not folder.is_dir():
        folder = Path(
            snapshot_download(
                str(path_or_repo_id),
                repo_type="dataset",
                revision=revision,
                token=token,
                allow_patterns=[METADATA_FILE, CARD_FILE, "data/*.parquet"],
            )
        )
    metadata_path = folder / METADATA_FILE
    if not metadata_path.is_file():
        raise FileNotFoundError(f"{folder} holds no {METADATA_FILE}: it is not a saved Confusion Bank")
    try:
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{metadata_path} is not valid JSON ({err}): the saved Confusion Bank is damaged") from err
    required = ("class_names", "template", "embed_dim")
    missing = [key for key in required if not isinstance(metadata, dict) or key not in metadata]
    if missing:
        raise ValueError(f"{metadata_path} lacks {missing}: the saved Confusion Bank is damaged")
    names = list(metadata["class_names"])
    fingerprint = metadata.get("data_fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise ValueError(f"{metadata_path}: data_fingerprint must be a string, got {fingerprint!r}: the saved "
                         "Confusion Bank is damaged")

    files = sorted((folder / "data").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder / 'data'} holds no Parquet file")
    table = pq.read_table(files[0]) if len(files) == 1 else pq.ParquetDataset(files).read()
    features = Features.from_arrow_schema(table.schema)
    if not isinstance(features.get("label"), ClassLabel) or features["label"].names != names:
        raise ValueError(f"The label ClassLabel of {folder} disagrees with the class names of {METADATA_FILE}")

    num_classes = len(names)
    columns = dict(
        indices=_column_to_tensor(table, "index", torch.long),
        labels=_column_to_tensor(table, "label", torch.long),
        probs=_column_to_tensor(table, "probs", torch.float32, num_classes),
        embeds=_column_to_tensor(table, "embed", torch.float32, int(metadata["embed_dim"])),
    )
    recorded = metadata.get("content_sha256")
    if recorded is None:
        logger.warning("%s records no content hash (a bank saved before hashes were recorded): its rows are not "
                       "checked against damage", metadata_path)
    elif recorded != content_sha256(**columns):
        raise ValueError(f"The rows of {folder / 'data'} do not match the content_sha256 of {metadata_path}: the saved "
                         "Confusion Bank is damaged or was edited; rebuild it")
    bank = CaptConfusionBank.from_tensors(
        **columns,
        class_names=names,
        template=metadata["template"],
        base_model=metadata.get("base_model", ""),
        fallback=metadata.get("fallback", "class"),
        semantic_prompts=metadata.get("semantic_prompts"),
        data_fingerprint=fingerprint,  # None for a bank saved before fingerprints were recorded
        normalize_embeds=False,  # saved embeddings are normalised already; keeps the round trip bit-exact
    )
    if class_names is not None or template is not None:
        bank.check_compatible(class_names if class_names is not None else names, template)
    return bank


def push_bank_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload CAPT Confusion Bank",
):
    r"""Publish a folder written by `save_bank` as a Hub dataset repository.

    Args:
        output_dir (`str` or `os.PathLike`):
            The saved bank.
        repo_id (`str`):
            Target dataset repository, `"user/name"`; created when missing.
        private (`bool`, *optional*):
            Create the repository private; `None` leaves it to the Hub (public unless the organisation defaults to
            private), `False` makes it public.
        token (`str`, *optional*):
            Hub token; defaults to the logged-in user's.
        commit_message (`str`, *optional*):
            Message of the upload commit.

    Returns:
        The `huggingface_hub.CommitInfo` of the upload.
    """
    output_dir = Path(output_dir)
    if not (output_dir / METADATA_FILE).is_file() or not (output_dir / DATA_FILE).is_file():
        raise FileNotFoundError(f"{output_dir} is not a saved Confusion Bank (write it with save_bank first)")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id, folder_path=str(output_dir), repo_type="dataset", commit_message=commit_message
    )



def load_bank_for_training(bank_path, train_dataset, class_names, template) -> CaptConfusionBank:
    """Load the `--bank_path` bank and check it against the training set (`check_bank_matches_training_set`,
    fingerprint included): the trainer calls it before the zero-shot evaluation, so a wrong bank costs no work."""
    bank = load_bank(bank_path, class_names=class_names, template=template)
    check_bank_matches_training_set(bank, train_dataset["label"], class_names, train_dataset)
    logger.info("loaded the confusion bank from %s (%d samples)", bank_path, len(bank))
    return bank

__all__ = ["bank_features", "bank_to_dataset", "check_bank_output_dir", "load_bank", "push_bank_to_hub", "save_bank"]
