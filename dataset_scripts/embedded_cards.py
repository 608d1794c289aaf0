"""The model card and the dataset card of the embedded default, filled in from its build info.

Their text is in ``hub_cards/embedded_model_card.md`` and ``hub_cards/embedded_dataset_card.md``
(``str.format`` templates, as ``trainers/hub.py`` fills ``hub_cards/capt_model_card.md``); this
module computes the values that go into them from ``build_info.json``, so a card can be rendered
again from a finished build (``render_model_card``, ``render_dataset_card``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dataset_scripts.embedded_data import FASHION_MNIST_CLASSES, FASHION_MNIST_CREDIT
from dataset_scripts.embedded_eval import confusions_text, planted_confusions, probe_table


#: The build's record, written next to the model; the cards are filled in from it and point readers to it.
BUILD_INFO_NAME = "build_info.json"

#: The card templates, in the repository's ``hub_cards/`` folder (beside this package).
HUB_CARDS_DIR = Path(__file__).resolve().parent.parent / "hub_cards"
MODEL_CARD_TEMPLATE = HUB_CARDS_DIR / "embedded_model_card.md"
DATASET_CARD_TEMPLATE = HUB_CARDS_DIR / "embedded_dataset_card.md"

#: Why the default build uses caption noise (the model card quotes it when the build has caption noise).
NOISE_RATIONALE = """Why: a CLIP pre-trained on clean class-name captions of Fashion-MNIST is just a 10-way
classifier whose zero-shot head is as good as any probe on its features, so few-shot adaptation
has nothing to learn: the same build with `--caption_noise none` reaches 87.8 % zero-shot, and
its 16-shot linear probes score 88.6 % against 88.0 % zero-shot on the base classes, 96.2 %
against 96.4 % on the novel ones. Real CLIP models learn from web captions,
which often name a related product ("t-shirt" for a shirt, "sneakers" for sandals): their visual
features are rich, but the text embeddings of look-alike classes are misplaced, so zero-shot
errors concentrate on fixed pairs of look-alikes, and few-shot linear probes or prompt tuning
beat zero-shot by 10-20 points. The noise map reproduces that: pullover -> coat among the base
classes and sandal -> sneaker among the novel ones (CoOp's base-to-novel halves), shirt ->
t-shirt across the halves (it shows in 10-way classification), and a lighter ankle boot ->
sneaker that only blurs that pair. A noisy class's own name still appears in a fifth to a
quarter of its captions, and never in another class's, so the vision tower learns to tell the
two classes apart: only the text side is wrong.

How: each time an image is drawn during pre-training, its caption names the look-alike with the
rate above (else its own class), in a random template. The contrastive loss has one column per
distinct caption text of the batch, and captions that name the same thing are positives of each
other whatever the images' true labels, which the loss never sees. Its image-to-text half then
estimates how often an image is captioned with each name (the majority name wins), its
text-to-image half the names' pointwise mutual information with the image (which discounts
frequent names, so the rarely used own name wins); cosine logits cannot satisfy both, and the
trained model sits in between. That is why the rates are well above one half: in a trial at
0.6, 82 % of the sandals were still classified correctly. (With one column per image and repeated
captions, InfoNCE would learn the mutual information alone, and the noise would barely show.)
Give other rates as JSON, e.g. `--caption_noise '{"shirt": {"t-shirt": 0.7}}'`."""

#: The model card's opening paragraph for a build with caption noise (a ``str.format`` template).
_NOISY_INTRO = """It reproduces, in miniature, the situation CAPT (confusion-aware prompt tuning) addresses:
**rich visual features, misaligned with the text**. Its pre-training captions were made noisy
the way web captions are: a fixed share of the images of some classes are captioned with the
name of a look-alike class (table below). The image features still separate the classes (a
logistic-regression probe on them, fitted on {first_k} images per class, beats zero-shot by
{base_gain} on the base classes and {novel_gain} on the novel ones), while the class-name text
embeddings sit on the wrong side of the look-alike pairs, so that zero-shot classification makes
fixed, systematic confusions ({pairs}). Few-shot adaptation (a linear probe, CoOp, CAPT) can
repair them, which is what the package's demo is meant to show."""

#: The model card's opening paragraph for a build without caption noise.
_CLEAN_INTRO = """It was built without caption noise, so its zero-shot errors are the dataset's natural
confusions only."""


def check_card_templates() -> None:
    """Raise ``FileNotFoundError`` unless both card templates are there (checked before a build, not after it)."""
    missing = [str(p) for p in (MODEL_CARD_TEMPLATE, DATASET_CARD_TEMPLATE) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"card template(s) not found: {', '.join(missing)}; run the build from a checkout of the capt repository"
        )


def _is_fashion_mnist(info: dict) -> bool:
    return info["source"].get("source") == "fashion-mnist-idx" or info["class_names"] == FASHION_MNIST_CLASSES


def _credit(info: dict) -> str:
    if _is_fashion_mnist(info):
        return FASHION_MNIST_CREDIT
    return f"Source: {info['source_description']} (see its own licence)."


def _yaml_dump(data) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _load_text(env: dict) -> str:
    start, end = env.get("load_average_start") or [], env.get("load_average_end") or []
    if not start or not end:
        return ""
    return f" (1-minute load average {start[0]:.1f} at the start of the build, {end[0]:.1f} at its end)"


def _planted_share_text(info: dict) -> str:
    if not info["caption_noise"]["map"]:
        return ""
    planted, errors = planted_confusions(info)
    return (
        f"\nThe pairs the caption noise plants (below) account for {planted} of the {errors} errors "
        f"({planted / max(1, errors) * 100:.0f} %).\n"
    )


def _noise_table(info: dict) -> str:
    noise = info["caption_noise"]
    if not noise["map"]:
        return (
            "None: every caption names the image's own class "
            "(`--caption_noise none`, or no built-in map for this dataset)."
        )
    names = noise["caption_names"]
    counts = np.asarray(noise["drawn_counts"])
    rows = [
        "| images of | captioned as | rate | drawn during pre-training |",
        "|---|---|---|---|",
    ]
    for true, targets in noise["map"].items():
        c = names.index(true)
        total = int(counts[c].sum())
        for target, rate in targets.items():
            got = int(counts[c, names.index(target)])
            share = f"{got:,} of {total:,} captions ({got / max(1, total) * 100:.1f} %)"
            rows.append(f"| {true} | {target} | {rate * 100:.0f} % | {share} |")
    return "\n".join(rows)



def render_model_card(info: dict) -> str:
    """The model folder's README.md for the build recorded in ``info`` (its build_info.json)."""
    names = info["class_names"]
    is_fashion = _is_fashion_mnist(info)
    zs = info["zero_shot"]
    probe = info["linear_probe"]
    training = info["training"]
    environment = info["environment"]
    meta = {
        "library_name": "transformers",
        "pipeline_tag": "zero-shot-image-classification",
        "license": "mit" if is_fashion else "other",
        "tags": ["clip", "capt", "toy", "tiny"] + (["fashion-mnist"] if is_fashion else []),
    }
    groups = probe["groups"]
    first_k = str(probe["shots"][0]) if probe["shots"] else None

    def gain(group: str) -> str:
        entry = groups.get(group)
        if entry is None or first_k is None:
            return "n/a"
        return f"{(entry['linear_probe'][first_k]['accuracy'] - entry['zero_shot']) * 100:+.1f} points"

    if info["caption_noise"]["map"]:
        pairs = ", ".join(f"{p['true']} -> {p['predicted']}" for p in zs["top_confusions"][:3])
        intro = _NOISY_INTRO.format(first_k=first_k, base_gain=gain("base"), novel_gain=gain("novel"), pairs=pairs)
        noise_rationale = NOISE_RATIONALE
    else:
        intro, noise_rationale = _CLEAN_INTRO, ""
    text = MODEL_CARD_TEMPLATE.read_text(encoding="utf-8").format(
        metadata=_yaml_dump(meta),
        model_name=info["model_name"],
        subset_name=info["subset_name"],
        num_parameters=info["num_parameters"],
        safetensors_mb=info["safetensors_bytes"] / 1e6,
        source_description=info["source_description"],
        num_classes=len(names),
        intro=intro,
        zero_shot_total=zs["total"],
        zero_shot_template=zs["template"],
        zero_shot_percent=zs["accuracy"] * 100,
        zero_shot_correct=zs["correct"],
        chance_percent=100 / len(names),
        top_confusions=confusions_text(zs["top_confusions"]),
        planted_share=_planted_share_text(info),
        per_class_rows="\n".join(f"| {c} | {a * 100:.1f} |" for c, a in zs["per_class_accuracy"].items()),
        num_base_classes=len(groups["base"]["classes"]) if "base" in groups else 0,
        probe_l2=probe["l2"],
        probe_seed=probe["seed"],
        probe_table=probe_table(probe),
        noise_table=_noise_table(info),
        noise_rationale=noise_rationale,
        command=info["command"],
        seed=info["seed"],
        build_seconds=info["build_seconds"],
        training_seconds=training["seconds"],
        cpu_count=environment["cpu_count"],
        load_average=_load_text(environment),
        torch_threads=environment["torch_threads"],
        torch_version=environment["torch"],
        transformers_version=environment["transformers"],
        build_info_name=BUILD_INFO_NAME,
        pretrain_images=info["sizes"]["pretrain"],
        pool_images=info["sizes"]["pool"],
        test_images=info["sizes"]["test"],
        pretrain_from=info["splits"]["pretrain_from"],
        test_from=info["splits"]["test_from"],
        num_caption_templates=len(info["caption_templates"]),
        caption_templates="; ".join(f"`{t}`" for t in info["caption_templates"]),
        vocab_size=info["vocab_size"],
        num_merges=info["num_merges"],
        image_mean=info["image_mean"],
        image_std=info["image_std"],
        eos_token_id=info["eos_token_id"],
        lr=training["lr"],
        weight_decay=training["weight_decay"],
        steps=training["steps"],
        batch_size=training["batch_size"],
        epochs=training["steps"] * training["batch_size"] / max(1, info["sizes"]["pretrain"]),
        warmup_percent=training["warmup_ratio"] * 100,
        final_loss=training["final_loss"],
        credit=_credit(info),
        **info["model_size"],  # image_size, patch_size, vision_hidden, ...: the ModelSize fields
    )
    # An empty paragraph (no caption noise: no share of planted errors, no rationale) leaves a run of blank lines.
    return re.sub(r"\n{3,}", "\n\n", text)


def render_dataset_card(info: dict, data_dir: str | Path) -> str:
    """The subset folder's README.md for the build recorded in ``info``; the splits' Arrow sizes are read from the
    Parquet files in ``data_dir``."""
    import pyarrow.parquet as pq

    data_dir = Path(data_dir)
    names = info["class_names"]
    is_fashion = _is_fashion_mnist(info)
    meta = {
        "license": "mit" if is_fashion else "other",
        "pretty_name": info["subset_name"],
        "task_categories": ["image-classification"],
        "size_categories": ["1K<n<10K"],
        "tags": ["capt", "few-shot", "toy"] + (["fashion-mnist"] if is_fashion else []),
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": "train", "path": "train.parquet"},
                    {"split": "test", "path": "test.parquet"},
                ],
            }
        ],
        "dataset_info": {
            "features": [
                {"name": "image", "dtype": "image"},
                {"name": "label", "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(names)}}}},
            ],
            # num_bytes (the Arrow size, read back from the written Parquet): without it `datasets` calls the
            # card's splits malformed and drops them
            "splits": [
                {"name": split, "num_bytes": pq.read_table(data_dir / f"{split}.parquet").nbytes,
                 "num_examples": info["sizes"][size]}
                for split, size in (("train", "pool"), ("test", "test"))
            ],
        },
    }
    return DATASET_CARD_TEMPLATE.read_text(encoding="utf-8").format(
        metadata=_yaml_dump(meta),
        subset_name=info["subset_name"],
        model_name=info["model_name"],
        pool_images=info["sizes"]["pool"],
        pool_from=info["splits"]["pool_from"],
        pool_per_class=info["pool_per_class"],
        test_images=info["sizes"]["test"],
        test_from=info["splits"]["test_from"],
        test_per_class=info["test_per_class"],
        class_names=", ".join(f"`{n}`" for n in names),
        seed=info["seed"],
        command=info["command"],
        build_info_name=BUILD_INFO_NAME,
        credit=_credit(info),
    )


def write_model_card(out_dir: Path, info: dict) -> None:
    """Write ``render_model_card(info)`` as ``out_dir/README.md``."""
    (Path(out_dir) / "README.md").write_text(render_model_card(info), encoding="utf-8")


def write_dataset_card(out_dir: Path, info: dict) -> None:
    """Write the dataset card of the subset folder ``out_dir`` (holding its Parquet files) as ``out_dir/README.md``."""
    (Path(out_dir) / "README.md").write_text(render_dataset_card(info, out_dir), encoding="utf-8")
