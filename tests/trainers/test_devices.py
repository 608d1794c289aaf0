"""The same results on every device: each test runs on the CPU and, when a GPU is present, on CUDA, against a CPU
reference.

CI has no GPU, so there every test runs its `cpu` case (the reference against itself: the code path is exercised and
the CPU run is shown to be deterministic; the training cases run the model's forwards on a random stream of their own,
as a GPU would). On a machine with CUDA the `cuda` cases check what the CPU suite cannot:
tensors that must move between host and device (the frozen-prefix cache, the Confusion Bank, a CPU random generator),
and training and evaluation on the GPU: in fp32 against the CPU run, in bf16 and fp16 for finite weights and complete
evaluation. TF32 is switched off for the comparisons, so fp32 on the GPU must match the CPU to float32 rounding.

    python -m pytest tests/test_devices.py          # on a GPU machine: the cpu and cuda cases
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os

import pytest
import torch
from safetensors.torch import load_file

from dataset_scripts.confusion_bank import load_bank, save_bank
from modeling_capt import CaptAdapterConfig, CaptForImageClassification
from trainers import confusion
from trainers.confusion import retrieve_representatives
from dataset_scripts.bank import build_bank
from dataset_scripts.data import IndexedImageDataset
from trainers.prefix_cache import FrozenPrefixCache
from trainers.methods import capt as capt_method
from trainers.train_capt import main

from conftest import CLASS_NAMES, pixel_batch, reset_accelerate, write_image_dataset
from fixtures_bank import random_bank, random_queries

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
# Training precisions per device: bf16 on the CPU is covered by test_precision_and_compile; fp16 needs a GPU.
PRECISIONS = [("cpu", "no")] + ([("cuda", "no"), ("cuda", "bf16"), ("cuda", "fp16")] if CUDA else [])
FP32 = dict(rtol=1e-4, atol=1e-5)  # fp32 on two devices: rounding differs, nothing else


def use_device(monkeypatch, device_type: str) -> None:
    """Make the next in-process trainer run use `device_type` (Accelerate reads ACCELERATE_USE_CPU)."""
    reset_accelerate()
    if device_type == "cpu":
        monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    else:
        monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)


@pytest.fixture
def no_tf32():
    """Full float32 matmuls and convolutions on the GPU (cuDNN allows TF32 by default), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(params=DEVICES)
def device(request, monkeypatch, no_tf32):
    use_device(monkeypatch, request.param)
    return torch.device(request.param)


def adapted_model(tiny_clip, tokenizer, image_processor):
    """A CAPT classifier with adapters on layer 1 and MGDE, its trainable weights moved off their initial values."""
    adapter = CaptAdapterConfig(layers_to_transform=[1], use_mgde=True, mgde_num_clusters=2)
    model = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer,
                                                 image_processor=image_processor, adapter_config=adapter)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


@pytest.fixture
def train_rows(tmp_path):
    import datasets

    paths = write_image_dataset(tmp_path / "data", per_class_train=3, per_class_test=1)
    return datasets.load_dataset("parquet", data_files=paths["train"])["train"]


# ------------------------------------------------------------------------------------------------ the model
def test_forward_matches_the_cpu(device, tiny_clip, tokenizer, image_processor):
    model = adapted_model(tiny_clip, tokenizer, image_processor)
    reference = copy.deepcopy(model)
    pixels = pixel_batch(image_processor, n=4)
    alpha = torch.tensor([0.5, 1.0, 2.0, 5.0])
    model.to(device)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, alpha=alpha)
        out = model(pixel_values=pixels.to(device), alpha=alpha.to(device))
    assert out.logits.device.type == device.type
    torch.testing.assert_close(out.logits.cpu(), expected.logits, **FP32)
    torch.testing.assert_close(out.image_embeds.cpu(), expected.image_embeds, **FP32)


def test_prefix_cache_stays_on_the_host_and_resumes_on_the_device(device, tiny_clip, tokenizer, image_processor,
                                                                    train_rows):
    model = adapted_model(tiny_clip, tokenizer, image_processor).to(device)
    cache = FrozenPrefixCache.build(model, train_rows, image_processor, mode="memory", batch_size=4)
    indices = torch.tensor([5, 0, 11, 5])
    assert cache.model_inputs(indices)["hidden_states"].device.type == "cpu"  # host memory, whatever the device
    inputs = cache.model_inputs(indices.to(device), device)
    assert inputs["hidden_states"].device.type == device.type
    pixels = IndexedImageDataset(train_rows, "train").pixel_values(indices.tolist(), image_processor)
    with torch.no_grad():
        expected = model(pixel_values=pixels.to(device)).logits
        resumed = model(**inputs).logits
    torch.testing.assert_close(resumed, expected, **FP32)


# ------------------------------------------------------------------------------------------------ the Confusion Bank
def test_bank_built_on_the_device_matches_the_cpu_and_saves(device, tiny_clip, tokenizer, image_processor,
                                                            train_rows, tmp_path):
    rows = IndexedImageDataset(train_rows, "train")
    model = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer,
                                                 image_processor=image_processor)

    def bank_on(where):
        return build_bank(copy.deepcopy(model).to(where), rows, image_processor, 5, CLASS_NAMES,
                          model.config.template, "tiny")

    expected, bank = bank_on("cpu"), bank_on(device)
    for name in ("indices", "labels", "preds"):
        assert torch.equal(getattr(bank, name).cpu(), getattr(expected, name)), name
    torch.testing.assert_close(bank.probs.cpu(), expected.probs, **FP32)
    torch.testing.assert_close(bank.embeds.cpu(), expected.embeds, **FP32)
    loaded = load_bank(save_bank(bank, tmp_path / "bank"))
    assert torch.equal(loaded.preds, expected.preds)
    torch.testing.assert_close(loaded.embeds, expected.embeds, **FP32)


@pytest.mark.parametrize("path", ["dense", "per_class", "random"])
def test_retrieval_on_the_device_matches_the_cpu(device, path, monkeypatch):
    bank = random_bank(num_samples=600, num_classes=12, dim=16, seed=7)
    query, classes = random_queries(bank, 16, k=4, seed=8)
    monkeypatch.setattr(confusion, "DENSE_RETRIEVAL_MAX_SCORES", 0 if path == "per_class" else 1 << 40)

    def retrieve(target_bank, target_query, target_classes):
        # random picks come from a CPU generator, as in training: the same picks on every device
        generator = torch.Generator().manual_seed(0) if path == "random" else None
        return retrieve_representatives(target_query, target_classes, target_bank, random_samples=path == "random",
                                        generator=generator)

    expected_rows, expected_cosine = retrieve(bank, query, classes)
    rows, cosine = retrieve(copy.deepcopy(bank).to(device), query.to(device), classes.to(device))
    assert rows.device.type == device.type
    assert torch.equal(rows.cpu(), expected_rows)
    torch.testing.assert_close(cosine.cpu(), expected_cosine, **FP32)


# ------------------------------------------------------------------------------------------------ the trainer
@pytest.fixture
def trainer_args(tmp_path, tiny_clip_dir):
    paths = write_image_dataset(tmp_path / "data", per_class_train=4, per_class_test=3)
    return [
        "--model_name_or_path", tiny_clip_dir, "--method", "capt", "--subsample_classes", "base",
        "--train_dir", os.path.dirname(paths["train"]), "--test_dir", os.path.dirname(paths["test"]),
        "--shots", "4", "--num_train_epochs", "2", "--per_device_eval_batch_size", "5", "--heatmap", "false",
        "--layers_to_transform", "1", "--warmup_epochs", "0", "--learning_rate", "0.05",
    ]


@contextlib.contextmanager
def forwards_on_another_random_stream(monkeypatch):
    """Every model forward draws its random numbers (MGDE's router noise and expert dropout) from a stream of its own,
    as on a GPU, where they come from the device's generator and never equal the CPU run's draws; the CPU generators
    the trainer seeds itself (shuffling, retrieval, k-means) are left alone, as on a GPU."""
    stream = torch.Generator().manual_seed(12345).get_state()
    original = CaptForImageClassification.forward

    def forward(self, *args, **kwargs):
        nonlocal stream
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(stream)
            output = original(self, *args, **kwargs)
            stream = torch.get_rng_state()
        return output

    with monkeypatch.context() as patch:
        patch.setattr(CaptForImageClassification, "forward", forward)
        yield


def without_random_regularisers(monkeypatch):
    """Train with MGDE's router noise and expert dropout off. A device draws them from its own generator (CUDA's
    Philox, not the CPU's Mersenne Twister), so with them on, fp32 weights on two devices differ by whole noise draws,
    not by rounding; every other random choice of a run comes from CPU generators the trainer seeds itself."""
    adapter_config_of = capt_method.adapter_config_of
    monkeypatch.setattr(capt_method, "adapter_config_of", lambda *args: dataclasses.replace(
        adapter_config_of(*args), mgde_router_noise_std=0.0, mgde_expert_dropout=0.0))


def train(monkeypatch, device_type, args, output_dir, reference=False):
    """One trainer run on `device_type`. The CPU case (`reference=False`) stands in for a GPU: its forwards draw
    from another random stream, so what a GPU comparison would see differ, the CPU suite sees too."""
    use_device(monkeypatch, device_type)
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    emulate = device_type == "cpu" and not reference
    with forwards_on_another_random_stream(monkeypatch) if emulate else contextlib.nullcontext():
        summary = main(args + ["--output_dir", str(output_dir)])
    if device_type == "cuda":
        assert torch.cuda.max_memory_allocated() > 0, "the run did not use the GPU"
    return summary, load_file(os.path.join(output_dir, "adapter", "adapter_model.safetensors"))


def assert_same_training(run, reference, fp32=True):
    """Every test sample counted once and finite weights; in fp32 also the reference's weights (to rounding) and its
    accuracy (up to one near-tie flip). Half precision is not compared: fp16's loss scaler skips the steps whose
    gradients overflow, so its weights legitimately differ from an fp32 run by whole updates."""
    (summary, weights), (expected_summary, expected_weights) = run, reference
    assert weights.keys() == expected_weights.keys()
    for key in expected_weights:
        assert torch.isfinite(weights[key]).all(), key
        if fp32:
            torch.testing.assert_close(weights[key], expected_weights[key], rtol=0, atol=1e-4, msg=key)
    base_test = 3 * 3  # base classes x test images per class
    for name in ("zeroshot", "capt"):
        assert sum(map(sum, summary[name]["confusion_matrix"])) == base_test  # every test sample counted once
        accuracy = summary[name]["accuracy"]
        assert 0.0 <= accuracy <= 100.0
        if fp32:
            assert abs(accuracy - expected_summary[name]["accuracy"]) <= 100 / base_test + 1e-9, name


@pytest.mark.parametrize("device_type,precision", PRECISIONS, ids=[f"{d}-{p}" for d, p in PRECISIONS])
def test_training_on_the_device_matches_the_cpu(device_type, precision, trainer_args, tmp_path, monkeypatch, no_tf32):
    if precision == "no":  # compared weight by weight; half precision runs with the regularisers on the device
        without_random_regularisers(monkeypatch)
    reference = train(monkeypatch, "cpu", trainer_args, tmp_path / "cpu", reference=True)
    run = train(monkeypatch, device_type, trainer_args + ["--mixed_precision", precision], tmp_path / "run")
    assert_same_training(run, reference, fp32=precision == "no")


@pytest.mark.parametrize("extra", [["--random_samples"], ["--prefix_cache", "off"]], ids=["random_samples", "no_cache"])
def test_training_variants_on_the_device_match_the_cpu(device, extra, trainer_args, tmp_path, monkeypatch):
    without_random_regularisers(monkeypatch)
    reference = train(monkeypatch, "cpu", trainer_args + extra, tmp_path / "cpu", reference=True)
    run = train(monkeypatch, device.type, trainer_args + extra, tmp_path / "run")
    assert_same_training(run, reference)
