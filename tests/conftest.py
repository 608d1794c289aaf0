"""Shared fixtures: a tiny random CLIP (hidden 32, 2 layers), the shipped tokenizer, and generated image data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED_MODEL = os.path.join(REPO_ROOT, "embedded", "capt-tiny-fashion")
CLASS_NAMES = ["cat", "dog", "bird", "fish", "horse", "truck"]

# The suite's models are tiny: one thread avoids oversubscribing small CI machines (10x faster on 2 busy cores).
torch.set_num_threads(1)


def reset_accelerate() -> None:
    """Accelerate keeps process-wide singletons; reset them between in-process trainer runs."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    yield
    reset_accelerate()


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(EMBEDDED_MODEL)


@pytest.fixture(scope="session")
def image_processor():
    return CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True, do_convert_rgb=True
    )


def make_tiny_clip(tokenizer, seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=37, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=32,
            patch_size=4,
        ),
        projection_dim=16,
    )
    return CLIPModel(config).eval()


@pytest.fixture
def tiny_clip(tokenizer):
    return make_tiny_clip(tokenizer)


@pytest.fixture
def tiny_clip_dir(tmp_path, tokenizer, image_processor):
    """A tiny random CLIP checkpoint on disk, with tokenizer and image processor, like a Hub folder."""
    path = tmp_path / "tiny-clip"
    make_tiny_clip(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    image_processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory):
    """olah on 127.0.0.1, offline, serving git repositories from a folder (`tests/local_hub.py`)."""
    import shutil

    pytest.importorskip("olah", reason="the local Hub server is olah (pip install olah)")
    if shutil.which("git") is None:
        pytest.skip("olah serves git repositories: no git here")
    from local_hub import LocalHub

    hub = LocalHub(tmp_path_factory.mktemp("local_hub"))
    hub.start()
    yield hub
    hub.stop()


def random_images(n: int, seed: int = 0, size: int = 32) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def pixel_batch(image_processor, n: int = 3, seed: int = 0) -> torch.Tensor:
    return image_processor(images=random_images(n, seed), return_tensors="pt")["pixel_values"]


def run_child_on_pixels(script: str, model_dir, pixel_values: torch.Tensor, tmp_path) -> dict:
    """Run `script` in a clean Python process (another folder, no PYTHONPATH, an empty offline Hub cache) as
    `script MODEL_DIR PIXELS_FILE OUTPUT_JSON`, the pixels saved as safetensors; returns the JSON it wrote."""
    from safetensors.torch import save_file

    save_file({"pixel_values": pixel_values}, tmp_path / "pixels.safetensors")
    (tmp_path / "child.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(model_dir),
                           str(tmp_path / "pixels.safetensors"), str(tmp_path / "child.json")],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "child.json").read_text())


def small_run_args(tmp_path, clip_dir) -> list[str]:
    """Trainer flags for a 2-epoch, 4-shot run of `clip_dir` on `write_image_dataset` splits under `tmp_path/data`
    (3 base classes x 4 shots: 12 training images); no output folder, no heatmap."""
    paths = write_image_dataset(tmp_path / "data")
    return [
        "--model_name_or_path", clip_dir,
        "--train_dir", os.path.dirname(paths["train"]), "--test_dir", os.path.dirname(paths["test"]),
        "--shots", "4", "--num_train_epochs", "2", "--per_device_eval_batch_size", "16", "--heatmap", "false",
    ]


def write_image_dataset(root, class_names=CLASS_NAMES, per_class_train=6, per_class_test=3, seed=0):
    """Parquet train/test splits of class-coloured noise images with a ClassLabel `label` column."""
    import datasets

    rng = np.random.default_rng(seed)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(class_names))})
    paths = {}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        images, labels = [], []
        for label in range(len(class_names)):
            for _ in range(per_class):
                base = np.zeros((32, 32, 3), dtype=np.int16)
                base[..., label % 3] = 60 + 30 * label
                noise = rng.integers(-40, 40, (32, 32, 3))
                images.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))
                labels.append(label)
        ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        os.makedirs(os.path.join(root, split), exist_ok=True)
        paths[split] = os.path.join(root, split, f"{split}.parquet")
        ds.to_parquet(paths[split])
    return paths


class RecordingHub:
    """Replaces `HfApi.create_repo` / `upload_folder` on the real client class: each call is checked against the real
    method's signature (so a renamed or removed argument fails here, not on the Hub) and recorded, with the files the
    upload would send."""

    def __init__(self, monkeypatch):
        import inspect

        from huggingface_hub import HfApi

        self.calls = []
        for name in ("create_repo", "upload_folder"):
            real = getattr(HfApi, name)

            def fake(api, *args, _name=name, _signature=inspect.signature(real), **kwargs):
                bound = _signature.bind(api, *args, **kwargs).arguments
                bound.pop("api" if "api" in bound else "self")
                record = {"method": _name, "token": api.token, **bound}
                if _name == "upload_folder":
                    root = bound["folder_path"]
                    record["files"] = sorted(
                        os.path.relpath(os.path.join(parent, f), root) for parent, _, files in os.walk(root)
                        for f in files
                    )
                self.calls.append(record)
                return f"{_name}-result"

            monkeypatch.setattr(HfApi, name, fake)
