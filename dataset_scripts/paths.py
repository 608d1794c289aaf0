"""Where the embedded default model and data are: `embedded/capt-tiny-fashion` and `embedded/fashion-subset`.

They ship as package data of the `embedded` package, so they are located through the import system rather than from
a repository root: the same paths come out of a checkout, an editable install and an installed wheel (site-packages).

```python
>>> from dataset_scripts.paths import EMBEDDED_DATA, EMBEDDED_MODEL
>>> CLIPModel.from_pretrained(EMBEDDED_MODEL)
```
"""

from __future__ import annotations

import os
from importlib import resources


#: The folder of the `embedded` package (a real folder: models and Parquet files are read from disk, never a zip).
EMBEDDED_DIR = os.fspath(resources.files("embedded"))
#: The embedded CLIP checkpoint, the trainer's default `--model_name_or_path`.
EMBEDDED_MODEL = os.path.join(EMBEDDED_DIR, "capt-tiny-fashion")
#: The embedded Fashion-MNIST subset (`train.parquet`, `test.parquet`), the trainer's default data.
EMBEDDED_DATA = os.path.join(EMBEDDED_DIR, "fashion-subset")

__all__ = ["EMBEDDED_DATA", "EMBEDDED_DIR", "EMBEDDED_MODEL"]
