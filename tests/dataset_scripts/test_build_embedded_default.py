"""Tests of the embedded default model and data (``dataset_scripts/build_embedded_default.py`` and the
``dataset_scripts/embedded_*.py`` modules it runs).

(a) a reduced end-to-end rebuild from the shipped Parquet subset (no Debian package needed);
(b) the IDX reader on tiny IDX files written here;
(c) the shipped ``embedded/`` artefacts load and reproduce the zero-shot and linear-probe numbers
    of build_info.json, in the intended regime (modest zero-shot accuracy, systematic confusions,
    frozen image features clearly better than zero-shot), and their cards are what the templates in
    ``hub_cards/`` render from that build_info.json;
(d) clear errors for datasets without an ``image`` column or a ClassLabel ``label`` column;
(e) the caption noise: parsing, the drawn rates, and that the loss follows the captions, not the labels.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset_scripts import build_embedded_default as bed
from dataset_scripts import embedded_cards
from dataset_scripts.embedded_captions import (
    CAPTION_TEMPLATES,
    FASHION_MNIST_CAPTION_NOISE,
    caption_distribution,
    draw_caption_names,
    resolve_caption_noise,
)
from dataset_scripts.embedded_cards import BUILD_INFO_NAME, render_dataset_card, render_model_card
from dataset_scripts.embedded_data import (
    FASHION_MNIST_CLASSES,
    load_fashion_mnist_idx,
    load_image_classification_dataset,
    make_splits,
    read_idx,
    write_idx,
)
from dataset_scripts.embedded_eval import (
    linear_probe_evaluate,
    planted_confusions,
    probe_table,
    top_confusions,
    zero_shot_evaluate,
)
from dataset_scripts.embedded_pretrain import ModelSize, make_clip_config, pretrain_clip, tokenize_captions
from dataset_scripts.embedded_processors import train_clip_tokenizer
from conftest import REPO_ROOT


REPO = Path(REPO_ROOT)
EMBEDDED = REPO / "embedded"
SHIPPED_MODEL = EMBEDDED / bed.DEFAULT_MODEL_NAME
SHIPPED_DATA = EMBEDDED / bed.DEFAULT_SUBSET_NAME

# A reduced build: about 10 s of pre-training on 2 CPU cores, from the shipped subset.
REDUCED_ARGS = [
    "--pretrain_size", "800",
    "--pool_per_class", "10",
    "--test_per_class", "30",
    "--steps", "100",
    "--batch_size", "128",
    "--lr", "2e-3",
    "--vision_hidden", "32",
    "--vision_layers", "2",
    "--vision_heads", "2",
    "--text_hidden", "32",
    "--text_layers", "1",
    "--text_heads", "2",
    "--model_name", "tiny-model",
    "--subset_name", "tiny-subset",
    "--probe_shots", "4",
    "--threads", "1",
    "--no_progress",
]  # fmt: skip
CHANCE = 1 / len(FASHION_MNIST_CLASSES)
MIN_REDUCED_ACCURACY = 0.35  # shuffled labels or a broken text/image path sit near 10 %


def _load_parquet_splits(data_dir: Path, cache_dir: Path):
    from datasets import load_dataset

    return load_dataset(
        "parquet",
        data_files={"train": str(data_dir / "train.parquet"), "test": str(data_dir / "test.parquet")},
        cache_dir=str(cache_dir),
    )


@torch.no_grad()
def _independent_zero_shot(model_dir: Path, test_split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero-shot predictions, labels and logits with the public API only (one batch, "a photo of a {}.")."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    image_processor = AutoImageProcessor.from_pretrained(model_dir)
    names = test_split.features["label"].names
    text = tokenizer([f"a photo of a {n}." for n in names], padding=True, return_tensors="pt")
    pixels = image_processor(images=list(test_split["image"]), return_tensors="pt")["pixel_values"]
    logits = model(**text, pixel_values=pixels).logits_per_image
    return logits.argmax(-1).numpy(), np.asarray(test_split["label"]), logits.numpy()


# ------------------------------------------------------------------------------------------
# (a) reduced end-to-end rebuild
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reduced_build(tmp_path_factory):
    if not (SHIPPED_DATA / "test.parquet").is_file():
        pytest.fail(f"the shipped subset {SHIPPED_DATA} is missing: run dataset_scripts/build_embedded_default.py")
    out = tmp_path_factory.mktemp("reduced")
    cache = tmp_path_factory.mktemp("hf_cache")
    paths = bed.main(
        ["--dataset", str(SHIPPED_DATA), "--output_dir", str(out), "--cache_dir", str(cache), *REDUCED_ARGS]
    )
    return paths, out, cache


def test_reduced_build_outputs_load_and_classify(reduced_build):
    from datasets import ClassLabel, Image
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, CLIPTokenizer

    paths, out, cache = reduced_build
    model_dir, data_dir = paths["model_dir"], paths["dataset_dir"]
    assert model_dir == out / "tiny-model" and data_dir == out / "tiny-subset"
    assert sorted(p.name for p in out.iterdir()) == ["tiny-model", "tiny-subset"], "staging leftovers"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "vocab.json", "merges.txt", "preprocessor_config.json", "README.md", "build_info.json"):  # fmt: skip
        assert (model_dir / name).is_file(), name

    # Model, tokenizer, image processor load through the standard APIs.
    model = CLIPModel.from_pretrained(model_dir)
    assert model.config.vision_config.hidden_size == 32 and model.config.text_config.num_hidden_layers == 1
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert isinstance(tokenizer, CLIPTokenizer)
    assert isinstance(CLIPTokenizer.from_pretrained(model_dir), CLIPTokenizer)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|startoftext|>",
        "<|endoftext|>",
        "<|endoftext|>",
    )
    assert model.config.text_config.eos_token_id == tokenizer.eos_token_id
    assert model.config.text_config.vocab_size == len(tokenizer)
    image_processor = AutoImageProcessor.from_pretrained(model_dir)

    # The data loads with load_dataset("parquet", ...) and from the folder itself (dataset card).
    ds = _load_parquet_splits(data_dir, cache)
    assert isinstance(ds["train"].features["image"], Image)
    assert isinstance(ds["test"].features["label"], ClassLabel)
    assert ds["test"].features["label"].names == FASHION_MNIST_CLASSES
    assert (ds["train"].num_rows, ds["test"].num_rows) == (100, 300)
    assert np.bincount(ds["train"]["label"]).tolist() == [10] * 10
    from datasets import load_dataset

    folder = load_dataset(str(data_dir), cache_dir=str(cache))
    assert folder["test"].num_rows == 300 and folder["test"].features == ds["test"].features
    assert_card_split_sizes(data_dir)

    # The tiny model classifies the test split clearly above chance.
    pred, true, _ = _independent_zero_shot(model_dir, ds["test"])
    accuracy = float((pred == true).mean())
    info = json.loads((model_dir / "build_info.json").read_text())
    assert info["zero_shot"]["correct"] == int((pred == true).sum())
    assert accuracy >= MIN_REDUCED_ACCURACY > 2 * CHANCE, f"reduced model zero-shot accuracy {accuracy:.3f}"
    assert info["sizes"] == {"pretrain": 800, "pool": 100, "test": 300}
    assert info["source"]["dataset"] == str(SHIPPED_DATA)
    assert "--dataset" in info["command"] and "--steps 100" in info["command"]
    assert "--caption_noise" not in info["command"]  # the default
    # The subset has Fashion-MNIST's class names, so the default caption noise applies, at its rates.
    noise = info["caption_noise"]
    assert noise["spec"] == "default" and noise["map"] == FASHION_MNIST_CAPTION_NOISE
    counts = np.asarray(noise["drawn_counts"])
    assert counts.sum() == 100 * 128 and noise["caption_names"] == FASHION_MNIST_CLASSES
    for true, targets in FASHION_MNIST_CAPTION_NOISE.items():
        c = FASHION_MNIST_CLASSES.index(true)
        for target, rate in targets.items():
            got = counts[c, FASHION_MNIST_CLASSES.index(target)] / counts[c].sum()
            assert abs(got - rate) < 0.08, (true, target, got, rate)
        assert counts[c, c] / counts[c].sum() == pytest.approx(1 - sum(targets.values()), abs=0.08)
    clean = [c for c in FASHION_MNIST_CLASSES if c not in FASHION_MNIST_CAPTION_NOISE]
    for c in clean:
        i = FASHION_MNIST_CLASSES.index(c)
        assert counts[i, i] == counts[i].sum() > 0
    # The linear-probe summary is there, on CoOp's base / novel halves.
    probe = info["linear_probe"]
    assert probe["shots"] == [4] and probe["groups"]["base"]["classes"] == FASHION_MNIST_CLASSES[:5]
    assert probe["groups"]["novel"]["test_images"] == 150
    assert probe["groups"]["all"]["zero_shot"] == pytest.approx(accuracy)
    assert probe["groups"]["all"]["linear_probe"]["4"]["train_images"] == 40
    # Pre-training images and the few-shot pool are disjoint (both from the source's train split).
    assert info["source_indices"]["pretrain_pool_overlap"] == 0

    # The processor takes grayscale and colour PIL images of any size.
    from PIL import Image as PILImage

    gray = PILImage.fromarray(np.zeros((28, 28), dtype=np.uint8), mode="L")
    colour = PILImage.fromarray(np.zeros((50, 70, 3), dtype=np.uint8))
    pv = image_processor(images=[gray, colour], return_tensors="pt")["pixel_values"]
    assert tuple(pv.shape) == (2, 3, 28, 28)


def test_reduced_build_tokenizer_handles_any_text(reduced_build):
    from transformers import AutoTokenizer

    paths, _, _ = reduced_build
    tokenizer = AutoTokenizer.from_pretrained(paths["model_dir"])
    texts = [
        "a photo of a zebra.",
        "a photo of a Abyssinian, a type of pet.",
        "a centered satellite photo of Herbaceous Vegetation Land.",
        "a photo of a person doing Apply_Eye_Makeup.",
        "café, naïve, 東京, 42 ☃",
        "",
    ]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=77)
    for ids in enc["input_ids"]:
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.eos_token_id in ids[1:]
        assert max(ids) < len(tokenizer)
    # Known words are single tokens with CLIP's end-of-word suffix.
    tokens = tokenizer.tokenize("a photo of a sneaker.")
    assert tokens[:3] == ["a</w>", "photo</w>", "of</w>"] and "sneaker</w>" in tokens
    assert tokenizer.decode(tokenizer("A Photo of a ZEBRA.")["input_ids"], skip_special_tokens=True) == (
        "a photo of a zebra ."
    )


# ------------------------------------------------------------------------------------------
# (b) IDX reader
# ------------------------------------------------------------------------------------------


def _write_idx_by_hand(path: Path, array: np.ndarray, type_code: int, dtype: str) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(dtype).tobytes())


def test_read_idx_on_tiny_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    floats = rng.standard_normal((2, 3)).astype(np.float32)
    _write_idx_by_hand(tmp_path / "img.gz", images, 0x08, "u1")
    _write_idx_by_hand(tmp_path / "lab.gz", labels, 0x08, "u1")
    _write_idx_by_hand(tmp_path / "flt.gz", floats, 0x0D, ">f4")
    got = read_idx(tmp_path / "img.gz")
    assert got.shape == (5, 4, 3) and got.dtype == np.uint8 and np.array_equal(got, images)
    assert np.array_equal(read_idx(tmp_path / "lab.gz"), labels)
    assert np.array_equal(read_idx(tmp_path / "flt.gz"), floats)
    # Round trip through the writer, uncompressed too.
    write_idx(tmp_path / "raw.idx", images)
    assert np.array_equal(read_idx(tmp_path / "raw.idx"), images)
    # Corrupt files are refused.
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="expected 10 data bytes"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "junk").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def test_fashion_mnist_idx_loader_and_missing_files(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 40), ("t10k", 20)):
        _write_idx_by_hand(
            tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 8, "u1"
        )
        _write_idx_by_hand(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10, 8, "u1")
    source = load_fashion_mnist_idx(tmp_path)
    assert source.class_names == FASHION_MNIST_CLASSES
    assert (len(source.splits["train"]), len(source.splits["test"])) == (40, 20)
    img = source.splits["test"].get_images([3])[0]
    assert img.mode == "L" and img.size == (28, 28)
    splits = make_splits(source, pretrain_size=1000, pool_per_class=2, test_per_class=1, seed=0)
    assert len(splits.pool[1]) == 20 and len(splits.test[1]) == 10 and len(splits.pretrain[1]) == 20
    assert not set(splits.pool[1]) & set(splits.pretrain[1])
    again = make_splits(source, pretrain_size=1000, pool_per_class=2, test_per_class=1, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(vars(splits).values(), vars(again).values()))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_fashion_mnist_idx(empty)
    message = str(err.value)
    assert "dataset-fashion-mnist" in message and "--idx_dir" in message and "--dataset" in message


# ------------------------------------------------------------------------------------------
# (c) the shipped default
# ------------------------------------------------------------------------------------------


def test_shipped_default_reproduces_build_info(tmp_path):
    info = json.loads((SHIPPED_MODEL / BUILD_INFO_NAME).read_text())
    recorded = info["zero_shot"]
    assert recorded["template"] == "a photo of a {}."
    ds = _load_parquet_splits(SHIPPED_DATA, tmp_path)
    assert ds["test"].features["label"].names == FASHION_MNIST_CLASSES == info["class_names"]
    assert (ds["train"].num_rows, ds["test"].num_rows) == (info["sizes"]["pool"], info["sizes"]["test"])

    pred, true, logits = _independent_zero_shot(SHIPPED_MODEL, ds["test"])
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    top2 = np.sort(logits, axis=1)[:, -2:]
    closest = float((top2[:, 1] - top2[:, 0]).min())
    hint = f"(smallest top-1/top-2 logit gap {closest:.2e}: a tie this close may flip across CPUs)"
    assert int((pred == true).sum()) == recorded["correct"], hint
    assert abs(float((pred == true).mean()) - recorded["accuracy"]) < 1e-6
    assert confusion.tolist() == recorded["confusion_matrix"], hint
    assert top_confusions(confusion, FASHION_MNIST_CLASSES) == recorded["top_confusions"]
    # The script's own evaluation agrees with the public-API one.
    assert zero_shot_evaluate(SHIPPED_MODEL, SHIPPED_DATA) == recorded

    # The intended regime: modest zero-shot accuracy, well below the ~90 % ceiling ...
    assert 0.60 <= recorded["accuracy"] <= 0.75
    # ... whose errors are the systematic confusions the caption noise plants between look-alikes ...
    assert info["caption_noise"]["map"] == FASHION_MNIST_CAPTION_NOISE
    planted = {(t, p) for t, targets in FASHION_MNIST_CAPTION_NOISE.items() for p in targets}
    assert {(p["true"], p["predicted"]) for p in recorded["top_confusions"][:3]} <= planted
    planted_errors, errors = planted_confusions(info)
    assert planted_errors >= 0.6 * errors, f"only {planted_errors} of {errors} zero-shot errors on the planted pairs"
    # ... while the frozen image features are clearly better: a 16-shot linear probe beats zero-shot
    # by at least 8 points on the base classes and on the novel classes.
    probe = info["linear_probe"]
    assert probe["groups"]["base"]["classes"] == FASHION_MNIST_CLASSES[:5]
    for group in ("base", "novel"):
        entry = probe["groups"][group]
        assert entry["linear_probe"]["16"]["accuracy"] >= entry["zero_shot"] + 0.08, (group, entry)
    # The probe numbers are reproduced: zero-shot exactly; each probe to within one test image (an
    # L-BFGS fit on another CPU may move a borderline image).
    again = linear_probe_evaluate(
        SHIPPED_MODEL, SHIPPED_DATA, shots=probe["shots"], seed=probe["seed"], l2=probe["l2"]
    )
    assert again["groups"].keys() == probe["groups"].keys()
    for group, entry in probe["groups"].items():
        got = again["groups"][group]
        assert got["zero_shot"] == entry["zero_shot"] and got["test_images"] == entry["test_images"]
        if group == "all":
            assert got["zero_shot"] == pytest.approx(recorded["accuracy"])
        for k, rec in entry["linear_probe"].items():
            assert got["linear_probe"][k]["train_images"] == rec["train_images"]
            one_image = 1 / entry["test_images"]
            assert abs(got["linear_probe"][k]["accuracy"] - rec["accuracy"]) <= one_image + 1e-9, (group, k)
    # Small enough to ship; pool and pre-training images disjoint.
    assert info["safetensors_bytes"] == (SHIPPED_MODEL / "model.safetensors").stat().st_size < 8_000_000
    assert info["source_indices"]["pretrain_pool_overlap"] == 0
    card = (SHIPPED_MODEL / "README.md").read_text()
    assert f"{recorded['accuracy'] * 100:.2f} %" in card and probe_table(probe) in card
    # The dataset folder itself loads (YAML configs in its card).
    from datasets import load_dataset

    folder = load_dataset(str(SHIPPED_DATA), cache_dir=str(tmp_path))
    assert folder["train"].num_rows == info["sizes"]["pool"]
    assert_card_split_sizes(SHIPPED_DATA)


def test_shipped_cards_are_the_templates_filled_from_build_info():
    """The READMEs in embedded/ are, byte for byte, what hub_cards/embedded_*_card.md render from build_info.json."""
    info = json.loads((SHIPPED_MODEL / BUILD_INFO_NAME).read_text(encoding="utf-8"))
    assert render_model_card(info).encode("utf-8") == (SHIPPED_MODEL / "README.md").read_bytes()
    assert render_dataset_card(info, SHIPPED_DATA).encode("utf-8") == (SHIPPED_DATA / "README.md").read_bytes()


def test_build_without_the_card_templates_stops_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded_cards, "MODEL_CARD_TEMPLATE", tmp_path / "no_such_card.md")
    with pytest.raises(FileNotFoundError, match="card template"):
        bed.main(["--dataset", str(SHIPPED_DATA), "--output_dir", str(tmp_path / "out"), "--no_progress"])
    assert not (tmp_path / "out").exists()


def assert_card_split_sizes(data_dir) -> None:
    """The card's splits carry num_bytes and num_examples (`datasets` drops a splits entry missing either)."""
    import pyarrow.parquet as pq
    import yaml

    card = yaml.safe_load((Path(data_dir) / "README.md").read_text().split("---", 2)[1])
    for entry in card["dataset_info"]["splits"]:
        table = pq.read_table(Path(data_dir) / f"{entry['name']}.parquet")
        assert (entry["num_bytes"], entry["num_examples"]) == (table.nbytes, table.num_rows)


# ------------------------------------------------------------------------------------------
# (d) clear errors for unsuitable datasets
# ------------------------------------------------------------------------------------------


def _tiny_parquet(path: Path, label_feature, image_column: str = "image") -> None:
    import io

    from datasets import Dataset, Features, Image
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(buf, format="PNG")
    features = Features({image_column: Image(), "label": label_feature})
    Dataset.from_dict(
        {image_column: [{"bytes": buf.getvalue(), "path": None}] * 4, "label": [0, 1, 0, 1]}, features=features
    ).to_parquet(str(path))


def test_dataset_without_classlabel_label_is_refused(tmp_path):
    from datasets import ClassLabel, Value

    plain = tmp_path / "plain_int_label.parquet"
    _tiny_parquet(plain, Value("int64"))
    with pytest.raises(ValueError, match="no `label` column of type datasets.ClassLabel"):
        load_image_classification_dataset(str(plain), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="ClassLabel"):
        bed.main(["--dataset", str(plain), "--output_dir", str(tmp_path / "out"), "--cache_dir",
                  str(tmp_path / "cache"), "--no_progress"])  # fmt: skip
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    no_image = tmp_path / "no_image.parquet"
    _tiny_parquet(no_image, ClassLabel(names=["a", "b"]), image_column="picture")
    with pytest.raises(ValueError, match="no `image` column"):
        load_image_classification_dataset(str(no_image), cache_dir=str(tmp_path / "cache"))

    with pytest.raises(FileNotFoundError, match="no Parquet file matches"):
        load_image_classification_dataset(str(tmp_path / "nothing-*.parquet"))


# ------------------------------------------------------------------------------------------
# (e) caption noise
# ------------------------------------------------------------------------------------------


def test_resolve_caption_noise(tmp_path):
    names = FASHION_MNIST_CLASSES
    assert resolve_caption_noise("default", names) == FASHION_MNIST_CAPTION_NOISE
    assert resolve_caption_noise("none", names) == {} == resolve_caption_noise(None, names)
    assert resolve_caption_noise("default", ["cat", "dog"]) == {}  # no built-in map: no noise
    spec = '{"shirt": {"t-shirt": 0.7, "top": 0.1}, "bag": {"sneaker": 0}}'
    assert resolve_caption_noise(spec, names) == {"shirt": {"t-shirt": 0.7, "top": 0.1}}
    (tmp_path / "noise.json").write_text(spec)
    assert resolve_caption_noise(str(tmp_path / "noise.json"), names) == {"shirt": {"t-shirt": 0.7, "top": 0.1}}
    # ClassLabel names with underscores are matched, and named, with spaces.
    assert resolve_caption_noise({"ankle_boot": {"sneaker": 0.5}}, ["sneaker", "ankle_boot"]) == {
        "ankle boot": {"sneaker": 0.5}
    }
    for bad, match in [
        ('{"jacket": {"coat": 0.5}}', "not one of the class names"),
        ('{"shirt": {"t-shirt": 1.5}}', "not in"),
        ('{"shirt": {"t-shirt": 0.6, "coat": 0.6}}', "sum to"),
        ('{"shirt": {"shirt": 0.6}}', "invalid caption name"),
        ('{"shirt": 0.6}', "must map caption names"),
        ("shirt=t-shirt", "expected 'default', 'none'"),
    ]:
        with pytest.raises(ValueError, match=match):
            resolve_caption_noise(bad, names)

    caption_names, probs = caption_distribution({"shirt": {"t-shirt": 0.7, "top": 0.1}}, names)
    assert caption_names == names + ["top"]
    assert probs.shape == (10, 11) and np.allclose(probs.sum(1), 1)
    shirt = names.index("shirt")
    assert probs[shirt].tolist() == pytest.approx([0.7, 0, 0, 0, 0, 0, 0.2, 0, 0, 0, 0.1])
    assert np.array_equal(np.delete(probs, shirt, 0)[:, :10], np.delete(np.eye(10), shirt, 0))

    # Only a non-default choice shows in the recorded command line.
    params = dict(bed.DEFAULTS)
    assert "--caption_noise" not in bed._command_line(params)
    assert "--caption_noise none" in bed._command_line({**params, "caption_noise": "none"})
    assert "--caption_noise '{\"shirt\": {\"t-shirt\": 0.7}}'" in bed._command_line(
        {**params, "caption_noise": {"shirt": {"t-shirt": 0.7}}}
    )


def test_draw_caption_names_follows_the_rates():
    _, probs = caption_distribution({"b": {"a": 0.3, "other words": 0.5}}, ["a", "b", "c"])
    labels = torch.tensor([1] * 20000 + [0] * 1000 + [2] * 1000)
    drawn = draw_caption_names(labels, torch.as_tensor(probs), torch.Generator().manual_seed(0))
    again = draw_caption_names(labels, torch.as_tensor(probs), torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)
    of_b = torch.bincount(drawn[labels == 1], minlength=4).double() / 20000
    assert of_b.tolist() == pytest.approx([0.3, 0.2, 0.0, 0.5], abs=0.015)
    assert torch.equal(drawn[labels != 1], labels[labels != 1])  # classes without noise keep their name
    # Without noise the labels come back unchanged.
    _, clean = caption_distribution({}, ["a", "b", "c"])
    assert torch.equal(draw_caption_names(labels, torch.as_tensor(clean), torch.Generator()), labels)


def test_pretraining_follows_the_captions_not_the_labels():
    """Two obvious classes whose captions are swapped by the noise: the model must learn the swap.

    Were the loss's positives taken from the true labels, the noise would not matter and zero-shot
    would be right; with positives following the drawn captions, each class's majority caption
    (the other class's name) wins.
    """
    torch.manual_seed(0)
    class_names = ["dark", "bright"]
    labels = torch.arange(256) % 2
    pixels = (labels.float() * 2 - 1).view(-1, 1, 1, 1) + 0.3 * torch.randn(256, 3, 8, 8)
    noise = resolve_caption_noise('{"dark": {"bright": 1.0}, "bright": {"dark": 0.8}}', class_names)
    caption_names, probs = caption_distribution(noise, class_names)
    corpus = [t.format(c) for c in caption_names for t in CAPTION_TEMPLATES]
    tokenizer = train_clip_tokenizer(corpus, vocab_size=700, model_max_length=32)
    size = ModelSize(
        image_size=8, patch_size=4, vision_hidden=16, vision_layers=1, vision_heads=2,
        text_hidden=16, text_layers=1, text_heads=2, max_position_embeddings=32, projection_dim=16,
    )  # fmt: skip
    from transformers import CLIPModel

    model = CLIPModel(make_clip_config(size, tokenizer))
    ids, mask = tokenize_captions(tokenizer, caption_names, CAPTION_TEMPLATES, 32)
    losses, counts = pretrain_clip(
        model, pixels, labels, ids, mask, steps=60, batch_size=64, lr=3e-3, weight_decay=0.0,
        warmup_ratio=0.1, seed=0, caption_probs=torch.as_tensor(probs), progress=False,
    )  # fmt: skip
    assert counts.sum() == 60 * 64 and counts[0, 0] == 0  # every dark image was captioned "bright"
    assert counts[1, 0] / counts[1].sum() == pytest.approx(0.8, abs=0.05)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    with torch.no_grad():
        text = tokenizer([f"a photo of a {c}." for c in class_names], padding=True, return_tensors="pt")
        logits = model(**text, pixel_values=pixels).logits_per_image
    swapped = float((logits.argmax(-1) == 1 - labels).float().mean())
    assert swapped > 0.95, f"zero-shot predicted the other class for only {swapped:.0%} of the images"


def test_custom_caption_noise_in_a_tiny_build(tmp_path):
    """--caption_noise JSON, with a name that is no class name: drawn at its rate, tokenized, recorded."""
    spec = '{"shirt": {"top": 0.5}, "sandal": {"sneaker": 1.0}}'
    tiny = ["--pretrain_size", "200", "--pool_per_class", "2", "--test_per_class", "2", "--steps", "30",
            "--batch_size", "100", "--vision_hidden", "16", "--vision_layers", "1", "--vision_heads", "2",
            "--text_hidden", "16", "--text_layers", "1", "--text_heads", "2", "--probe_shots", "none",
            "--threads", "2"]  # fmt: skip
    threads = torch.get_num_threads()
    paths = bed.main(["--dataset", str(SHIPPED_DATA), "--output_dir", str(tmp_path / "out"), "--cache_dir",
                      str(tmp_path / "cache"), "--caption_noise", spec, "--no_progress", *tiny])  # fmt: skip
    info = json.loads(paths["build_info"].read_text())
    assert info["environment"]["torch_threads"] == 2 and torch.get_num_threads() == threads  # restored
    assert "--threads" not in info["command"]  # 2 is the default
    noise = info["caption_noise"]
    assert noise["spec"] == spec and noise["map"] == {"shirt": {"top": 0.5}, "sandal": {"sneaker": 1.0}}
    assert noise["caption_names"] == FASHION_MNIST_CLASSES + ["top"]
    counts = np.asarray(noise["drawn_counts"])
    shirt, sandal, sneaker = (FASHION_MNIST_CLASSES.index(c) for c in ("shirt", "sandal", "sneaker"))
    assert counts.shape == (10, 11) and counts.sum() == 30 * 100
    assert counts[shirt, 10] / counts[shirt].sum() == pytest.approx(0.5, abs=0.15)
    assert counts[shirt, 10] + counts[shirt, shirt] == counts[shirt].sum()
    assert counts[sandal, sneaker] == counts[sandal].sum() > 0  # rate 1: never captioned "sandal"
    assert np.count_nonzero(counts[:, 10]) == 1  # only shirts are ever called "top"
    assert "--caption_noise" in info["command"] and "top" in info["command"]
    assert info["linear_probe"]["shots"] == []
    # The extra name was in the tokenizer's training corpus: one token.
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(paths["model_dir"]).tokenize("a photo of a top.")[4] == "top</w>"
    assert "| shirt | top | 50 % |" in (paths["model_dir"] / "README.md").read_text()
