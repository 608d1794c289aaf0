"""`--method lora` (CLIP-LoRA through peft): its flags and errors, what trains, the merged checkpoint and peft's export.

The method contract (`test_method_contract.py`) runs on it too: declared parameters, a clean-process load of the
checkpoint, the adapter round trip and resuming.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from accelerate import Accelerator
from peft import PeftModel
from safetensors.torch import load_file
from transformers import CLIPModel

from conftest import CLASS_NAMES, pixel_batch, run_child_on_pixels, small_run_args
from modeling_capt import PromptCLIPForImageClassification
from trainers.args import parse_args
from trainers.loop import train_model
from trainers.methods import get_method
from trainers.methods.lora import ClipLoraConfig, PromptCLIPLoraForImageClassification, load_lora_adapter
from trainers.train_capt import load_run, main


def lora_model(clip, tokenizer, seed=0, **options):
    """A LoRA classifier of the tiny CLIP with random (non-zero) LoRA updates, in eval mode."""
    model = PromptCLIPLoraForImageClassification.from_clip(
        clip, CLASS_NAMES, tokenizer=tokenizer, base_model_name_or_path="tiny-clip",
        lora_config=ClipLoraConfig(**options).peft_config(clip.config),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # zero at init: the merge would be trivially right
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


def logits(model, pixel_values):
    with torch.no_grad():
        return model(pixel_values=pixel_values).logits


# --------------------------------------------------------------------------------------------------- flags
def test_defaults_are_clip_lora_s():
    _, _, args, train_args = parse_args(["--method", "lora"])
    options = get_method("lora")(args).options()
    assert (options.lora_rank, options.lora_alpha, options.lora_dropout) == (2, 1.0, 0.25)
    assert options.lora_target_modules == ["q_proj", "k_proj", "v_proj"]
    assert (options.lora_towers, options.lora_layers) == ("both", None)
    assert (train_args.optimizer, train_args.learning_rate, train_args.weight_decay) == ("adamw", 2e-4, 1e-2)
    assert (train_args.warmup_epochs, train_args.per_device_train_batch_size) == (0, 32)


def test_every_attention_projection_of_every_layer_of_both_towers_by_default(tiny_clip, tokenizer):
    model = lora_model(tiny_clip, tokenizer)
    adapted = {name for name, module in model.clip.named_modules() if hasattr(module, "lora_A")}
    expected = {f"{tower}_model.encoder.layers.{i}.self_attn.{proj}" for tower in ("vision", "text") for i in range(2)
                for proj in ("q_proj", "k_proj", "v_proj")}
    assert adapted == expected
    config = model.peft_clip.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (2, 1.0, 0.25)
    # nothing of the vision tower's layers can be cached, and no text layer is frozen
    assert (model.frozen_vision_prefix(), model.frozen_text_prefix()) == (0, 0)


def test_layer_and_tower_options_choose_the_adapted_modules(tiny_clip, tokenizer):
    model = lora_model(tiny_clip, tokenizer, lora_towers="vision", lora_layers=[-1],
                       lora_target_modules=["out_proj", "fc1"])
    adapted = {name for name, module in model.clip.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"vision_model.encoder.layers.1.self_attn.out_proj", "vision_model.encoder.layers.1.mlp.fc1"}
    # the prefix cache may cover vision layer 0, and the text tower is frozen CLIP (its features are cached)
    assert (model.frozen_vision_prefix(), model.frozen_text_prefix()) == (1, 2)


@pytest.mark.parametrize("flags, message", [
    (["--lora_target_modules", "q_proj,query"], r"\['query'\] are not linear layers"),
    (["--lora_layers", "0,5"], r"\[5\] are out of range for the 2 layers"),
])
def test_a_bad_target_fails_before_any_data_or_model_is_loaded(flags, message, tmp_path, tiny_clip_dir):
    out = tmp_path / "out"
    argv = small_run_args(tmp_path, tiny_clip_dir) + ["--method", "lora", "--output_dir", str(out), *flags]
    with pytest.raises(ValueError, match=message):
        main(argv)
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--lora_rank", "0"], "lora_rank must be a positive integer"),
    (["--lora_dropout", "1"], "lora_dropout must be in"),
    (["--lora_towers", "audio"], "lora_towers must be vision, text or both"),
])
def test_bad_values_are_refused_while_the_flags_are_parsed(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_args(["--method", "lora", *flags])


# --------------------------------------------------------------------------------------------------- training
def test_text_features_are_computed_live_while_the_text_tower_trains(tiny_clip, tokenizer, image_processor):
    model = lora_model(tiny_clip, tokenizer).train()
    loss = model(pixel_values=pixel_batch(image_processor, 3), labels=torch.tensor([0, 1, 2])).loss
    assert model._text_cache is None  # a cached copy would be stale after the optimizer step
    loss.backward()
    text_grads = [param.grad for name, param in model.named_parameters()
                  if name.startswith("clip.text_model") and "lora_B" in name]
    assert text_grads and all(grad is not None for grad in text_grads)
    assert any(bool(grad.abs().sum() > 0) for grad in text_grads)


@pytest.mark.slow
def test_training_changes_only_the_lora_weights(tmp_path, tiny_clip_dir):
    argv = small_run_args(tmp_path, tiny_clip_dir) + [
        "--method", "lora", "--output_dir", str(tmp_path / "out"), "--save_every_epochs", "0",
        "--per_device_train_batch_size", "4", "--learning_rate", "0.01",
    ]
    model_args, data_args, method_args, train_args = parse_args(argv)
    method = get_method("lora")(method_args)
    run = load_run(method, model_args, data_args, train_args, Accelerator(cpu=True))
    model = method.build_model(run)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    model = train_model(model, method, run)
    after = model.state_dict()
    lora = {key for key in after if ".lora_A." in key or ".lora_B." in key}
    assert lora and before.keys() == after.keys()
    for key in sorted(set(after) - lora):
        assert torch.equal(after[key], before[key]), key
    assert all(not torch.equal(after[key], before[key]) for key in lora if ".lora_B." in key)


# --------------------------------------------------------------------------------------------------- saving
CHILD = r"""
import json, sys
sys.modules["peft"] = None  # any import of peft now fails: the checkpoint must load without it
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, pipeline

path, pixels, out = sys.argv[1:]
model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(pixel_values=load_file(pixels)["pixel_values"]).logits
image = Image.new("RGB", (32, 32), (200, 30, 30))
classify = pipeline("image-classification", model=path, trust_remote_code=True)
zero_shot = pipeline("zero-shot-image-classification", model=path, trust_remote_code=True)
json.dump({"module": type(model).__module__, "logits": logits.tolist(), "labels": [r["label"] for r in classify(image)],
           "zero_shot": [r["label"] for r in zero_shot(image, candidate_labels=["red", "green"])]}, open(out, "w"))
"""


@pytest.mark.slow
def test_the_merged_checkpoint_gives_the_lora_model_s_logits_and_loads_without_peft(tiny_clip, tokenizer,
                                                                                     image_processor, tmp_path):
    model = lora_model(tiny_clip, tokenizer)
    model.image_processor = image_processor
    pixel_values = pixel_batch(image_processor, 3)
    expected = logits(model, pixel_values)
    model.save_pretrained(tmp_path / "model")
    assert any(".lora_" in name for name, _ in model.named_parameters())  # the LoRA model itself is unchanged
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["architectures"] == ["PromptCLIPForImageClassification"]
    assert config["merged_lora"]["r"] == 2
    keys = load_file(tmp_path / "model" / "model.safetensors").keys()
    assert not [key for key in keys if "lora_" in key or "base_layer" in key]
    merged = PromptCLIPForImageClassification.from_pretrained(tmp_path / "model").eval()
    torch.testing.assert_close(logits(merged, pixel_values), expected, rtol=0, atol=1e-5)

    child = run_child_on_pixels(CHILD, tmp_path / "model", pixel_values, tmp_path)
    assert child["module"].startswith("transformers_modules")
    torch.testing.assert_close(torch.tensor(child["logits"]), expected, rtol=0, atol=1e-5)
    assert set(child["labels"]) <= set(CLASS_NAMES) and sorted(child["zero_shot"]) == ["green", "red"]


def test_the_adapter_is_peft_s_export_and_reloads_onto_the_base_clip(tiny_clip, tokenizer, image_processor,
                                                                     tiny_clip_dir, tmp_path):
    model = lora_model(tiny_clip, tokenizer)
    pixel_values = pixel_batch(image_processor, 3)
    expected = logits(model, pixel_values)
    model.save_adapter(tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "class_prompts.json"} <= set(
        os.listdir(tmp_path / "adapter"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["base_model_name_or_path"]) == ("LORA", 2, "tiny-clip")

    # peft's own loader puts the same updates on the base CLIP
    peft_clip = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip_dir), tmp_path / "adapter")
    ids, mask = model.class_input_ids, model.class_attention_mask
    with torch.no_grad():
        torch.testing.assert_close(peft_clip.get_text_features(input_ids=ids, attention_mask=mask).pooler_output,
                                   model.clip.get_text_features(input_ids=ids, attention_mask=mask).pooler_output,
                                   rtol=0, atol=1e-5)
    # and the classifier rebuilt from the export gives the trained model's logits
    restored = load_lora_adapter(tmp_path / "adapter", clip=tiny_clip_dir).eval()
    assert restored.config.class_names == CLASS_NAMES
    torch.testing.assert_close(logits(restored, pixel_values), expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_run_s_model_and_adapter_evaluate_alike_as_lora(tmp_path, tiny_clip_dir, image_processor):
    from trainers import evaluate_capt

    out = tmp_path / "out"
    main(small_run_args(tmp_path, tiny_clip_dir) + ["--method", "lora", "--output_dir", str(out)])
    assert "CLIP-LoRA" in (out / "model" / "README.md").read_text()
    pixel_values = pixel_batch(image_processor, 3)
    loaded = {}
    for folder in ("model", "adapter"):
        model, _, _ = evaluate_capt.load_checkpoint(str(out / folder), ["dog", "cat"], "a photo of a {}.")
        assert evaluate_capt.method_of(model) == "lora"
        loaded[folder] = logits(model, pixel_values)
    torch.testing.assert_close(loaded["adapter"], loaded["model"], rtol=0, atol=1e-5)
