"""The contract every registered method keeps (`trainers/methods/__init__.py`), checked on a tiny random CLIP.

- it builds through the trainer's own path (`load_run`, `Method.prepare`, `Method.build_model`);
- exactly the parameters the model declares trainable require gradients, and one training step gives them finite
  gradients, some non-zero, while CLIP's own weights get none;
- the trained checkpoint loads in a clean process with `AutoModelForImageClassification.from_pretrained(...,
  trust_remote_code=True)` and gives the same logits as in this process;
- the adapter export, loaded back onto the plain CLIP by the method's `load_adapter` (`from_adapter`, or peft's
  `PeftModel.from_pretrained` for `--method lora`), gives the same logits;
- resuming from the first epoch's checkpoint ends with the uninterrupted run's weights, bit for bit.

A new method registered in `METHODS` is checked here without a line added to this file.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

import modeling_capt
from conftest import random_images, reset_accelerate, run_child_on_pixels, small_run_args
from dataset_scripts.data import make_loader
from trainers.args import parse_args
from trainers.methods import METHODS, get_method
from trainers.train_capt import load_run, main


pytestmark = pytest.mark.slow

CHILD = r"""
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(pixel_values=load_file(sys.argv[2])["pixel_values"]).logits
json.dump({"module": type(model).__module__, "logits": logits.tolist()}, open(sys.argv[3], "w"))
"""


def build(name, argv):
    """The model `--method name` trains, built as the trainer builds it, with its method and run."""
    model_args, data_args, method_args, train_args = parse_args(argv + ["--method", name])
    method = get_method(name)(method_args)
    run = load_run(method, model_args, data_args, train_args, Accelerator(cpu=True))
    method.prepare(run)
    return method, run, method.build_model(run)


def package_class(model_dir):
    """The class of this package that a saved checkpoint names (`config.json` `architectures`)."""
    architecture = json.loads(open(os.path.join(model_dir, "config.json"), encoding="utf-8").read())["architectures"][0]
    return getattr(modeling_capt, architecture)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_only_the_declared_parameters_train_and_one_step_gives_finite_gradients(name, tmp_path, tiny_clip_dir):
    argv = small_run_args(tmp_path, tiny_clip_dir) + ["--output_dir", str(tmp_path / "out")]
    method, run, model = build(name, argv)
    declared = set(model.trainable_parameter_names())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == declared
    if not method.trains:
        assert declared == set()
        return
    assert declared
    model.train()
    method.begin_training(model, run, None)
    batch = next(iter(make_loader(run.splits["train"], run.image_processor, 4, True, 0, "train", seed=0)))
    loss, logs = method.training_step(batch)
    assert torch.isfinite(loss)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) <= declared, f"frozen weights got gradients: {sorted(set(grads) - declared)[:5]}"
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any(bool(g.abs().sum() > 0) for g in grads.values())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_checkpoint_export_and_resume_round_trips(name, tmp_path, tiny_clip_dir, image_processor):
    argv = small_run_args(tmp_path, tiny_clip_dir) + ["--method", name, "--save_total_limit", "0"]
    full = tmp_path / "full"
    main(argv + ["--output_dir", str(full)])
    model_dir = full / "model"
    cls = package_class(model_dir)
    model = cls.from_pretrained(model_dir).eval()
    pixel_values = image_processor(images=random_images(3, seed=11), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits

    # the checkpoint, loaded with remote code in a clean process
    child = run_child_on_pixels(CHILD, model_dir, pixel_values, tmp_path)
    assert child["module"].startswith("transformers_modules"), child["module"]
    torch.testing.assert_close(torch.tensor(child["logits"]), expected, rtol=0, atol=1e-5)

    if not get_method(name).trains:
        assert not (full / "adapter").exists()
        return
    # the adapter export, back onto the plain CLIP
    restored = get_method(name).load_adapter(full / "adapter", clip=tiny_clip_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(pixel_values=pixel_values).logits, expected, rtol=0, atol=1e-5)

    # resuming after epoch 1 ends with the uninterrupted run's weights
    reset_accelerate()
    resumed = tmp_path / "resumed"
    main(argv + ["--output_dir", str(resumed), "--resume_from_checkpoint", str(full / "checkpoints" / "epoch_1")])
    before, after = load_file(model_dir / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, msg=key)


def test_the_registry_names_each_method_by_its_own_name():
    assert all(cls.name == name for name, cls in METHODS.items())
