"""The label-noise protocol: exact flip counts, never the same class, determinism, maps, saved files, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dataset_scripts.data import DataArguments, prepare_splits
from dataset_scripts.label_noise import (
    FASHION_ASYM_MAP, inject_label_noise, noise_seed, read_noise_map, resolve_noise_map,
)

from conftest import write_image_dataset

NAMES = ["a", "b", "c", "d", "e"]
LABELS = np.repeat(np.arange(5), 16)  # K x shots


@pytest.mark.parametrize("rate", [0.0, 0.125, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("noise_type", ["sym", "asym"])
def test_exactly_int_r_n_labels_flip_to_another_class(rate, noise_type):
    noisy = inject_label_noise(LABELS, NAMES, rate, noise_type, seed=3)
    flipped = noisy != LABELS
    assert flipped.sum() == int(rate * len(LABELS))
    if noise_type == "asym":
        assert (noisy[flipped] == (LABELS[flipped] + 1) % 5).all()


def test_sym_noise_is_deterministic_per_seed_and_spreads_over_other_classes():
    a = inject_label_noise(LABELS, NAMES, 0.5, "sym", seed=1)
    assert (a == inject_label_noise(LABELS, NAMES, 0.5, "sym", seed=1)).all()
    assert (a != inject_label_noise(LABELS, NAMES, 0.5, "sym", seed=2)).any()
    targets = {(int(t), int(n)) for t, n in zip(LABELS, a) if t != n}
    assert len({n for t, n in targets if t == 0}) > 1  # not a fixed permutation
    assert noise_seed(1, "x", 16, 0.5, "sym") != noise_seed(1, "x", 16, 0.25, "sym")


def test_the_noise_generator_is_its_own():
    """No global random state moves the noisy labels (the issue's "dedicated seeded RNG"), and they draw nothing
    from it: the few-shot draw and training see the same random numbers with or without noise."""
    import random

    import torch

    draws = []
    for global_seed in (0, 1):
        random.seed(global_seed)
        np.random.seed(global_seed)
        torch.manual_seed(global_seed)
        states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
        draws.append([inject_label_noise(LABELS, NAMES, 0.5, t, seed=7) for t in ("sym", "asym")]
                     + [inject_label_noise(LABELS, NAMES, noise_per_class=3, seed=7)])
        assert random.getstate() == states[0] and (np.random.get_state()[1] == states[1]).all()
        assert torch.equal(torch.get_rng_state(), states[2])
    for first, second in zip(*draws):
        assert (first == second).all()


def test_per_class_protocol_gives_every_class_exactly_m_foreign_samples():
    noisy = inject_label_noise(LABELS, NAMES, noise_per_class=4, seed=0)
    for klass in range(5):
        assert ((noisy == klass) & (LABELS != klass)).sum() == 4
        assert ((noisy == klass) & (LABELS == klass)).sum() == 12


def test_json_map_and_the_shipped_fashion_map():
    names = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
    labels = np.repeat(np.arange(10), 16)
    mapping = resolve_noise_map(read_noise_map(FASHION_ASYM_MAP), names)
    noisy = inject_label_noise(labels, names, 0.25, FASHION_ASYM_MAP, seed=0)
    flipped = np.flatnonzero(noisy != labels)
    assert len(flipped) == 40
    assert all(noisy[i] in mapping[labels[i]] for i in flipped)
    inline = inject_label_noise(labels, names, 0.1, '{"bag": "trouser"}', seed=0)
    assert set(labels[inline != labels]) == {8} and set(inline[inline != labels]) == {1}


@pytest.mark.parametrize("kwargs, message", [
    ({"noise_rate": 1.0}, r"\[0, 1\)"),
    ({"noise_rate": -0.1}, r"\[0, 1\)"),
    ({"noise_rate": 0.2, "noise_type": '{"a": "z"}'}, "unknown classes"),
    ({"noise_rate": 0.2, "noise_type": '{"a": "a"}'}, "to itself"),
    ({"noise_rate": 0.2, "noise_type": "sideways"}, "sym, asym"),
    ({"noise_rate": 0.2, "noise_per_class": 2}, "not both"),
])
def test_bad_noise_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        inject_label_noise(LABELS, NAMES, **kwargs)


def test_one_class_is_refused():
    with pytest.raises(ValueError, match="two classes"):
        inject_label_noise([0, 0, 0], ["a"], 0.5)


def test_data_arguments_refuse_a_bad_rate_before_any_data():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        DataArguments(noise_rate=1.5)


def _args(tmp_path, **kwargs):
    paths = write_image_dataset(tmp_path / "data")
    return DataArguments(train_dir=os.path.dirname(paths["train"]), test_dir=os.path.dirname(paths["test"]), shots=4,
                         subsample_classes="all", fewshot_cache_dir=str(tmp_path / "fs"), **kwargs)


def test_prepare_splits_corrupts_only_training_labels_and_a_saved_file_is_checked(tmp_path):
    clean = prepare_splits(_args(tmp_path), seed=1)
    noisy = prepare_splits(_args(tmp_path, noise_rate=0.5), seed=1)
    record = noisy["label_noise"]
    assert record["true_labels"] == clean["train"]["label"]
    assert noisy["train"]["label"] == record["labels"]
    assert record["num_flipped"] == int(0.5 * 24) == sum(a != b for a, b in zip(record["labels"], clean["train"]["label"]))
    assert noisy["test"]["label"] == clean["test"]["label"]
    path = tmp_path / "noisy_labels.json"
    path.write_text(json.dumps(record))
    again = prepare_splits(_args(tmp_path, noisy_labels_file=str(path)), seed=1)
    assert again["train"]["label"] == record["labels"]
    with pytest.raises(ValueError, match="another training set"):
        prepare_splits(_args(tmp_path, noisy_labels_file=str(path)), seed=2)  # another few-shot draw
