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

from importlib import resources


def card_template(name: str):
    """The template `hub_cards/<name>`, as an `importlib.resources` Traversable (a `pathlib.Path` when the package is
    a folder on disk). Check `.is_file()` before reading where a missing template should not be an error."""
    return resources.files("hub_cards").joinpath(name)


def fill_card(name: str, **fields) -> str:
    """The text of the template `hub_cards/<name>` with its `{field}`s filled from `fields`."""
    return card_template(name).read_text(encoding="utf-8").format(**fields)


__all__ = ["card_template", "fill_card"]
