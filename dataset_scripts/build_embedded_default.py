#!/usr/bin/env python
"""Build ``capt-tiny-fashion``: the small CLIP model and data subset shipped inside the repository.

The package's main job (few-shot prompt tuning of a CLIP model) must run with no download, on a
laptop or a CI machine. This script makes that possible: it pre-trains, contrastively and from
scratch, a tiny but genuine ``transformers.CLIPModel`` on Fashion-MNIST captions ("a photo of a
sneaker."), and writes next to it the few-shot training pool and the test split it is evaluated
on.

The model is meant to show what CAPT is about: rich visual features misaligned with the text.
Its captions carry *caption noise* between look-alike classes, as web captions do (by default
75-80 % of the shirts are captioned "t-shirt", of the pullovers "coat", of the sandals
"sneaker"; see ``FASHION_MNIST_CAPTION_NOISE`` and ``--caption_noise``). The vision tower still
learns to separate the classes, but the class-name text embeddings are misplaced, so zero-shot
accuracy is modest (roughly 65-75 %) with fixed, systematic confusions (shirt -> t-shirt,
pullover -> coat, sandal -> sneaker), while a 16-shot linear probe on the frozen image features
beats zero-shot by 10-20 points on CoOp's base and novel halves of the classes; the script
measures both at its end.

Outputs (under ``--output_dir``, by default ``embedded/`` at the repository root)::

    capt-tiny-fashion/      CLIPModel (safetensors) + CLIPTokenizer + CLIPImageProcessor,
                            README.md model card and build_info.json
    fashion-subset/         train.parquet (few-shot pool), test.parquet, README.md dataset card

Usage::

    python dataset_scripts/build_embedded_default.py                   # the shipped default
    python dataset_scripts/build_embedded_default.py --caption_noise none --output_dir /tmp/clean
    python dataset_scripts/build_embedded_default.py --dataset DIR_OR_HUB_ID_OR_PARQUET ...

Both folders load with the ordinary Hugging Face APIs (``CLIPModel.from_pretrained``,
``AutoTokenizer``, ``AutoImageProcessor``, ``datasets.load_dataset``). Every folder is written
to a staging directory first and renamed into place, so an interrupted build never leaves a
half-written model behind.

This file is the command line and the build's sequence of steps; the steps live beside it:
``embedded_data`` (the source, its splits, the subset's Parquet files), ``embedded_captions``
(caption templates and caption noise), ``embedded_processors`` (tokenizer and image processor),
``embedded_pretrain`` (the CLIP config and contrastive pre-training), ``embedded_eval`` (zero-shot
and linear-probe evaluation) and ``embedded_cards`` (the two cards, from the templates in
``hub_cards/``).

Data: Fashion-MNIST, Zalando Research (Xiao, Rasul and Vollgraf, 2017), MIT licence.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import inspect
import json
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_scripts.embedded_captions import (  # noqa: E402
    CAPTION_TEMPLATES,
    caption_distribution,
    resolve_caption_noise,
)
from dataset_scripts.embedded_cards import (  # noqa: E402
    BUILD_INFO_NAME,
    check_card_templates,
    write_dataset_card,
    write_model_card,
)
from dataset_scripts.embedded_data import (  # noqa: E402
    DEFAULT_IDX_DIR,
    load_fashion_mnist_idx,
    load_image_classification_dataset,
    make_splits,
    write_parquet_split,
)
from dataset_scripts.embedded_eval import (  # noqa: E402
    ZERO_SHOT_TEMPLATE,
    confusions_text,
    linear_probe_evaluate,
    probe_table,
    zero_shot_evaluate,
)
from dataset_scripts.embedded_pretrain import (  # noqa: E402
    ModelSize,
    make_clip_config,
    pretrain_clip,
    tokenize_captions,
)
from dataset_scripts.embedded_processors import (  # noqa: E402
    make_image_processor,
    pixel_stats,
    preprocess_images,
    save_tokenizer,
    train_clip_tokenizer,
)


REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT_DIR = REPO_ROOT / "embedded"
DEFAULT_MODEL_NAME = "capt-tiny-fashion"
DEFAULT_SUBSET_NAME = "fashion-subset"


# --------------------------------------------------------------------------------------------
# Plumbing: quiet library progress bars, the build info file, installing the folders
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_library_progress_bars():
    """Silence the progress bars of datasets (Parquet writing) and transformers (weight loading)."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets_bars = datasets.utils.logging.is_progress_bar_enabled()
    hf_bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if hf_bars:
            hf_logging.enable_progress_bar()
        if datasets_bars:
            datasets.enable_progress_bars()


def _with_quiet_library_progress_bars(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _quiet_library_progress_bars():
            return fn(*args, **kwargs)

    return wrapper


def _write_json(path: Path, data) -> None:
    """Indented JSON, with lists of numbers kept on one line."""
    text = json.dumps(data, indent=1)

    def flat(match):
        return "[" + ", ".join(x.strip() for x in match.group(1).split(",")) + "]"

    text = re.sub(r"\[((?:\s*-?[0-9.eE+-]+,)*\s*-?[0-9.eE+-]+\s*)\]", flat, text)
    path.write_text(text + "\n", encoding="utf-8")


def _install(staged: Path, final: Path) -> None:
    """Move ``staged`` to ``final`` with renames only (an existing ``final`` is swapped out, then deleted)."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------

DEFAULTS = dict(
    idx_dir=DEFAULT_IDX_DIR,
    dataset=None,
    output_dir=str(DEFAULT_OUTPUT_DIR),
    model_name=DEFAULT_MODEL_NAME,
    subset_name=DEFAULT_SUBSET_NAME,
    pretrain_size=30000,
    pool_per_class=100,
    test_per_class=100,
    steps=800,
    batch_size=256,
    lr=2e-3,
    weight_decay=0.1,
    warmup_ratio=0.1,
    vocab_size=1000,
    seed=0,
    image_size=28,
    patch_size=7,
    vision_hidden=96,
    vision_layers=4,
    vision_heads=4,
    text_hidden=64,
    text_layers=2,
    text_heads=2,
    max_position_embeddings=77,
    projection_dim=64,
    caption_noise="default",
    probe_shots="16,100",
    threads=2,
    cache_dir=None,
)


def _load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return []


def _parse_shots(value: str | Sequence[int]) -> list[int]:
    """``"16,100"`` (or a sequence of ints) -> ``[16, 100]``; ``""`` / ``"none"`` -> no probe."""
    if isinstance(value, str):
        value = [] if value.strip().lower() in ("", "none") else [v for v in re.split(r"[,\s]+", value.strip()) if v]
    try:
        shots = [int(v) for v in value]
    except ValueError:
        raise ValueError(f"--probe_shots {value!r}: expected comma-separated positive integers, e.g. 16,100") from None
    if any(k <= 0 for k in shots):
        raise ValueError(f"--probe_shots {value!r}: shots must be positive")
    return shots


def _noise_text(noise: dict[str, dict[str, float]]) -> str:
    pairs = [(true, target, rate) for true, targets in noise.items() for target, rate in targets.items()]
    return ", ".join(f"{true} -> {target} {rate:.0%}" for true, target, rate in pairs)


def _command_line(params: dict) -> str:
    parts = ["python dataset_scripts/build_embedded_default.py"]
    for key, default in DEFAULTS.items():
        value = params.get(key, default)
        if key == "output_dir":
            if Path(value).resolve() == DEFAULT_OUTPUT_DIR.resolve():
                continue
        elif value == default:
            continue
        if key == "cache_dir" or (key == "idx_dir" and params.get("dataset")):
            continue
        if isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        parts.append(f"--{key} {shlex.quote(str(value))}")
    return " ".join(parts)


def _with_torch_threads(fn):
    """Run ``fn`` with ``torch.set_num_threads(threads)`` (its ``threads`` argument), then restore the setting."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        threads = int(bound.arguments["threads"] or 0)
        previous = torch.get_num_threads()
        if threads > 0:
            torch.set_num_threads(threads)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper


@_with_torch_threads
@_with_quiet_library_progress_bars
def build_embedded_default(
    idx_dir: str | os.PathLike = DEFAULT_IDX_DIR,
    dataset: str | None = None,
    output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
    model_name: str = DEFAULT_MODEL_NAME,
    subset_name: str = DEFAULT_SUBSET_NAME,
    pretrain_size: int = DEFAULTS["pretrain_size"],
    pool_per_class: int = DEFAULTS["pool_per_class"],
    test_per_class: int = DEFAULTS["test_per_class"],
    steps: int = DEFAULTS["steps"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    weight_decay: float = DEFAULTS["weight_decay"],
    warmup_ratio: float = DEFAULTS["warmup_ratio"],
    vocab_size: int = DEFAULTS["vocab_size"],
    seed: int = DEFAULTS["seed"],
    image_size: int = DEFAULTS["image_size"],
    patch_size: int = DEFAULTS["patch_size"],
    vision_hidden: int = DEFAULTS["vision_hidden"],
    vision_layers: int = DEFAULTS["vision_layers"],
    vision_heads: int = DEFAULTS["vision_heads"],
    text_hidden: int = DEFAULTS["text_hidden"],
    text_layers: int = DEFAULTS["text_layers"],
    text_heads: int = DEFAULTS["text_heads"],
    max_position_embeddings: int = DEFAULTS["max_position_embeddings"],
    projection_dim: int = DEFAULTS["projection_dim"],
    caption_noise: str | dict = DEFAULTS["caption_noise"],
    probe_shots: str | Sequence[int] = DEFAULTS["probe_shots"],
    threads: int = DEFAULTS["threads"],
    cache_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Build the embedded model and data subset; returns ``{"model_dir", "dataset_dir", "build_info"}``.

    ``threads`` torch CPU threads are used during the build (0: torch's choice), then the previous
    setting is restored. The build is seeded and bit-for-bit reproducible for a given thread count
    on a given kind of CPU; another thread count changes the order of floating-point sums, hence
    the weights and the numbers slightly.
    """
    from transformers import CLIPModel

    params = {k: v for k, v in locals().items() if k in DEFAULTS}
    params["output_dir"] = str(output_dir)
    start = time.time()
    load_start = _load_average()
    torch.manual_seed(seed)
    np.random.seed(seed)

    def log(msg: str) -> None:
        print(f"[build {time.time() - start:6.1f}s] {msg}", flush=True)

    check_card_templates()  # before minutes of pre-training, not after

    # 1. Source data and splits.
    if dataset:
        source = load_image_classification_dataset(dataset, cache_dir=cache_dir)
    else:
        source = load_fashion_mnist_idx(idx_dir)
    class_names = source.class_names
    noise = resolve_caption_noise(caption_noise, class_names)
    caption_names, caption_probs = caption_distribution(noise, class_names)
    shots = _parse_shots(probe_shots)
    splits = make_splits(source, pretrain_size, pool_per_class, test_per_class, seed)
    log(
        f"{source.description}: {len(class_names)} classes; pre-training {len(splits.pretrain[1])}, "
        f"pool {len(splits.pool[1])}, test {len(splits.test[1])}"
    )

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=output_dir))
    try:
        model_dir = staging / model_name
        data_dir = staging / subset_name
        model_dir.mkdir()
        data_dir.mkdir()

        # 2. Few-shot pool and test split, as Parquet.
        written = {}
        for part, (split_name, idx) in (("train", splits.pool), ("test", splits.test)):
            src = source.splits[split_name]
            write_parquet_split(data_dir / f"{part}.parquet", src.get_images(idx), src.labels[idx], class_names)
            written[part] = len(idx)

        # 3. Tokenizer (trained on every caption) and image processor (pre-training statistics).
        corpus = [t.format(c) for c in caption_names for t in CAPTION_TEMPLATES]
        corpus += [ZERO_SHOT_TEMPLATE.format(c) for c in caption_names]  # class names, then noise-only names
        tokenizer = train_clip_tokenizer(corpus, vocab_size=vocab_size, model_max_length=max_position_embeddings)
        save_tokenizer(tokenizer, model_dir)
        pre_split = source.splits[splits.pretrain[0]]
        pre_images = pre_split.get_images(splits.pretrain[1])
        mean, std = pixel_stats(pre_images, image_size)
        image_processor = make_image_processor(image_size, mean, std)
        image_processor.save_pretrained(model_dir)
        pixel_values = preprocess_images(image_processor, pre_images)
        del pre_images
        pre_labels = torch.as_tensor(pre_split.labels[splits.pretrain[1]], dtype=torch.long)
        spec = caption_noise if isinstance(caption_noise, str) else "custom"
        log(f"caption noise ({spec}): {_noise_text(noise) or 'none'}")
        log(f"tokenizer: {len(tokenizer)} tokens; pixels {tuple(pixel_values.shape)}, mean {mean}, std {std}")

        # 4. Model and contrastive pre-training.
        size = ModelSize(
            image_size=image_size,
            patch_size=patch_size,
            vision_hidden=vision_hidden,
            vision_layers=vision_layers,
            vision_heads=vision_heads,
            text_hidden=text_hidden,
            text_layers=text_layers,
            text_heads=text_heads,
            max_position_embeddings=max_position_embeddings,
            projection_dim=projection_dim,
        )
        torch.manual_seed(seed)
        model = CLIPModel(make_clip_config(size, tokenizer))
        caption_ids, caption_mask = tokenize_captions(
            tokenizer, caption_names, CAPTION_TEMPLATES, max_position_embeddings
        )
        train_start = time.time()
        losses, caption_counts = pretrain_clip(
            model,
            pixel_values,
            pre_labels,
            caption_ids,
            caption_mask,
            caption_probs=torch.as_tensor(caption_probs),
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            warmup_ratio=warmup_ratio,
            seed=seed,
            progress=progress,
        )
        train_seconds = time.time() - train_start
        log(f"pre-training: {steps} steps in {train_seconds:.0f}s, final loss {np.mean(losses[-20:]):.3f}")
        model.save_pretrained(model_dir, safe_serialization=True)

        overlap = len(np.intersect1d(splits.pretrain[1], splits.pool[1])) if splits.pretrain[0] == splits.pool[0] else 0
        if overlap:  # pragma: no cover - make_splits guarantees it
            raise RuntimeError("pre-training images overlap the few-shot pool")

        # 5. Zero-shot evaluation of the saved artefacts, build info and cards.
        zero_shot = zero_shot_evaluate(model_dir, data_dir)
        probe = linear_probe_evaluate(model_dir, data_dir, shots=shots, seed=seed)
        safetensors_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
        import transformers

        info = {
            "model_name": model_name,
            "subset_name": subset_name,
            "command": _command_line(params),
            "seed": seed,
            "source": source.provenance,
            "source_description": source.description,
            "class_names": class_names,
            "caption_templates": CAPTION_TEMPLATES,
            "zero_shot_template": ZERO_SHOT_TEMPLATE,
            "sizes": {"pretrain": int(len(splits.pretrain[1])), "pool": written["train"], "test": written["test"]},
            "pool_per_class": pool_per_class,
            "test_per_class": test_per_class,
            "splits": {
                "pretrain_from": splits.pretrain[0],
                "pool_from": splits.pool[0],
                "test_from": splits.test[0],
            },
            "model_size": size.__dict__,
            "num_parameters": int(sum(p.numel() for p in model.parameters())),
            "safetensors_bytes": int(safetensors_bytes),
            "vocab_size": len(tokenizer),
            "num_merges": len(json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]),
            "eos_token_id": tokenizer.eos_token_id,
            "image_mean": mean,
            "image_std": std,
            "training": {
                "steps": steps,
                "batch_size": min(batch_size, int(len(splits.pretrain[1]))),
                "lr": lr,
                "weight_decay": weight_decay,
                "warmup_ratio": warmup_ratio,
                "final_loss": float(np.mean(losses[-20:])),
                "loss_every_10_steps": [round(float(x), 4) for x in losses[::10]],
                "seconds": round(train_seconds, 1),
            },
            "caption_noise": {
                "spec": caption_noise if isinstance(caption_noise, str) else "custom",
                "map": noise,
                "caption_names": caption_names,
                "probabilities": [[round(float(p), 6) for p in row] for row in caption_probs],
                # Captions actually drawn during pre-training: counts[true class][caption name].
                "drawn_counts": caption_counts.tolist(),
            },
            "zero_shot": zero_shot,
            "linear_probe": probe,
            "build_seconds": round(time.time() - start, 1),
            "environment": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "load_average_start": load_start,
                "load_average_end": _load_average(),
            },
            # Indices into the source splits named in "splits" (the pre-training ones by digest only).
            "source_indices": {
                "pool": splits.pool[1].tolist(),
                "test": splits.test[1].tolist(),
                "pretrain_sha256": hashlib.sha256(
                    ",".join(map(str, splits.pretrain[1].tolist())).encode()
                ).hexdigest(),
                "pretrain_pool_overlap": overlap,
            },
        }
        _write_json(model_dir / BUILD_INFO_NAME, info)
        write_model_card(model_dir, info)
        write_dataset_card(data_dir, info)

        # 6. Install atomically.
        for path in staging.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        final_model, final_data = output_dir / model_name, output_dir / subset_name
        _install(model_dir, final_model)
        _install(data_dir, final_data)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    print(
        f"\nzero-shot accuracy ({ZERO_SHOT_TEMPLATE!r}) on {zero_shot['total']} test images: "
        f"{zero_shot['accuracy'] * 100:.2f} % ({zero_shot['correct']}/{zero_shot['total']})"
    )
    print("top confused pairs (true -> predicted: count):")
    print(confusions_text(zero_shot["top_confusions"]))
    print(
        "zero-shot vs logistic-regression probes on the frozen image features "
        f"(k images per class from {final_data.name}/train.parquet, seed {seed}; test: {final_data.name}/test.parquet):"
    )
    print(probe_table(probe))
    print(f"wrote {final_model} and {final_data} in {time.time() - start:.0f}s")
    return {"model_dir": final_model, "dataset_dir": final_data, "build_info": final_model / BUILD_INFO_NAME}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_argument_group("source data")
    src.add_argument("--idx_dir", default=DEFAULTS["idx_dir"], help="folder with Fashion-MNIST's four IDX .gz files")
    src.add_argument(
        "--dataset",
        default=None,
        help="build from a `datasets` image-classification dataset instead (Hub id, local dataset "
        "directory, or Parquet file / glob) with an `image` column and a ClassLabel `label` column",
    )
    src.add_argument("--cache_dir", default=None, help="datasets cache directory for --dataset")
    out = p.add_argument_group("outputs")
    out.add_argument("--output_dir", default=DEFAULTS["output_dir"])
    out.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    out.add_argument("--subset_name", default=DEFAULT_SUBSET_NAME)
    sizes = p.add_argument_group("splits")
    sizes.add_argument("--pretrain_size", type=int, default=DEFAULTS["pretrain_size"])
    sizes.add_argument("--pool_per_class", type=int, default=DEFAULTS["pool_per_class"])
    sizes.add_argument("--test_per_class", type=int, default=DEFAULTS["test_per_class"])
    tr = p.add_argument_group("pre-training")
    tr.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    tr.add_argument("--batch_size", type=int, default=DEFAULTS["batch_size"])
    tr.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    tr.add_argument("--weight_decay", type=float, default=DEFAULTS["weight_decay"])
    tr.add_argument("--warmup_ratio", type=float, default=DEFAULTS["warmup_ratio"])
    tr.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    m = p.add_argument_group("model")
    m.add_argument("--vocab_size", type=int, default=DEFAULTS["vocab_size"], help="upper bound on the BPE vocabulary")
    for key in (
        "image_size",
        "patch_size",
        "vision_hidden",
        "vision_layers",
        "vision_heads",
        "text_hidden",
        "text_layers",
        "text_heads",
        "max_position_embeddings",
        "projection_dim",
    ):
        m.add_argument(f"--{key}", type=int, default=DEFAULTS[key])
    noise = p.add_argument_group("caption noise and evaluation")
    noise.add_argument(
        "--caption_noise",
        default=DEFAULTS["caption_noise"],
        help="'default' (the built-in map for Fashion-MNIST's class names; no noise for other datasets), "
        "'none', or a JSON object {true class: {caption name: rate}} (inline or a .json file), e.g. "
        '\'{"shirt": {"t-shirt": 0.6}}\': each pre-training caption of a shirt image names a t-shirt '
        "with probability 0.6",
    )
    noise.add_argument(
        "--probe_shots",
        default=DEFAULTS["probe_shots"],
        help="images per class of the linear probes evaluated at the end (comma-separated; 'none' for none)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=DEFAULTS["threads"],
        help="torch CPU threads during the build (0: torch's choice); the model is bit-for-bit "
        "reproducible for a given thread count on a given kind of CPU",
    )
    p.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    return p.parse_args(argv)


def main(argv=None) -> dict[str, Path]:
    args = vars(parse_args(argv))
    progress = not args.pop("no_progress")
    try:
        return build_embedded_default(**args, progress=progress)
    except (FileNotFoundError, ValueError) as err:
        if argv is not None:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
