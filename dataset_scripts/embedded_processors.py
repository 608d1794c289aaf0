"""The embedded default's tokenizer and image processor, both loadable with the ordinary transformers APIs.

``train_clip_tokenizer`` learns a CLIP-style byte-level BPE on the captions (``learn_bpe_merges``
does the learning, deterministically) and ``save_tokenizer`` writes it with CLIP's vocab.json and
merges.txt; ``make_image_processor`` builds a ``CLIPImageProcessor`` normalised with the
pre-training images' own statistics (``pixel_stats``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

# CLIP's pre-tokenisation: contractions, runs of letters, single digits, runs of other symbols.
_CLIP_SPLIT_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP byte -> printable unicode character table, in CLIP's vocabulary order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def learn_bpe_merges(word_counts: dict[str, int], max_merges: int) -> list[tuple[str, str]]:
    """Byte-pair-encoding merges learnt from ``{word: count}`` (words as byte-level symbols).

    Classic BPE (Sennrich et al., 2016) with CLIP's ``</w>`` suffix on each word's last symbol:
    repeatedly merge the most frequent adjacent pair, until ``max_merges`` or no pair is left.
    Ties go to the lexicographically smallest pair, so the result is deterministic.
    """
    words: dict[tuple[str, ...], int] = {}
    for word, n in word_counts.items():
        if word:
            symbols = tuple(word[:-1]) + (word[-1] + "</w>",)
            words[symbols] = words.get(symbols, 0) + n
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: dict[tuple[str, str], int] = {}
        for symbols, n in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] = pairs.get(pair, 0) + n
        if not pairs:
            break
        a, b = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append((a, b))
        merged: dict[tuple[str, ...], int] = {}
        for symbols, n in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        words = merged
    return merges


def train_clip_tokenizer(corpus: Sequence[str], vocab_size: int = 1000, model_max_length: int = 77):
    """Train a CLIP-style byte-level BPE (lower-case, ``</w>`` end-of-word suffix) on ``corpus``.

    The vocabulary is laid out as CLIP's: the 256 byte symbols, the same with ``</w>``, the
    merges, then ``<|startoftext|>`` and ``<|endoftext|>``. Every byte (and byte + ``</w>``) is in
    the vocabulary, so any text tokenizes, unseen words falling back to smaller pieces.
    Returns a ``transformers.CLIPTokenizer``.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import CLIPTokenizer

    base = _bytes_to_unicode()
    n_special = 2
    max_merges = max(0, vocab_size - 2 * len(base) - n_special)
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    # The merges are learnt here rather than with tokenizers' BpeTrainer, which breaks ties between
    # equally frequent pairs differently from one process to the next (the vocabulary, and so the
    # model, would not be reproducible).
    word_counts: dict[str, int] = {}
    for text in corpus:
        for word, _ in bpe.pre_tokenizer.pre_tokenize_str(bpe.normalizer.normalize_str(text)):
            word_counts[word] = word_counts.get(word, 0) + 1
    merges = learn_bpe_merges(word_counts, max_merges)

    vocab: dict[str, int] = {}
    for ch in base:
        vocab[ch] = len(vocab)
    for ch in base:
        vocab[ch + "</w>"] = len(vocab)
    kept = []
    for a, b in merges:
        if a in vocab and b in vocab and a + b not in vocab:
            vocab[a + b] = len(vocab)
            kept.append((a, b))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=kept, model_max_length=model_max_length)


def save_tokenizer(tokenizer, out_dir: Path) -> None:
    """``save_pretrained`` (tokenizer.json + tokenizer_config.json) plus CLIP's vocab.json / merges.txt."""
    tokenizer.save_pretrained(out_dir)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    with open(out_dir / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(model["vocab"], f, ensure_ascii=False)
    with open(out_dir / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in model["merges"]:
            f.write((m if isinstance(m, str) else " ".join(m)) + "\n")


# --------------------------------------------------------------------------------------------
# Image processor
# --------------------------------------------------------------------------------------------


def load_image_processor(model_dir):
    """``AutoImageProcessor``, or ``CLIPImageProcessor`` (which falls back to PIL) where this transformers'
    ``AutoImageProcessor`` raises ``ImportError`` without torchvision (some 5.x releases)."""
    from transformers import AutoImageProcessor, CLIPImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(model_dir)
    except ImportError:
        return CLIPImageProcessor.from_pretrained(model_dir)


def make_image_processor(image_size: int, mean: Sequence[float], std: Sequence[float]):
    """A ``CLIPImageProcessor`` config (saved as ``image_processor_type: CLIPImageProcessor``).

    transformers 5 has two backends for it: torchvision (``CLIPImageProcessor``) and PIL
    (``CLIPImageProcessorPil``); ``AutoImageProcessor`` picks torchvision when installed, else
    PIL. We build with the PIL one so the script needs no torchvision.
    """
    try:
        from transformers import CLIPImageProcessorPil as cls
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as cls
    return cls(
        do_resize=True,
        size={"shortest_edge": image_size},
        resample=3,  # bicubic
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[float(m) for m in mean],
        image_std=[float(s) for s in std],
        do_convert_rgb=True,
    )


def preprocess_images(image_processor, images: list, chunk: int = 2048) -> torch.Tensor:
    """``pixel_values`` of ``images``, processed ``chunk`` images at a time."""
    out = []
    for i in range(0, len(images), chunk):
        out.append(image_processor(images=images[i : i + chunk], return_tensors="pt")["pixel_values"])
    return torch.cat(out)


def pixel_stats(images: list, image_size: int, limit: int = 5000) -> tuple[list[float], list[float]]:
    """Per-channel mean / std of the pre-training images after RGB conversion, resize and crop."""
    probe = make_image_processor(image_size, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    pixels = preprocess_images(probe, images[:limit])
    mean = pixels.mean(dim=(0, 2, 3)).tolist()
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return [round(m, 4) for m in mean], [round(s, 4) for s in std]
