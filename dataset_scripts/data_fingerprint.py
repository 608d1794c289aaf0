"""A content fingerprint of a training set: which images, with which labels, in which order.

A Confusion Bank describes the training set row by row (row `j`: the base model's probabilities for training sample
`j` and its frozen image embedding). Its size and labels do not identify the images: two few-shot draws of the same
data (another `--seed`, same `--shots` and classes) have the same size and the same labels in the same order, since
few-shot rows are ordered by class. The fingerprint does identify them, so a bank records the fingerprint of the
training set it was built from and the trainer refuses a bank whose fingerprint is not its own training set's.

It is a SHA-256 over the rows in order, each row contributing its label and the bytes of its *encoded* image, as
stored: the image column is read as `datasets.Image(decode=False)`, so no image is decoded. A row holding only a
file path contributes the file's bytes, never the path, so the fingerprint is the same on another machine, for the
same images stored as bytes (Parquet, a Hub dataset) or as files (an ImageFolder), and for a bank pushed to and
loaded from the Hub. The same picture re-encoded (say PNG to JPEG, or another PNG compression level) gives another
fingerprint: the bytes are what is hashed.
"""

from __future__ import annotations

import hashlib
import struct

import datasets
from datasets.utils.file_utils import is_local_path, xopen


# The scheme's name starts every fingerprint, so a bank recorded under another scheme is recognised as such (it
# cannot be compared) rather than reported as built from other images.
FINGERPRINT_SCHEME = "capt-rows-sha256-v1"

_ROW_HEADER = struct.Struct("<qq")  # label, length of the image's bytes (framing: no two row sequences collide)


def _image_bytes(value, row: int, image_column: str) -> bytes:
    """The encoded bytes of one undecoded image value (`{"bytes", "path"}`): its bytes, else its file's bytes."""
    data = value.get("bytes") if isinstance(value, dict) else None
    if data is not None:
        return bytes(data)
    path = value.get("path") if isinstance(value, dict) else value
    if not path:
        raise ValueError(f"Training row {row} holds no image in the '{image_column}' column (neither bytes nor a path)")
    try:
        if is_local_path(path):
            with open(path, "rb") as handle:
                return handle.read()
        with xopen(path, "rb") as handle:  # a remote file, as `datasets.Image` itself reads it
            return handle.read()
    except OSError as err:
        raise ValueError(f"Cannot read the image file of training row {row} ({path}): {err}") from err


def training_set_fingerprint(
    dataset: datasets.Dataset,
    image_column: str = "image",
    label_column: str = "label",
    batch_size: int = 512,
) -> str:
    r"""The content fingerprint of a training set: `"capt-rows-sha256-v1:<64 hex digits>"`.

    Args:
        dataset (`datasets.Dataset`):
            The training set, rows in training order, with a `datasets.Image` column and an integer label column.
        image_column (`str`, *optional*, defaults to `"image"`):
            The image column; read without decoding.
        label_column (`str`, *optional*, defaults to `"label"`):
            The label column (the label index as the bank stores it).
        batch_size (`int`, *optional*, defaults to 512):
            Rows read at a time.

    Returns:
        `str`: the scheme name, a colon, and the SHA-256 of the rows (each: its label and image length as two
        little-endian int64, then the image's encoded bytes).
    """
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"Cannot fingerprint the training set: it has no '{column}' column "
                             f"(columns: {dataset.column_names})")
    if not isinstance(dataset.features[image_column], datasets.Image):
        raise ValueError(f"Cannot fingerprint the training set: '{image_column}' is not a datasets.Image column")
    rows = dataset.select_columns([image_column, label_column]).cast_column(image_column, datasets.Image(decode=False))
    digest = hashlib.sha256(FINGERPRINT_SCHEME.encode("ascii"))
    row = 0
    for batch in rows.with_format(None).iter(batch_size=batch_size):
        for value, label in zip(batch[image_column], batch[label_column]):
            data = _image_bytes(value, row, image_column)
            digest.update(_ROW_HEADER.pack(int(label), len(data)))
            digest.update(data)
            row += 1
    return f"{FINGERPRINT_SCHEME}:{digest.hexdigest()}"


def fingerprint_scheme(fingerprint: str) -> str:
    """The scheme part of a fingerprint (`""` for a value without one)."""
    return fingerprint.rpartition(":")[0] if isinstance(fingerprint, str) else ""


__all__ = ["FINGERPRINT_SCHEME", "fingerprint_scheme", "training_set_fingerprint"]
