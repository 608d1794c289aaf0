"""Build Hugging Face Parquet datasets of the CoOp benchmarks from CoOp's on-disk layout.

Usage::

    python dataset_scripts/build_benchmark.py --dataset oxford_pets --data_dir $DATA --output_dir OUT \
        [--dataset dtd ...] [--max_shard_size 500MB] [--push_to_hub org/name [--private]]

For every dataset this writes one config, ``OUT/<dataset>/{train,val,test}-XXXXX-of-YYYYY.parquet``
(images embedded as bytes, ``label`` a ClassLabel), a provenance record ``OUT/<dataset>/capt_benchmark.json``
and (re)writes the dataset card ``OUT/README.md`` whose YAML ``configs:`` / ``dataset_info:`` list every
config in ``OUT``: building a second dataset into the same ``OUT`` adds a config and keeps the others.
All files are written to temporary names first and moved into place with ``os.replace``.

``--push_to_hub`` creates the dataset repo and uploads ``OUT`` with :class:`huggingface_hub.HfApi`
(see :func:`push_benchmark_to_hub`). Load the result with
``dataset_scripts.coop_datasets.load_benchmark(OUT or repo_id, "<dataset>")`` or
``datasets.load_dataset(OUT or repo_id, "<dataset>")``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

import pyarrow.parquet as pq
import yaml
from huggingface_hub import HfApi
from huggingface_hub.errors import EntryNotFoundError
from tqdm.auto import tqdm

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import ClassLabel, Dataset  # noqa: E402
from datasets.table import embed_table_storage  # noqa: E402
from datasets.utils.py_utils import convert_file_size_to_int  # noqa: E402

from dataset_scripts.atomic_io import write_directory_atomic, write_text_atomic  # noqa: E402
from dataset_scripts.cards import fill_card, size_category  # noqa: E402
from dataset_scripts.coop_datasets import (  # noqa: E402
    PROVENANCE_FILE,
    get_dataset_info,
    list_datasets,
    read_coop_dataset,
)

logger = logging.getLogger(__name__)

#: Name of the per-config provenance record written next to the Parquet shards.
CARD_FILE = "README.md"
DEFAULT_MAX_SHARD_SIZE = "500MB"
#: Rows per Parquet row group (and per embedding batch): small, since rows carry whole images.
ROWS_PER_ROW_GROUP = 100


# --------------------------------------------------------------------------------------------
# Parquet shards
# --------------------------------------------------------------------------------------------


def write_parquet_shards(
    dataset: Dataset,
    folder: str,
    split: str,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    progress: tqdm | None = None,
) -> list[dict]:
    """Write ``dataset`` (images embedded as bytes) to ``folder/<split>-XXXXX-of-YYYYY.parquet``.

    A new shard starts when the next batch would push the current shard past ``max_shard_size``
    (measured on the uncompressed Arrow data). Returns one ``{"file", "num_examples", "num_bytes"}``
    per shard. ``folder`` should be a temporary folder: files are written in place.
    """
    max_bytes = convert_file_size_to_int(max_shard_size)
    schema = dataset.features.arrow_schema
    shards: list[dict] = []
    writer: pq.ParquetWriter | None = None

    def close_shard() -> None:
        nonlocal writer
        if writer is not None:
            writer.close()
            writer = None

    for batch in dataset.with_format("arrow").iter(batch_size=ROWS_PER_ROW_GROUP):
        table = embed_table_storage(batch.replace_schema_metadata(schema.metadata)).cast(schema)
        row_bytes = max(1.0, table.nbytes / max(1, table.num_rows))  # plan with the batch's mean row size
        start = 0
        while start < table.num_rows:
            if writer is None:
                shards.append(
                    {
                        "file": os.path.join(folder, f".{split}-{len(shards):05d}.partial"),
                        "num_examples": 0,
                        "num_bytes": 0,
                    }
                )
                writer = pq.ParquetWriter(shards[-1]["file"], schema)
            rows_that_fit = int((max_bytes - shards[-1]["num_bytes"]) // row_bytes)
            if rows_that_fit <= 0 and shards[-1]["num_examples"] > 0:
                close_shard()
                continue
            piece = table.slice(start, max(1, rows_that_fit))
            writer.write_table(piece, row_group_size=ROWS_PER_ROW_GROUP)
            shards[-1]["num_examples"] += piece.num_rows
            shards[-1]["num_bytes"] += piece.nbytes
            start += piece.num_rows
        if progress is not None:
            progress.update(table.num_rows)
    close_shard()
    if not shards:  # an empty split still gets one (empty) shard so that the config lists it
        shards.append({"file": os.path.join(folder, f".{split}-00000.partial"), "num_examples": 0, "num_bytes": 0})
        pq.write_table(schema.empty_table(), shards[-1]["file"])

    for index, shard in enumerate(shards):
        final_path = os.path.join(folder, f"{split}-{index:05d}-of-{len(shards):05d}.parquet")
        os.replace(shard["file"], final_path)
        shard["file"] = os.path.basename(final_path)
    return shards


# --------------------------------------------------------------------------------------------
# One config
# --------------------------------------------------------------------------------------------


def build_benchmark(
    dataset_name: str,
    data_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    verify_images: bool = True,
    show_progress: bool = True,
) -> dict:
    """Read one benchmark from CoOp's layout and write it as config ``dataset_name`` of ``output_dir``.

    Replaces an existing config of the same name, keeps the other configs, and rewrites the card.
    Returns the config's provenance record (also written to ``output_dir/<dataset>/capt_benchmark.json``).
    """
    info = get_dataset_info(dataset_name)
    output_dir = os.path.abspath(os.fspath(output_dir))
    os.makedirs(output_dir, exist_ok=True)
    read_provenance_records(output_dir)  # the card lists every config: fail on a broken record before writing
    dataset_dict, report = read_coop_dataset(info.name, data_dir, verify_images=verify_images)

    def write_config(temp_dir):
        total_rows = sum(len(dataset) for dataset in dataset_dict.values())
        with tqdm(total=total_rows, desc=f"Writing {info.name}", unit="img", disable=not show_progress) as progress:
            splits = {
                split: write_parquet_shards(dataset, temp_dir, split, max_shard_size, progress)
                for split, dataset in dataset_dict.items()
            }
        class_label: ClassLabel = next(iter(dataset_dict.values())).features["label"]
        record = {
            "config_name": info.name,
            "display_name": info.display_name,
            "template": info.template,
            "homepage": info.homepage,
            "classnames": list(class_label.names),
            "provenance": report.provenance,
            "corrupt_images_skipped": report.num_corrupt_images,
            "images_verified": report.images_verified,
            "splits": {
                split: {
                    "num_examples": sum(shard["num_examples"] for shard in shards),
                    "num_bytes": sum(shard["num_bytes"] for shard in shards),
                    "download_size": sum(os.path.getsize(os.path.join(temp_dir, shard["file"])) for shard in shards),
                    "files": [shard["file"] for shard in shards],
                }
                for split, shards in splits.items()
            },
        }
        write_text_atomic(
            os.path.join(temp_dir, PROVENANCE_FILE), json.dumps(record, indent=2, ensure_ascii=False) + "\n"
        )
        return record

    record = write_directory_atomic(os.path.join(output_dir, info.name), write_config)
    write_dataset_card(output_dir)
    return record


# --------------------------------------------------------------------------------------------
# Dataset card
# --------------------------------------------------------------------------------------------


def read_provenance_records(output_dir: str | os.PathLike) -> list[dict]:
    """The provenance records of every config in ``output_dir``, in the registry's order."""
    records = []
    for entry in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, entry, PROVENANCE_FILE)
        if not entry.startswith(".") and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as handle:
                    record = json.load(handle)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(
                    f"{path} is not valid JSON ({error}); rebuild config '{entry}' or remove it."
                ) from error
            if not isinstance(record, dict) or not isinstance(record.get("config_name"), str):
                raise ValueError(f"{path} is not a provenance record (no config_name); rebuild config '{entry}'.")
            records.append(record)
    order = {name: index for index, name in enumerate(list_datasets())}
    return sorted(records, key=lambda record: (order.get(record["config_name"], len(order)), record["config_name"]))


def _read_card_metadata(card_path: str) -> dict:
    """The YAML front matter of an existing card (empty if none)."""
    if not os.path.isfile(card_path):
        return {}
    with open(card_path, encoding="utf-8") as handle:
        return _front_matter(handle.read())


def _config_metadata(record: dict) -> tuple[dict, dict]:
    """The ``configs:`` and ``dataset_info:`` YAML entries of one config."""
    name = record["config_name"]
    config = {
        "config_name": name,
        "data_files": [{"split": split, "path": f"{name}/{split}-*.parquet"} for split in record["splits"]],
    }
    dataset_info = {
        "config_name": name,
        "features": [
            {"name": "image", "dtype": "image"},
            {
                "name": "label",
                "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(record["classnames"])}}},
            },
        ],
        "splits": [
            {"name": split, "num_bytes": stats["num_bytes"], "num_examples": stats["num_examples"]}
            for split, stats in record["splits"].items()
        ],
        "download_size": sum(stats.get("download_size", 0) for stats in record["splits"].values()),
        "dataset_size": sum(stats["num_bytes"] for stats in record["splits"].values()),
    }
    return config, dataset_info


def render_dataset_card(records: Sequence[dict], previous_metadata: dict | None = None) -> str:
    """The card text: YAML front matter (configs, features, licence pointer) and the provenance of every split.

    Entries of ``previous_metadata`` (an older card's YAML) for configs without a record are kept.
    """
    previous_metadata = previous_metadata or {}
    configs, infos = {}, {}
    for entry in previous_metadata.get("configs", []) or []:
        configs[entry.get("config_name", "default")] = entry
    previous_infos = previous_metadata.get("dataset_info", []) or []
    for entry in [previous_infos] if isinstance(previous_infos, dict) else previous_infos:
        infos[entry.get("config_name", "default")] = entry
    for record in records:
        configs[record["config_name"]], infos[record["config_name"]] = _config_metadata(record)

    metadata = {
        "license": "other",
        "license_name": "original-dataset-licenses",
        "pretty_name": "CoOp-protocol image classification benchmarks",
        "task_categories": ["image-classification"],
        "size_categories": [size_category(sum(
            split.get("num_examples", 0) for info in infos.values() for split in info.get("splits", [])))],
        "tags": ["coop", "few-shot", "clip", "prompt-learning", "capt"],
        "configs": list(configs.values()),
        "dataset_info": list(infos.values()),
    }
    rows = []
    for record in records:
        counts = [str(record["splits"].get(split, {}).get("num_examples", "-")) for split in ("train", "val", "test")]
        provenance = record["provenance"].replace("|", "\\|")
        if record.get("corrupt_images_skipped"):
            provenance += f"; {record['corrupt_images_skipped']} undecodable image(s) skipped"
        if not record.get("images_verified", True):
            provenance += "; images not verified"
        rows.append(
            f"| `{record['config_name']}` | {record['display_name']} | {len(record['classnames'])} | "
            + " | ".join(counts)
            + f" | `{record['template']}` | {provenance} |"
        )
    kept = [name for name in configs if name not in {record["config_name"] for record in records}]
    kept_note = f"Configs kept from an earlier card without a provenance record: {', '.join(kept)}."
    # Each row and the note bring their own leading line breaks, so that an empty list leaves no extra blank line.
    return fill_card(
        "benchmark_dataset_card.md",
        front_matter=yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=1000),
        example_config=records[0]["config_name"] if records else "<config>",
        config_rows="".join(f"\n{row}" for row in rows),
        kept_configs=f"\n\n{kept_note}" if kept else "",
        licence_rows="".join(
            f"\n- `{record['config_name']}` ({record['display_name']}): {record['homepage']}" for record in records
        ),
    )


def write_dataset_card(output_dir: str | os.PathLike) -> str:
    """(Re)write ``output_dir/README.md`` for every config in ``output_dir``; returns its path."""
    output_dir = os.fspath(output_dir)
    card_path = os.path.join(output_dir, CARD_FILE)
    text = render_dataset_card(read_provenance_records(output_dir), _read_card_metadata(card_path))
    write_text_atomic(card_path, text)
    return card_path


# --------------------------------------------------------------------------------------------
# Hub upload
# --------------------------------------------------------------------------------------------


def _front_matter(text: str) -> dict:
    if not text.startswith("---"):
        return {}
    metadata = yaml.safe_load(text.split("---", 2)[1]) or {}
    return metadata if isinstance(metadata, dict) else {}


def _remote_card_metadata(api, repo_id: str) -> dict:
    """The YAML front matter of the Hub repo's current card (empty for a new repo or one without a card)."""
    try:
        path = api.hf_hub_download(repo_id, CARD_FILE, repo_type="dataset")
    except EntryNotFoundError:
        return {}
    with open(path, encoding="utf-8") as handle:
        return _front_matter(handle.read())


def _merge_card_metadata(*cards: dict) -> dict:
    """`configs` / `dataset_info` entries of several cards, by config name (later cards win)."""
    merged = {"configs": {}, "dataset_info": {}}
    for card in cards:
        for key in merged:
            entries = card.get(key) or []
            for entry in [entries] if isinstance(entries, dict) else entries:
                if isinstance(entry, dict):
                    merged[key][entry.get("config_name", "default")] = entry
    return {key: list(entries.values()) for key, entries in merged.items()}


def push_benchmark_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    config_names: Sequence[str] | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
):
    """Create the Hub dataset repo ``repo_id`` (if needed) and upload the card and configs of ``output_dir``.

    Only the folders of ``config_names`` (default: every config in ``output_dir``) are uploaded; the remote Parquet
    shards of those configs are replaced (``delete_patterns``), other configs already on the Hub are left alone, and
    so are their entries in the card: the uploaded ``README.md`` is the local card merged with the Hub's (pushed,
    say, from another machine), in one commit. Returns the :class:`huggingface_hub.CommitInfo`.
    """
    output_dir = os.fspath(output_dir)
    records = read_provenance_records(output_dir)
    if config_names is None:
        config_names = [record["config_name"] for record in records]
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    previous = _merge_card_metadata(_remote_card_metadata(api, repo_id), _read_card_metadata(
        os.path.join(output_dir, CARD_FILE)))
    # The upload's folder: the merged card, and the configs' files linked (copied where links are impossible).
    staged = tempfile.mkdtemp(prefix=".hub-upload-", dir=output_dir)
    try:
        write_text_atomic(os.path.join(staged, CARD_FILE), render_dataset_card(records, previous))
        for name in config_names:
            os.makedirs(os.path.join(staged, name))
            for entry in os.listdir(os.path.join(output_dir, name)):
                source, target = os.path.join(output_dir, name, entry), os.path.join(staged, name, entry)
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copy2(source, target)
        return api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=staged,
            allow_patterns=[CARD_FILE] + [f"{name}/*" for name in config_names],
            delete_patterns=[f"{name}/*.parquet" for name in config_names],
            commit_message=commit_message or f"Add CoOp-protocol configs: {', '.join(config_names)}",
        )
    finally:
        shutil.rmtree(staged, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset",
        nargs="+",
        required=True,
        choices=list_datasets() + ["all"],
        metavar="NAME",
        help=f"dataset(s) to build, or 'all': {', '.join(list_datasets())}",
    )
    parser.add_argument("--data_dir", required=True, help="the $DATA root with CoOp's dataset folders")
    parser.add_argument("--output_dir", required=True, help="folder of the Parquet dataset (one config per dataset)")
    parser.add_argument(
        "--max_shard_size", default=DEFAULT_MAX_SHARD_SIZE, help="maximum shard size, e.g. 500MB (default)"
    )
    parser.add_argument(
        "--no_verify_images", action="store_true", help="do not decode every image with PIL before writing"
    )
    parser.add_argument("--push_to_hub", metavar="ORG/NAME", help="upload the built folder to this Hub dataset repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = list_datasets() if "all" in args.dataset else list(dict.fromkeys(args.dataset))
    built = []
    for name in names:
        record = build_benchmark(
            name,
            args.data_dir,
            args.output_dir,
            max_shard_size=args.max_shard_size,
            verify_images=not args.no_verify_images,
        )
        built.append(record)
    for record in built:
        counts = ", ".join(f"{split}: {stats['num_examples']}" for split, stats in record["splits"].items())
        skipped = (
            f", {record['corrupt_images_skipped']} corrupt image(s) skipped" if record["corrupt_images_skipped"] else ""
        )
        print(f"{record['config_name']}: {len(record['classnames'])} classes ({counts}){skipped}")
    print(f"Wrote {os.path.join(os.path.abspath(args.output_dir), CARD_FILE)}")
    if args.push_to_hub:
        commit = push_benchmark_to_hub(
            args.output_dir,
            args.push_to_hub,
            config_names=[record["config_name"] for record in built],
            private=args.private or None,
        )
        print(f"Pushed to https://huggingface.co/datasets/{args.push_to_hub} ({getattr(commit, 'commit_url', commit)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
