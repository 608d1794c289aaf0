"""The model card and the dataset card of the embedded default, written from its build info."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dataset_scripts.embedded_data import FASHION_MNIST_CLASSES, FASHION_MNIST_CREDIT
from dataset_scripts.embedded_eval import confusions_text, planted_confusions, probe_table


#: The build's record, written next to the model; the cards are filled in from it and point readers to it.
BUILD_INFO_NAME = "build_info.json"

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



def _yaml_dump(data) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def write_dataset_card(out_dir: Path, info: dict) -> None:
    import pyarrow.parquet as pq

    names = info["class_names"]
    is_fashion = info["source"].get("source") == "fashion-mnist-idx" or names == FASHION_MNIST_CLASSES
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
                {"name": split, "num_bytes": pq.read_table(out_dir / f"{split}.parquet").nbytes,
                 "num_examples": info["sizes"][size]}
                for split, size in (("train", "pool"), ("test", "test"))
            ],
        },
    }
    credit = FASHION_MNIST_CREDIT if is_fashion else f"Source: {info['source_description']} (see its own licence)."
    body = f"""# {info["subset_name"]}

A small, fixed image-classification subset shipped inside the `capt` repository so that the
package's few-shot prompt-tuning job, its examples and its tests run with no download. It goes
with the toy CLIP model `{info["model_name"]}` (the sibling folder), which was pre-trained on other
images of the same source.

| split | images | drawn from |
|---|---|---|
| `train` | {info["sizes"]["pool"]} | the source's `{info["splits"]["pool_from"]}` split, {info["pool_per_class"]} per class: the few-shot **pool** (sample k shots per class from it); disjoint from the model's pre-training images |
| `test` | {info["sizes"]["test"]} | the source's `{info["splits"]["test_from"]}` split, {info["test_per_class"]} per class |

Columns: `image` (`datasets.Image()`, PNG bytes) and `label` (`ClassLabel`), with the classes, in label order:
{", ".join(f"`{n}`" for n in names)}.

```python
from datasets import load_dataset
ds = load_dataset("embedded/{info["subset_name"]}")          # this folder
# or: load_dataset("parquet", data_files={{"train": ".../train.parquet", "test": ".../test.parquet"}})
```

Built (seed {info["seed"]}, sampling per class with `numpy.random.default_rng`) by:

```bash
{info["command"]}
```

The source indices of the images are recorded in `../{info["model_name"]}/{BUILD_INFO_NAME}` (`source_indices`).

## Licence and credit

{credit}
"""
    (out_dir / "README.md").write_text(f"---\n{_yaml_dump(meta)}---\n\n{body}", encoding="utf-8")


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


def write_model_card(out_dir: Path, info: dict) -> None:
    names = info["class_names"]
    is_fashion = info["source"].get("source") == "fashion-mnist-idx" or names == FASHION_MNIST_CLASSES
    zs = info["zero_shot"]
    probe = info["linear_probe"]
    noisy = bool(info["caption_noise"]["map"])
    meta = {
        "library_name": "transformers",
        "pipeline_tag": "zero-shot-image-classification",
        "license": "mit" if is_fashion else "other",
        "tags": ["clip", "capt", "toy", "tiny"] + (["fashion-mnist"] if is_fashion else []),
    }
    size = info["model_size"]
    credit = FASHION_MNIST_CREDIT if is_fashion else f"Source: {info['source_description']} (see its own licence)."
    per_class = "\n".join(f"| {c} | {a * 100:.1f} |" for c, a in zs["per_class_accuracy"].items())
    groups = probe["groups"]
    first_k = str(probe["shots"][0]) if probe["shots"] else None

    def gain(group: str) -> str:
        entry = groups.get(group)
        if entry is None or first_k is None:
            return "n/a"
        return f"{(entry['linear_probe'][first_k]['accuracy'] - entry['zero_shot']) * 100:+.1f} points"

    pairs = ", ".join(f"{p['true']} -> {p['predicted']}" for p in zs["top_confusions"][:3])
    if noisy:
        intro = f"""It reproduces, in miniature, the situation CAPT (confusion-aware prompt tuning) addresses:
**rich visual features, misaligned with the text**. Its pre-training captions were made noisy
the way web captions are: a fixed share of the images of some classes are captioned with the
name of a look-alike class (table below). The image features still separate the classes (a
logistic-regression probe on them, fitted on {first_k} images per class, beats zero-shot by
{gain("base")} on the base classes and {gain("novel")} on the novel ones), while the class-name text
embeddings sit on the wrong side of the look-alike pairs, so that zero-shot classification makes
fixed, systematic confusions ({pairs}). Few-shot adaptation (a linear probe, CoOp, CAPT) can
repair them, which is what the package's demo is meant to show."""
    else:
        intro = """It was built without caption noise, so its zero-shot errors are the dataset's natural
confusions only."""

    body = f"""# {info["model_name"]}

**A toy for demos and CI, not a real CLIP.** This is a genuine `transformers.CLIPModel`
({info["num_parameters"]:,} parameters, {info["safetensors_bytes"] / 1e6:.1f} MB of safetensors) that we
pre-trained contrastively, from scratch, in a few minutes on a CPU, on {info["sizes"]["pretrain"]:,}
images of {info["source_description"]} paired with template captions ("a photo of a sneaker.").
It knows only the {len(names)} class names below and nothing about the visual world; do not use it
for anything but exercising code paths (the `capt` package's few-shot prompt tuning, its examples
and its tests) without a download.

{intro}

## Zero-shot accuracy

On the `test` split of the sibling dataset folder `{info["subset_name"]}` ({zs["total"]} images), with the
prompt `{zs["template"]}`: **{zs["accuracy"] * 100:.2f} %** ({zs["correct"]} / {zs["total"]}; chance is {100 / len(names):.0f} %).

Top confused pairs (true -> predicted: count):

```
{confusions_text(zs["top_confusions"])}
```
{_planted_share_text(info)}

| class | accuracy (%) |
|---|---|
{per_class}

## Frozen image features versus zero-shot

On the same test images, per group of classes (CoOp's base-to-novel split: the first
{len(groups["base"]["classes"]) if "base" in groups else 0} labels are the base classes, the others novel; zero-shot chooses among
the group's class names only, as base-to-novel evaluation does), against a logistic-regression
probe (L2 penalty {probe["l2"]}, full-batch L-BFGS in float64) on the L2-normalised image features
(`get_image_features`) of k images per class drawn with seed {probe["seed"]} from the `train` split (the
few-shot pool, disjoint from the pre-training images):

{probe_table(probe)}

The build script computes and prints this table at its end (the command below).

## Caption noise

{_noise_table(info)}

{NOISE_RATIONALE if noisy else ""}

## Use

```python
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel
from datasets import load_dataset

model = CLIPModel.from_pretrained("embedded/{info["model_name"]}")
tokenizer = AutoTokenizer.from_pretrained("embedded/{info["model_name"]}")
image_processor = AutoImageProcessor.from_pretrained("embedded/{info["model_name"]}")
test = load_dataset("embedded/{info["subset_name"]}", split="test")
```

## How it was built

```bash
{info["command"]}
```

(seed {info["seed"]}; {info["build_seconds"]:.0f} s wall time, {info["training"]["seconds"]:.0f} s of it pre-training, on a machine with
{info["environment"]["cpu_count"]} CPU cores{_load_text(info["environment"])},
{info["environment"]["torch_threads"]} torch thread(s), torch {info["environment"]["torch"]}, transformers {info["environment"]["transformers"]};
every number above is in `{BUILD_INFO_NAME}`).

- **Data.** {info["sizes"]["pretrain"]:,} pre-training images drawn from the source's
  `{info["splits"]["pretrain_from"]}` split; the few-shot pool ({info["sizes"]["pool"]} images) and the
  pre-training images are disjoint; the test images ({info["sizes"]["test"]}) come from the `{info["splits"]["test_from"]}` split.
- **Captions.** Made afresh every time an image is drawn: a caption name (the image's class, or
  a look-alike's with the caption-noise rates above) in one of {len(info["caption_templates"])} templates drawn at random:
  {"; ".join(f"`{t}`" for t in info["caption_templates"])}.
- **Tokenizer.** CLIP-style byte-level BPE (lower-case, `</w>` end-of-word suffix, CLIP's
  pre-tokenisation), trained on the captions with the `tokenizers` library: {info["vocab_size"]} tokens
  (256 bytes, the same with `</w>`, {info["num_merges"]} merges, `<|startoftext|>` / `<|endoftext|>`; the
  latter is also the padding token). Any text tokenizes; unseen words fall back to bytes.
  Loads as `CLIPTokenizer` / `AutoTokenizer`; `model_max_length` {size["max_position_embeddings"]}.
- **Image processor.** `CLIPImageProcessor`: RGB conversion, bicubic resize of the shortest edge
  to {size["image_size"]}, centre crop {size["image_size"]}x{size["image_size"]}, rescale to [0, 1], normalisation with the
  per-channel mean {info["image_mean"]} and std {info["image_std"]} of the pre-training images (not
  CLIP's ImageNet statistics). Grayscale images are fine (converted to RGB).
- **Model.** ViT vision tower: {size["image_size"]}x{size["image_size"]} input, patch {size["patch_size"]}, width {size["vision_hidden"]},
  {size["vision_layers"]} layers, {size["vision_heads"]} heads; text transformer: width {size["text_hidden"]}, {size["text_layers"]} layers,
  {size["text_heads"]} heads, {size["max_position_embeddings"]} positions; projection {size["projection_dim"]}; `quick_gelu`; EOS pooling
  by `eos_token_id` {info["eos_token_id"]}.
- **Training.** Symmetric InfoNCE over the batch's distinct captions (one logit column per
  distinct caption text; captions with the same drawn name, whatever the template, are positives
  of each other; the true labels are never used), learnable temperature, AdamW (lr
  {info["training"]["lr"]}, weight decay {info["training"]["weight_decay"]}), {info["training"]["steps"]} steps of batch {info["training"]["batch_size"]}
  ({info["training"]["steps"] * info["training"]["batch_size"] / max(1, info["sizes"]["pretrain"]):.1f} epochs), linear warm-up over {info["training"]["warmup_ratio"] * 100:.0f} % then cosine
  decay; final loss {info["training"]["final_loss"]:.3f}.

## Licence and credit

{credit} The model weights are released under the same licence as the data they were trained on.
"""
    body = re.sub(r"\n{3,}", "\n\n", body)
    (out_dir / "README.md").write_text(f"---\n{_yaml_dump(meta)}---\n\n{body}", encoding="utf-8")
