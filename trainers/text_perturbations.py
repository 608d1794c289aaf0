"""Strong text perturbations for ANPrompt's noise-injection ablation (paper Table X: Synreplace, mask, Shuffle, Drop).

With `--strong_perturbation drop|mask|shuffle|synonym` the main sentences of the description cache are perturbed
once, before the weak-noise features and the k-means noise prompts are built from them:

- `drop`: delete `max(1, round(rate * n))` of the sentence's `n` words (at least one word stays);
- `mask`: replace as many words by [`MASK_WORD`] (CLIP's vocabulary has no mask token: it is spelled out);
- `shuffle`: put all the words in a random other order (`rate` is not used);
- `synonym`: replace as many words by a synonym from [`SYNONYMS`], a small built-in table of words common in
  photo descriptions (a sentence with none of them is left as it is).

Words are the whitespace-separated pieces; punctuation stuck to a word stays in place (`"cat."` -> `"[MASK]."`).
Each class's sentences get their own random generator seeded from `(seed, class name)`, so a class is perturbed the
same whichever other classes a run has.
"""

from __future__ import annotations

import random
import re


STRONG_PERTURBATIONS = ("none", "drop", "mask", "shuffle", "synonym")
MASK_WORD = "[MASK]"

#: A small synonym table (lower case): the words of the offline descriptions (the caption templates) and a few common
#: description words. Not a thesaurus: words missing from it are never replaced.
SYNONYMS = {
    "photo": ("picture", "image", "snapshot"),
    "picture": ("photo", "image"),
    "image": ("photo", "picture"),
    "small": ("little", "tiny"),
    "little": ("small", "tiny"),
    "large": ("big", "huge"),
    "big": ("large", "huge"),
    "good": ("nice", "fine"),
    "bad": ("poor", "awful"),
    "blurry": ("fuzzy", "unclear"),
    "cropped": ("trimmed", "cut"),
    "low": ("poor", "reduced"),
    "resolution": ("quality", "detail"),
    "black": ("dark",),
    "white": ("pale",),
    "grayscale": ("monochrome",),
    "close-up": ("closeup", "detailed"),
    "bright": ("light", "vivid"),
    "dark": ("dim", "black"),
    "clean": ("tidy", "spotless"),
    "dirty": ("filthy", "grimy"),
    "cool": ("nice", "great"),
    "weird": ("odd", "strange"),
    "shows": ("depicts", "displays"),
    "show": ("depict", "display"),
    "has": ("owns", "carries"),
    "with": ("having", "bearing"),
    "colour": ("color", "hue"),
    "color": ("colour", "hue"),
    "shape": ("form", "outline"),
    "round": ("circular", "rounded"),
    "long": ("lengthy", "extended"),
    "short": ("brief", "stubby"),
    "thin": ("slim", "narrow"),
    "thick": ("dense", "wide"),
    "soft": ("smooth", "gentle"),
    "rough": ("coarse", "bumpy"),
    "usually": ("often", "typically"),
    "often": ("usually", "frequently"),
    "something": ("anything", "an object"),
    "probably": ("likely", "perhaps"),
    "similar": ("alike", "comparable"),
}

_WORD = re.compile(r"^(\W*)(.*?)(\W*)$")


def _split(word: str) -> tuple[str, str, str]:
    """`(leading punctuation, core, trailing punctuation)` of a whitespace-separated word."""
    return _WORD.match(word).groups()


def perturb_sentence(sentence: str, mode: str, rate: float, rng: random.Random) -> str:
    """`sentence` with a strong perturbation (`mode`, see the module docstring) drawn from `rng`."""
    if mode not in STRONG_PERTURBATIONS:
        raise ValueError(f"strong perturbation must be one of {STRONG_PERTURBATIONS}, got {mode!r}")
    if not 0 < rate <= 1:
        raise ValueError(f"the perturbation rate must be in (0, 1], got {rate!r}")
    words = sentence.split()
    if mode == "none" or not words:
        return sentence
    count = max(1, round(rate * len(words)))
    if mode == "shuffle":
        order = list(range(len(words)))
        rng.shuffle(order)
        if order == sorted(order):  # the identity is no perturbation
            order = order[1:] + order[:1]
        return " ".join(words[i] for i in order)
    if mode == "drop":
        dropped = set(rng.sample(range(len(words)), min(count, len(words) - 1)))
        return " ".join(word for i, word in enumerate(words) if i not in dropped)
    if mode == "mask":
        for i in rng.sample(range(len(words)), count):
            lead, _, trail = _split(words[i])
            words[i] = lead + MASK_WORD + trail
        return " ".join(words)
    candidates = [i for i, word in enumerate(words) if _split(word)[1].lower() in SYNONYMS]
    for i in rng.sample(candidates, min(count, len(candidates))):
        lead, core, trail = _split(words[i])
        words[i] = lead + rng.choice(SYNONYMS[core.lower()]) + trail
    return " ".join(words)


def perturb_descriptions(descriptions: dict[str, list[str]], mode: str, rate: float, seed: int) -> dict:
    """Every sentence of `{class name: [sentence, ...]}` perturbed (a new dict; `mode="none"`: an equal copy)."""
    perturbed = {}
    for name, sentences in descriptions.items():
        rng = random.Random(f"{seed}:{name}")
        perturbed[name] = [perturb_sentence(sentence, mode, rate, rng) for sentence in sentences]
    return perturbed


__all__ = ["MASK_WORD", "STRONG_PERTURBATIONS", "SYNONYMS", "perturb_descriptions", "perturb_sentence"]
