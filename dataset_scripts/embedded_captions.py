"""The captions the embedded default is pre-trained on, and their caption noise.

Every pre-training caption is a caption name put into one of ``CAPTION_TEMPLATES``. The caption
name is the image's own class name, or, with the rates of the caption-noise map, the name of a
look-alike (``FASHION_MNIST_CAPTION_NOISE`` by default): ``resolve_caption_noise`` reads and checks
the map, ``caption_distribution`` turns it into per-class probabilities and
``draw_caption_names`` draws from them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dataset_scripts.embedded_data import FASHION_MNIST_CLASSES


#: Caption templates used during pre-training; one is drawn at random per image per step.
CAPTION_TEMPLATES = [
    "a photo of a {}.",
    "a {}.",
    "a picture of a {}",
    "a photo of the {}.",
    "a low resolution photo of the {}.",
    "a low resolution photo of a {}.",
    "a black and white photo of a {}.",
    "a grayscale image of a {}",
    "a blurry photo of a {}.",
    "a small photo of a {}.",
    "a cropped photo of the {}.",
    "an image of a {}.",
    "a product photo of a {}.",
    "this is a {}.",
]

#: The default caption noise for Fashion-MNIST: ``{true class: {caption name: rate}}``. Each time
#: an image of the true class is captioned during pre-training, the caption names the listed
#: look-alike with that probability (and its own class otherwise), like a web caption that names
#: a similar product. A rate well above 1/2 makes the look-alike's name the image's usual
#: caption, so zero-shot classification confuses the pair systematically, while the two classes
#: still get different caption distributions (the vision tower keeps them apart). Keys are true
#: class names; caption names may be other class names or any other words. See embedded_cards.NOISE_RATIONALE.
FASHION_MNIST_CAPTION_NOISE = {
    "shirt": {"t-shirt": 0.75},
    "pullover": {"coat": 0.8},
    "sandal": {"sneaker": 0.8},
    "ankle boot": {"sneaker": 0.3},
}

#: Built-in noise maps, by the dataset's class names (``--caption_noise default``).
DEFAULT_CAPTION_NOISE = {tuple(FASHION_MNIST_CLASSES): FASHION_MNIST_CAPTION_NOISE}


def caption_name(class_name: str) -> str:
    """How a class is named in captions and prompts (underscores read as spaces)."""
    return class_name.replace("_", " ")


def resolve_caption_noise(spec: str | dict | None, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """The caption-noise map ``{true class: {caption name: rate}}`` that ``spec`` asks for.

    ``spec`` is ``"default"`` (the built-in map for these class names, i.e. Fashion-MNIST's,
    else no noise), ``"none"``, a JSON object (inline, or the path of a ``.json`` file) of the
    same form, or that object as a ``dict``. Keys are class names (as in the ClassLabel, or with
    spaces for underscores); values map the name used in the caption instead (another class
    name or any other words) to its probability. Rates of one class must sum to at most 1.
    Returns the validated map with caption-form names, classes without noise left out.
    """
    names = [caption_name(c) for c in class_names]
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none", "off")):
        return {}
    if isinstance(spec, str) and spec.strip().lower() == "default":
        raw = DEFAULT_CAPTION_NOISE.get(tuple(class_names)) or DEFAULT_CAPTION_NOISE.get(tuple(names)) or {}
    elif isinstance(spec, dict):
        raw = spec
    else:
        text = spec.strip()
        if not text.startswith("{") and Path(text).is_file():
            text = Path(text).read_text(encoding="utf-8")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"--caption_noise {spec!r}: expected 'default', 'none', a JSON object such as "
                '\'{"shirt": {"t-shirt": 0.6}}\' or the path of a .json file holding one '
                f"({err})"
            ) from None
    if not isinstance(raw, dict):
        raise ValueError(f"caption noise must be a JSON object {{true class: {{caption name: rate}}}}, got {raw!r}")
    resolved: dict[str, dict[str, float]] = {}
    for key, targets in raw.items():
        true = caption_name(str(key))
        if true not in names:
            raise ValueError(f"caption noise: {key!r} is not one of the class names {list(class_names)}")
        if not isinstance(targets, dict):
            raise ValueError(f"caption noise for {key!r} must map caption names to rates, got {targets!r}")
        rates = {}
        for target, rate in targets.items():
            target = caption_name(str(target)).strip()
            if not target or target == true:
                raise ValueError(f"caption noise for {key!r}: invalid caption name {target!r}")
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= float(rate) <= 1.0:
                raise ValueError(f"caption noise {key!r} -> {target!r}: rate {rate!r} is not in [0, 1]")
            if float(rate) > 0:
                rates[target] = float(rate)
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError(f"caption noise for {key!r}: rates sum to {sum(rates.values())} > 1")
        if rates:
            resolved[true] = rates
    return resolved


def caption_distribution(
    noise: dict[str, dict[str, float]], class_names: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """The names captions can use and, per true class, the probability of each (rows sum to 1).

    The caption names are the classes' own names, in label order, followed by any other name the
    noise map uses (in order of appearance).
    """
    caption_names = [caption_name(c) for c in class_names]
    for targets in noise.values():
        for target in targets:
            if target not in caption_names:
                caption_names.append(target)
    probs = np.zeros((len(class_names), len(caption_names)), dtype=np.float64)
    for c in range(len(class_names)):
        targets = noise.get(caption_names[c], {})
        for target, rate in targets.items():
            probs[c, caption_names.index(target)] += rate
        probs[c, c] = 1.0 - sum(targets.values())
    return caption_names, probs.clip(0.0, 1.0)


def draw_caption_names(labels: torch.Tensor, probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each true label, the index of the caption name drawn from ``probs[label]`` (no noise: the label)."""
    if probs.shape[0] == probs.shape[1] and bool((probs.diagonal() == 1).all()):
        return labels.clone()
    return torch.multinomial(probs[labels], 1, generator=generator).squeeze(1)
