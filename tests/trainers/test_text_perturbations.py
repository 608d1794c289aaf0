"""Strong text perturbations (ANPrompt's Table X ablation): what each mode does to a sentence, and the seeding."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from trainers.text_perturbations import MASK_WORD, SYNONYMS, perturb_descriptions, perturb_sentence


SENTENCE = "a small photo of a black cat sitting on the old wooden chair."
WORDS = SENTENCE.split()  # 12 words: rate 0.25 touches 3


def perturb(mode, seed=0, sentence=SENTENCE, rate=0.25):
    return perturb_sentence(sentence, mode, rate, random.Random(seed))


def is_subsequence(short, long):
    remaining = iter(long)
    return all(word in remaining for word in short)


def test_drop_deletes_the_share_of_words_and_keeps_the_order():
    words = perturb("drop").split()
    assert len(words) == len(WORDS) - 3 and is_subsequence(words, WORDS)
    assert perturb("drop", sentence="cat.") == "cat."  # the last word stays
    assert len(perturb("drop", sentence="a cat.", rate=1.0).split()) == 1


def test_mask_replaces_the_share_of_words_in_place():
    words = perturb("mask").split()
    assert len(words) == len(WORDS)
    masked = [i for i, word in enumerate(words) if word != WORDS[i]]
    assert len(masked) == 3 and all(words[i].startswith(MASK_WORD) for i in masked)
    assert perturb("mask", sentence="cat.") == MASK_WORD + "."  # punctuation stays where it was


def test_shuffle_reorders_every_word():
    words = perturb("shuffle").split()
    assert Counter(words) == Counter(WORDS) and words != WORDS
    assert perturb("shuffle", sentence="a cat") == "cat a"  # the identity is never the result


def test_synonym_replaces_table_words_only():
    words = perturb("synonym").split()
    changed = [i for i, word in enumerate(words) if word != WORDS[i]]
    assert len(changed) == 3
    for i in changed:
        assert WORDS[i].rstrip(".").lower() in SYNONYMS and words[i] in SYNONYMS[WORDS[i].lower()]
    assert perturb("synonym", sentence="this is a cat.") == "this is a cat."  # no word of the (small) table
    assert perturb("synonym", sentence="a photo.", rate=1.0).split()[1] in {w + "." for w in SYNONYMS["photo"]}


@pytest.mark.parametrize("mode", ["drop", "mask", "shuffle", "synonym"])
def test_each_mode_is_deterministic_per_seed(mode):
    assert perturb(mode, seed=3) == perturb(mode, seed=3) != SENTENCE
    assert len({perturb(mode, seed=seed) for seed in range(8)}) > 1
    descriptions = {"cat": [SENTENCE, "a large photo of a cat."], "dog": ["a small dog."]}
    once = perturb_descriptions(descriptions, mode, 0.25, seed=1)
    assert once == perturb_descriptions(descriptions, mode, 0.25, seed=1)
    assert once["cat"] == perturb_descriptions({"cat": descriptions["cat"]}, mode, 0.25, seed=1)["cat"]  # per class
    assert descriptions["cat"][0] == SENTENCE  # the input is not changed


def test_none_and_bad_options():
    assert perturb("none") == SENTENCE
    assert perturb_descriptions({"cat": [SENTENCE]}, "none", 0.3, seed=0) == {"cat": [SENTENCE]}
    with pytest.raises(ValueError, match="one of"):
        perturb("swap")
    with pytest.raises(ValueError, match="rate"):
        perturb("drop", rate=0.0)
