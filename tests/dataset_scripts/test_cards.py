"""The card helpers: Hub size buckets and links to Hub pages."""

from __future__ import annotations

import pytest

from dataset_scripts.cards import hub_link, size_category


@pytest.mark.parametrize("rows, bucket", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (60_000, "10K<n<100K"),
                                          (1_281_167, "1M<n<10M"), (10**13, "n>1T")])
def test_size_category_is_the_hubs_bucket(rows, bucket):
    assert size_category(rows) == bucket


def test_hub_link_links_hub_ids_only(tmp_path):
    assert hub_link("openai/clip-vit-base-patch16") == (
        "[openai/clip-vit-base-patch16](https://huggingface.co/openai/clip-vit-base-patch16)")
    assert hub_link(str(tmp_path)) == f"`{tmp_path}`"
    assert hub_link("oxford_pets") == "`oxford_pets`"  # a CoOp benchmark name, not a repository
