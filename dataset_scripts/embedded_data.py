"""The data of the embedded default: its source, the splits drawn from it, and the shipped subset's Parquet files.

The source is Fashion-MNIST read from its IDX files (``load_fashion_mnist_idx``) or any ``datasets``
image-classification dataset (``load_image_classification_dataset``); ``make_splits`` draws the
pre-training images, the few-shot pool and the test images from it; ``write_parquet_split`` and
``read_parquet_split`` write and read the subset that ships next to the model.
"""

from __future__ import annotations

import glob as globlib
import gzip
import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"

#: Fashion-MNIST class names, in label order (lower-case, as used in the captions).
FASHION_MNIST_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]

#: The credit and licence of Fashion-MNIST (quoted in the cards).
FASHION_MNIST_CREDIT = (
    "Fashion-MNIST by Zalando Research (Han Xiao, Kashif Rasul and Roland Vollgraf, "
    '"Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms", '
    "arXiv:1708.07747, 2017; https://github.com/zalandoresearch/fashion-mnist), "
    "released under the MIT licence, Copyright (c) 2017 Zalando SE."
)

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# --------------------------------------------------------------------------------------------
# Source data
# --------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed, judged by the ``.gz`` suffix) into an array.

    The header is two zero bytes, a type code, the number of dimensions ``n``, then ``n``
    big-endian uint32 sizes; the data follow in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise ValueError(f"{path}: too short to be an IDX file")
    zero, type_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic {raw[:4].hex()})")
    header_end = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header_end])
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_end != expected:
        raise ValueError(f"{path}: expected {expected} data bytes for shape {shape}, found {len(raw) - header_end}")
    data = np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``)."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    code = codes[native]
    payload = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


@dataclass
class SourceSplit:
    """One split of the source data: labels, plus a way to fetch images (as PIL) by index."""

    labels: np.ndarray
    get_images: Callable[[Sequence[int]], list]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class SourceData:
    class_names: list[str]
    splits: dict[str, SourceSplit]
    description: str
    provenance: dict = field(default_factory=dict)


def load_fashion_mnist_idx(idx_dir: str | os.PathLike = DEFAULT_IDX_DIR) -> SourceData:
    """Fashion-MNIST from its four IDX ``.gz`` files (Debian's ``dataset-fashion-mnist`` layout)."""
    from PIL import Image

    idx_dir = Path(idx_dir)
    missing = [name for pair in _IDX_FILES.values() for name in pair if not (idx_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found in {idx_dir} (missing: {', '.join(missing)}). "
            "Install Debian's `dataset-fashion-mnist` package (apt-get install dataset-fashion-mnist), "
            "pass --idx_dir pointing to a folder holding the four *-ubyte.gz files, or pass "
            "--dataset NAME_OR_PATH to build from a `datasets` image-classification dataset instead "
            "(e.g. --dataset embedded/fashion-subset)."
        )
    splits = {}
    for split, (images_file, labels_file) in _IDX_FILES.items():
        images = read_idx(idx_dir / images_file)
        labels = read_idx(idx_dir / labels_file).astype(np.int64)
        if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels):
            raise ValueError(f"{idx_dir}: unexpected IDX contents for the {split} split")
        if labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"{idx_dir}: labels outside 0..{len(FASHION_MNIST_CLASSES) - 1}")

        def get_images(indices, _images=images):
            return [Image.fromarray(_images[int(i)], mode="L") for i in indices]

        splits[split] = SourceSplit(labels=labels, get_images=get_images)
    return SourceData(
        class_names=list(FASHION_MNIST_CLASSES),
        splits=splits,
        description="Fashion-MNIST",
        provenance={"source": "fashion-mnist-idx", "idx_dir": str(idx_dir)},
    )


def _load_datasets_object(name_or_path: str, cache_dir: str | None = None):
    import datasets

    kwargs = {"cache_dir": cache_dir} if cache_dir else {}
    path = Path(name_or_path)
    if path.is_dir():
        return datasets.load_dataset(str(path), **kwargs)
    if name_or_path.endswith(".parquet") or any(ch in name_or_path for ch in "*?["):
        files = sorted(globlib.glob(name_or_path)) if not path.is_file() else [name_or_path]
        if not files:
            raise FileNotFoundError(f"no Parquet file matches {name_or_path!r}")
        return datasets.load_dataset("parquet", data_files={"train": files}, **kwargs)
    return datasets.load_dataset(name_or_path, **kwargs)  # a Hub id


def load_image_classification_dataset(name_or_path: str, cache_dir: str | None = None) -> SourceData:
    """Any ``datasets`` image-classification dataset with an ``image`` and a ``ClassLabel`` ``label`` column.

    ``name_or_path`` is a Hub id, a local dataset directory (e.g. a folder of Parquet files), or a
    Parquet file / glob (read as a single split, which is then split here).
    """
    import datasets

    loaded = _load_datasets_object(name_or_path, cache_dir=cache_dir)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    if not isinstance(loaded, datasets.DatasetDict) or len(loaded) == 0:
        raise ValueError(f"{name_or_path!r} did not load as a map-style dataset with at least one split")

    names = None
    for split_name, ds in loaded.items():
        feats = ds.features
        if "image" not in feats or not isinstance(feats["image"], datasets.Image):
            raise ValueError(
                f"dataset {name_or_path!r} (split {split_name!r}) has no `image` column of type datasets.Image(); "
                f"its features are {dict(feats)}. Rename or cast the image column to `image`."
            )
        if "label" not in feats or not isinstance(feats["label"], datasets.ClassLabel):
            raise ValueError(
                f"dataset {name_or_path!r} (split {split_name!r}) has no `label` column of type datasets.ClassLabel "
                f"(found: {feats.get('label', 'no label column')!r}); the class names are read from the ClassLabel. "
                "Cast it with `ds.cast_column('label', ClassLabel(names=[...]))`."
            )
        if names is None:
            names = list(feats["label"].names)
        elif list(feats["label"].names) != names:
            raise ValueError(f"dataset {name_or_path!r}: splits disagree on the ClassLabel names")

    splits = {}
    for split_name, ds in loaded.items():
        ds = ds.select_columns(["image", "label"])

        def get_images(indices, _ds=ds):
            indices = [int(i) for i in indices]
            if not indices:
                return []
            return [im for im in _ds.select(indices)["image"]]

        splits[split_name] = SourceSplit(labels=np.asarray(ds["label"], dtype=np.int64), get_images=get_images)
    return SourceData(
        class_names=names,
        splits=splits,
        description=f"`{name_or_path}` (datasets)",
        provenance={"source": "datasets", "dataset": name_or_path, "splits": sorted(splits)},
    )

# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def sample_per_class(labels: np.ndarray, indices: np.ndarray, k: int, num_classes: int, rng) -> np.ndarray:
    """Up to ``k`` indices per class (all of them for a smaller class), drawn without replacement."""
    chosen = []
    for c in range(num_classes):
        pool = indices[labels[indices] == c]
        take = min(k, len(pool))
        chosen.append(rng.choice(pool, size=take, replace=False) if take else pool[:0])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


@dataclass
class Splits:
    pretrain: tuple[str, np.ndarray]
    pool: tuple[str, np.ndarray]
    test: tuple[str, np.ndarray]


def make_splits(source: SourceData, pretrain_size: int, pool_per_class: int, test_per_class: int, seed: int) -> Splits:
    """Pre-training set, few-shot pool (disjoint from it) and test set, deterministically from ``seed``.

    The test images come from the source's test split (``test``, else ``validation``/``val``);
    without one, they are carved out of the training split first. The pool is drawn per class
    from the training split, and the pre-training images from what remains of it.
    """
    rng = np.random.default_rng(seed)
    num_classes = len(source.class_names)
    train_name = "train" if "train" in source.splits else sorted(source.splits)[0]
    test_name = next((n for n in ("test", "validation", "val") if n in source.splits and n != train_name), None)
    train = source.splits[train_name]
    train_available = np.arange(len(train), dtype=np.int64)
    if test_name is not None:
        test_split = source.splits[test_name]
        test_idx = sample_per_class(test_split.labels, np.arange(len(test_split)), test_per_class, num_classes, rng)
    else:
        test_name = train_name
        test_idx = sample_per_class(train.labels, train_available, test_per_class, num_classes, rng)
        train_available = np.setdiff1d(train_available, test_idx)
    pool_idx = sample_per_class(train.labels, train_available, pool_per_class, num_classes, rng)
    remaining = np.setdiff1d(train_available, pool_idx)
    if pretrain_size > len(remaining):
        print(f"[build] only {len(remaining)} images left for pre-training (asked for {pretrain_size}); using them all")
    n = min(pretrain_size, len(remaining))
    pretrain_idx = np.sort(rng.choice(remaining, size=n, replace=False))
    if len(pretrain_idx) == 0:
        raise ValueError("no images left for pre-training: lower --pool_per_class / --test_per_class")
    return Splits(pretrain=(train_name, pretrain_idx), pool=(train_name, pool_idx), test=(test_name, test_idx))

# --------------------------------------------------------------------------------------------
# The subset's Parquet files
# --------------------------------------------------------------------------------------------


def read_parquet_split(path: str | os.PathLike):
    """A ``datasets.Dataset`` read straight from a Parquet file written by ``write_parquet_split`` (no cache)."""
    import datasets
    import pyarrow.parquet as pq
    from datasets.table import InMemoryTable

    return datasets.Dataset(InMemoryTable(pq.read_table(str(path))))


def _png_bytes(image) -> bytes:
    if image.mode not in ("L", "LA", "RGB", "RGBA", "I;16", "P", "1"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_parquet_split(path: Path, images: list, labels: Sequence[int], class_names: Sequence[str]) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(class_names))})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": _png_bytes(im), "path": None} for im in images], "label": [int(y) for y in labels]},
        features=features,
    )
    ds.to_parquet(str(path))

