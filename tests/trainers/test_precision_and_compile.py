"""Issue 7's execution options in the trainer: Accelerate mixed precision (bf16 autocast in training), torch.compile
of the vision layers (same results as eager), and `torch.inference_mode` in every evaluation forward."""

from __future__ import annotations

import json
import os

import pytest
import torch

from modeling_capt import CaptForImageClassification
from trainers.args import parse_args
from trainers.train_capt import main

from conftest import reset_accelerate, write_image_dataset


@pytest.fixture
def base_args(tmp_path, tiny_clip_dir):
    paths = write_image_dataset(tmp_path / "data")
    return [
        "--model_name_or_path", tiny_clip_dir, "--method", "capt",
        "--train_dir", os.path.dirname(paths["train"]), "--test_dir", os.path.dirname(paths["test"]),
        "--shots", "2", "--num_train_epochs", "2", "--per_device_eval_batch_size", "16", "--heatmap", "false",
    ]


def record_forwards(monkeypatch):
    """Record `(training, inference_mode, dtype of the first vision MLP's output)` for every CAPT forward."""
    calls = []
    original = CaptForImageClassification.forward

    def forward(self, *args, **kwargs):
        seen = {}

        def hook(_module, _inputs, output):  # returns None: the output is left alone
            seen.setdefault("dtype", output.dtype)

        layer = self.clip.vision_model.encoder.layers[0]
        handle = getattr(layer, "base_layer", layer).mlp.fc1.register_forward_hook(hook)
        try:
            output = original(self, *args, **kwargs)
        finally:
            handle.remove()
        calls.append((self.training, torch.is_inference_mode_enabled(), seen.get("dtype")))
        return output

    monkeypatch.setattr(CaptForImageClassification, "forward", forward)
    return calls


def test_bf16_autocasts_training_and_evaluation_runs_in_inference_mode(base_args, tmp_path, monkeypatch):
    calls = record_forwards(monkeypatch)
    # Without the prefix cache, training batches run the whole tower (and so the hooked first layer).
    main(base_args + ["--output_dir", str(tmp_path / "out"), "--mixed_precision", "bf16", "--prefix_cache", "off"])
    training = [call for call in calls if call[0]]
    evaluation = [call for call in calls if not call[0]]
    assert training and evaluation
    assert all(dtype == torch.bfloat16 for _, _, dtype in training)
    assert all(inference for _, inference, _ in evaluation)  # every evaluation forward: inference_mode
    # the bank, zero-shot CLIP and the trained model are all evaluated in the run's precision
    assert all(dtype == torch.bfloat16 for _, _, dtype in evaluation)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0.0 <= metrics["capt"]["hm"] <= 100.0


def test_fp32_training_stays_fp32(base_args, tmp_path, monkeypatch):
    calls = record_forwards(monkeypatch)
    main(base_args + ["--output_dir", str(tmp_path / "out"), "--prefix_cache", "off"])
    assert {dtype for training, _, dtype in calls if training} == {torch.float32}


@pytest.mark.slow
def test_torch_compile_gives_the_eager_results(base_args, tmp_path):
    import torch._dynamo

    eager = main(base_args + ["--output_dir", str(tmp_path / "eager")])
    reset_accelerate()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = main(base_args + ["--output_dir", str(tmp_path / "compiled"), "--torch_compile",
                                 "--torch_compile_backend", "aot_eager"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the compiled layers really ran
    for key in ("base_accuracy", "novel_accuracy", "hm"):
        assert compiled["capt"][key] == pytest.approx(eager["capt"][key])
    # The compiled model saves with the eager state-dict keys (no `_orig_mod.`): it reloads.
    reloaded = CaptForImageClassification.from_pretrained(tmp_path / "compiled" / "model")
    assert not any("_orig_mod" in name for name in reloaded.state_dict())


def test_unknown_compile_backend_is_refused():
    with pytest.raises(ValueError, match="not a torch.compile backend"):
        parse_args(["--torch_compile", "--torch_compile_backend", "nonsense"])
