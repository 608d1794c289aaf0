"""The Hub cards' templates, `hub_cards/*.md`, and how they are filled.

A template is a Python format string: `{field}` is filled by `fill_card`, a literal brace is doubled. The templates
ship as package data of the `hub_cards` package, so they are found the same way in a repository checkout, an
editable install and an installed wheel.

```python
>>> from dataset_scripts.cards import fill_card
>>> text = fill_card("confusion_bank_card.md", front_matter=..., base_model=..., ...)
```
"""

from __future__ import annotations

import os
from importlib import resources

from huggingface_hub.utils import HFValidationError, validate_repo_id

from dataset_scripts.coop_datasets import list_datasets
from dataset_scripts.paths import EMBEDDED_DIR


def card_template(name: str):
    """The template `hub_cards/<name>`, as an `importlib.resources` Traversable (a `pathlib.Path` when the package is
    a folder on disk). Check `.is_file()` before reading where a missing template should not be an error."""
    return resources.files("hub_cards").joinpath(name)


def fill_card(name: str, **fields) -> str:
    """The text of the template `hub_cards/<name>` with its `{field}`s filled from `fields`."""
    return card_template(name).read_text(encoding="utf-8").format(**fields)


def hub_id(value) -> str | None:
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


def hub_link(value) -> str:
    """Markdown for a model or dataset a card names: a link to its Hub page for a Hub id, else the name in code."""
    return f"[{value}](https://huggingface.co/{value})" if hub_id(value) else f"`{value}`"


SIZE_CATEGORIES = ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                   (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                   (10**11, "10B<n<100B"), (10**12, "100B<n<1T"))


def size_category(num_rows: int) -> str:
    """The Hub's `size_categories` bucket for a dataset of `num_rows` rows."""
    return next((name for bound, name in SIZE_CATEGORIES if num_rows < bound), "n>1T")


__all__ = ["card_template", "fill_card", "hub_id", "hub_link", "size_category"]
