"""The label-noise protocol of VisPrompt / NLPrompt: corrupt the few-shot training labels, once, reproducibly.

Applied to the training split only (never to test), after the few-shot draw and the base/novel split, so `N` is
`K x shots`. Two protocols:

- by rate (`noise_rate` r): exactly `int(r * N)` samples, the first of a seeded shuffle, are corrupted.
  `sym`: each to a uniformly random *other* class. `asym`: `y -> (y + 1) mod K` (what the public NLPrompt code does).
  A JSON map (`{"t-shirt": "shirt", "sneaker": ["sandal", "ankle boot"]}`, a file or the text itself): the flipped
  samples are drawn among the classes the map names, each sent to its target (one of them, uniformly, for a list).
- per class (`noise_per_class` m, PTNL / JoAPR): every class ends with exactly `m` of its training samples being
  other classes' images: `m` samples of each class are relabelled, along a random cyclic order of the classes, so
  each class gives and receives exactly `m`.

The noise generator is its own (`numpy` PCG64), seeded from (seed, dataset, shots, rate or m, type) by SHA-256, so
no other random draw moves it. The result records the noisy and the true labels and the training set's fingerprint
(`data_fingerprint.py`, over the *true* labels): a saved file is refused for another training set.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np


NOISE_TYPES = ("sym", "asym")
#: The semantic asymmetric map of the embedded Fashion-MNIST subset.
FASHION_ASYM_MAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "noise_maps", "fashion_subset_asym.json")


def check_noise_options(noise_rate: float, noise_type: str, noise_per_class: int) -> None:
    """Refuse a rate outside [0, 1), an unknown type, a negative per-class count, or both protocols at once."""
    if not isinstance(noise_rate, (int, float)) or isinstance(noise_rate, bool) or not 0 <= noise_rate < 1:
        raise ValueError(f"--noise_rate must be in [0, 1), got {noise_rate!r}")
    if not isinstance(noise_per_class, int) or noise_per_class < 0:
        raise ValueError(f"--noise_per_class must be a non-negative integer, got {noise_per_class!r}")
    if noise_rate > 0 and noise_per_class > 0:
        raise ValueError("Give --noise_rate or --noise_per_class, not both")
    if noise_type not in NOISE_TYPES:
        read_noise_map(noise_type)  # a JSON map: it must at least parse


def read_noise_map(noise_type: str) -> dict:
    """The asymmetric map a `--noise_type` names: inline JSON (`{...}`) or a JSON file."""
    text = noise_type
    if not noise_type.lstrip().startswith("{"):
        if not os.path.isfile(noise_type):
            raise ValueError(f"--noise_type must be sym, asym, a JSON map or a JSON file, got {noise_type!r}")
        with open(noise_type, encoding="utf-8") as handle:
            text = handle.read()
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--noise_type {noise_type!r} is not valid JSON: {err}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"The noise map must be a non-empty JSON object of class -> class(es), got {mapping!r}")
    return mapping


def resolve_noise_map(mapping: dict, class_names: list[str]) -> dict[int, list[int]]:
    """Class indices of a name map; an unknown class or a class mapped to itself is an error naming it."""
    index = {name: i for i, name in enumerate(class_names)}
    resolved = {}
    for source, targets in mapping.items():
        targets = [targets] if isinstance(targets, str) else list(targets)
        unknown = [name for name in [source, *targets] if name not in index]
        if unknown:
            raise ValueError(f"The noise map names unknown classes {unknown} (classes: {class_names})")
        if source in targets:
            raise ValueError(f"The noise map maps {source!r} to itself")
        if not targets:
            raise ValueError(f"The noise map gives {source!r} no target")
        resolved[index[source]] = [index[t] for t in targets]
    return resolved


def noise_seed(seed: int, dataset: str, shots: int, amount, noise_type: str) -> int:
    """The noise generator's seed, from everything that defines the noisy set and nothing else."""
    key = json.dumps([int(seed), str(dataset), int(shots), float(amount), str(noise_type)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def inject_label_noise(
    labels,
    class_names: list[str],
    noise_rate: float = 0.0,
    noise_type: str = "sym",
    noise_per_class: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """The noisy labels of `labels` (class indices into `class_names`), drawn with a generator seeded by `seed`."""
    check_noise_options(noise_rate, noise_type, noise_per_class)
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = len(class_names)
    if num_classes < 2:
        raise ValueError(f"Label noise needs at least two classes, got {class_names}")
    rng = np.random.Generator(np.random.PCG64(seed))
    noisy = labels.copy()
    if noise_per_class:
        counts = np.bincount(labels, minlength=num_classes)
        if counts.min() < noise_per_class:
            raise ValueError(f"--noise_per_class {noise_per_class} exceeds the smallest class's {counts.min()} samples")
        order = rng.permutation(num_classes)  # class order[i] gives its j-th flipped sample to order[i + 1 + j mod ...]
        for position, klass in enumerate(order):
            chosen = rng.permutation(np.flatnonzero(labels == klass))[:noise_per_class]
            for j, row in enumerate(chosen):
                noisy[row] = order[(position + 1 + j % (num_classes - 1)) % num_classes]
        return noisy
    count = int(noise_rate * len(labels))
    if noise_type == "sym":
        rows = rng.permutation(len(labels))[:count]
        noisy[rows] = (labels[rows] + rng.integers(1, num_classes, size=count)) % num_classes
    elif noise_type == "asym":
        rows = rng.permutation(len(labels))[:count]
        noisy[rows] = (labels[rows] + 1) % num_classes
    else:
        mapping = resolve_noise_map(read_noise_map(noise_type), class_names)
        candidates = np.flatnonzero(np.isin(labels, list(mapping)))
        if len(candidates) < count:
            raise ValueError(f"--noise_rate {noise_rate} flips {count} labels but the noise map's classes have only "
                             f"{len(candidates)} training samples")
        rows = rng.permutation(candidates)[:count]
        for row in rows:
            targets = mapping[int(labels[row])]
            noisy[row] = targets[int(rng.integers(len(targets)))] if len(targets) > 1 else targets[0]
    return noisy


def noise_record(true_labels, noisy_labels, fingerprint: str, **settings) -> dict:
    """What `noisy_labels.json` holds: the settings, the fingerprint of the training set, both label lists."""
    true_labels, noisy_labels = np.asarray(true_labels), np.asarray(noisy_labels)
    return {
        **settings,
        "fingerprint": fingerprint,
        "num_flipped": int((true_labels != noisy_labels).sum()),
        "labels": noisy_labels.tolist(),
        "true_labels": true_labels.tolist(),
    }


def read_noisy_labels(path: str, fingerprint: str) -> dict:
    """A saved `noisy_labels.json`, refused unless it was made for the training set of `fingerprint`."""
    with open(path, encoding="utf-8") as handle:
        record = json.load(handle)
    if record.get("fingerprint") != fingerprint:
        raise ValueError(f"{path} holds the noisy labels of another training set (fingerprint "
                         f"{record.get('fingerprint')}, this run's {fingerprint}): use the file written for these "
                         "data, seed and shots")
    return record


__all__ = ["FASHION_ASYM_MAP", "NOISE_TYPES", "check_noise_options", "inject_label_noise", "noise_record",
           "noise_seed", "read_noise_map", "read_noisy_labels", "resolve_noise_map"]
