"""The CLIP wrapper: zero-shot equivalence, the class-feature cache, CoOp context, inputs and errors."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoModel, AutoModelForImageClassification, CLIPConfig

from modeling_capt import CaptConfig, CaptForImageClassification, CaptModel

from conftest import CLASS_NAMES, pixel_batch, random_images


def test_zero_shot_logits_equal_clip(tiny_clip, tokenizer, image_processor):
    model = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer)
    pixels = pixel_batch(image_processor, 4)
    texts = [f"a photo of a {name}." for name in CLASS_NAMES]
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = tiny_clip(pixel_values=pixels, **inputs).logits_per_image
        got = model(pixel_values=pixels).logits
    assert got.shape == (4, len(CLASS_NAMES))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_template_is_used(tiny_clip, tokenizer, image_processor):
    plain = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer)
    other = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, template="{} texture.", tokenizer=tokenizer)
    pixels = pixel_batch(image_processor, 2)
    with torch.no_grad():
        assert not torch.allclose(plain(pixel_values=pixels).logits, other(pixel_values=pixels).logits)


def _count_text_calls(model):
    # the model runs the text tower layer by layer itself: its final layer norm runs once per text-encoder pass
    calls = []
    model.clip.text_model.final_layer_norm.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_class_text_features_are_cached(tiny_clip, tokenizer, image_processor):
    model = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer)
    calls = _count_text_calls(model)
    pixels = pixel_batch(image_processor, 2)
    with torch.no_grad():
        model(pixel_values=pixels)
        model(pixel_values=pixels)
    assert len(calls) == 1
    model.set_class_names(["apple", "pear"])
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    assert len(calls) == 2
    assert logits.shape == (2, 2)
    assert model.config.id2label == {0: "apple", 1: "pear"}
    # training mode without learnable context still never runs the text encoder again
    model.train()
    model(pixel_values=pixels, labels=torch.tensor([0, 1]))
    model(pixel_values=pixels, labels=torch.tensor([1, 1]))
    assert len(calls) == 3


def test_only_trainable_parts_require_grad(tiny_clip, tokenizer):
    zs = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer)
    assert zs.trainable_parameter_names() == []
    coop = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer, use_learnable_context=True)
    assert coop.trainable_parameter_names() == ["prompt_context.ctx"]


def test_coop_context_initialised_from_words_matches_template(tiny_clip, tokenizer, image_processor):
    zs = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer)
    coop = CaptForImageClassification.from_clip(
        tiny_clip, CLASS_NAMES, tokenizer=tokenizer, use_learnable_context=True, ctx_init="a photo of a", n_ctx=4
    )
    pixels = pixel_batch(image_processor, 3)
    with torch.no_grad():
        torch.testing.assert_close(coop(pixel_values=pixels).logits, zs(pixel_values=pixels).logits, atol=1e-5, rtol=0)


def test_coop_context_trains(tiny_clip, tokenizer, image_processor):
    coop = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer, use_learnable_context=True)
    coop.train()
    optimizer = torch.optim.SGD([p for p in coop.parameters() if p.requires_grad], lr=1.0)
    before = coop.prompt_context.ctx.detach().clone()
    pixels = pixel_batch(image_processor, 4)
    loss = coop(pixel_values=pixels, labels=torch.tensor([0, 1, 2, 3])).loss
    loss.backward()
    assert coop.prompt_context.ctx.grad is not None and coop.prompt_context.ctx.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(before, coop.prompt_context.ctx)
    clip_grads = [p.grad for p in coop.clip.parameters() if p.grad is not None]
    assert clip_grads == []


def test_coop_ctx_init_length_must_match(tiny_clip, tokenizer):
    with pytest.raises(ValueError, match="n_ctx"):
        CaptForImageClassification.from_clip(
            tiny_clip, CLASS_NAMES, tokenizer=tokenizer, use_learnable_context=True, ctx_init="a photo of a", n_ctx=2
        )


def test_input_ids_score_against_given_texts(tiny_clip, tokenizer, image_processor):
    model = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer)
    pixels = pixel_batch(image_processor, 2)
    inputs = tokenizer(["a photo of a zebra.", "a photo of a car."], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=pixels, **inputs)
        expected = tiny_clip(pixel_values=pixels, **inputs).logits_per_image
    assert out.logits_per_image.shape == (2, 2)
    torch.testing.assert_close(out.logits_per_image, expected, atol=1e-5, rtol=0)


def test_loss_and_label_checks(tiny_clip, tokenizer, image_processor):
    model = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer)
    pixels = pixel_batch(image_processor, 2)
    out = model(pixel_values=pixels, labels=torch.tensor([0, 5]))
    expected = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 5]))
    torch.testing.assert_close(out.loss, expected)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\]"):
        model(pixel_values=pixels, labels=torch.tensor([0, 6]))
    with pytest.raises(TypeError, match="integer"):
        model(pixel_values=pixels, labels=torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize(
    "names, error",
    [([], "empty"), (["cat", "cat"], "duplicates"), (["cat", ""], "non-empty"), ("cat", "list")],
)
def test_bad_class_names(tiny_clip, tokenizer, names, error):
    with pytest.raises((ValueError, TypeError), match=error):
        CaptForImageClassification.from_clip(tiny_clip, names, tokenizer=tokenizer)


def test_class_names_with_identical_prompts_are_refused_naming_the_pairs(tiny_clip, tokenizer):
    """Equal prompts give equal text features: the two classes would silently score chance between them."""
    model = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"'Cat' and 'cat'"):  # CLIP's tokenizer lower-cases
        model.set_class_names(["Cat", "dog", "cat"])
    long_prefix = " ".join(["very"] * (model.config.text_length + 5))
    first, second = f"{long_prefix} cat", f"{long_prefix} dog"  # differ only past the text context
    with pytest.raises(ValueError, match="identically") as raised:
        model.set_class_names(["bird", first, second])
    assert repr(first) in str(raised.value) and repr(second) in str(raised.value)
    assert model.config.id2label[0] == CLASS_NAMES[0]  # the refused call changed nothing
    with pytest.raises(ValueError, match="identically"):
        CaptForImageClassification.from_clip(tiny_clip, ["Dog", "dog"], tokenizer=tokenizer)


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("template", "a photo", "placeholder"),
        ("n_ctx", "4", "n_ctx"),
        ("use_learnable_context", "yes", "bool"),
        ("clip_config", 3, "clip_config"),
        ("adapter_config", {"adapter_branches": "sideways"}, "adapter_branches"),
        ("adapter_config", {"alpha_scale": "five"}, "alpha_scale"),
        ("adapter_config", {"nonsense": 1}, "Unknown"),
    ],
)
def test_config_rejects_bad_fields(field, value, error):
    with pytest.raises((ValueError, TypeError), match=error):
        CaptConfig(**{field: value}, id2label={0: "a", 1: "b"})


def test_config_refuses_prompts_longer_than_the_text_encoder_positions():
    """A max_text_length past the text encoder's positions was accepted, saved, and failed only in the first forward."""
    clip_config = CLIPConfig(text_config={"max_position_embeddings": 32})
    assert CaptConfig(clip_config=clip_config, max_text_length=32, id2label={0: "a"}).text_length == 32
    with pytest.raises(ValueError, match="max_text_length.*32"):
        CaptConfig(clip_config=clip_config, max_text_length=33, id2label={0: "a"})


def test_save_and_reload_same_process(tmp_path, tiny_clip, tokenizer, image_processor):
    model = CaptForImageClassification.from_clip(
        tiny_clip, CLASS_NAMES, tokenizer=tokenizer, image_processor=image_processor, use_learnable_context=True
    )
    with torch.no_grad():
        model.prompt_context.ctx.add_(0.1)
    model.clear_text_cache()
    model.save_pretrained(tmp_path / "ckpt")
    pixels = pixel_batch(image_processor, 3)
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
        for cls in (CaptForImageClassification, CaptModel):
            loaded = cls.from_pretrained(tmp_path / "ckpt").eval()
            torch.testing.assert_close(loaded(pixel_values=pixels).logits, expected)
        auto = AutoModelForImageClassification.from_pretrained(tmp_path / "ckpt", trust_remote_code=True).eval()
        torch.testing.assert_close(auto(pixel_values=pixels).logits, expected)
        auto = AutoModel.from_pretrained(tmp_path / "ckpt", trust_remote_code=True).eval()
        torch.testing.assert_close(auto(pixel_values=pixels).logits, expected)
    for name in ("config.json", "model.safetensors", "configuration_capt.py", "modeling_capt.py",
                 "preprocessor_config.json", "tokenizer_config.json"):
        assert (tmp_path / "ckpt" / name).exists(), name


class AutoImageProcessorRaising:
    """Stands in for `AutoImageProcessor` in `modeling_capt.modeling_prompt_clip`: `from_pretrained` raises `error` (the
    class is replaced whole, since some transformers releases raise on merely reading the real one's attributes)."""

    def __init__(self, error):
        self.error = error

    def from_pretrained(self, *args, **kwargs):
        raise self.error


TORCHVISION_MISSING = ImportError("AutoImageProcessor requires the Torchvision library")


def test_reload_survives_an_image_processor_this_transformers_cannot_load(tmp_path, tiny_clip, tokenizer,
                                                                          image_processor, monkeypatch, caplog):
    """An older transformers without torchvision raises ImportError for a CLIP image processor: the model still
    loads (the processor is optional), with a warning that names it."""
    from modeling_capt import modeling_prompt_clip

    model = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer,
                                                 image_processor=image_processor)
    model.save_pretrained(tmp_path / "ckpt")
    monkeypatch.setattr(modeling_prompt_clip, "AutoImageProcessor", AutoImageProcessorRaising(TORCHVISION_MISSING))
    monkeypatch.setattr(transformers, "CLIPImageProcessor", AutoImageProcessorRaising(TORCHVISION_MISSING))
    with caplog.at_level("WARNING"):
        loaded = CaptForImageClassification.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.image_processor is None and loaded.tokenizer is not None
    assert "image_processor" in caplog.text and "Torchvision" in caplog.text
    pixels = pixel_batch(image_processor, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits)


def test_image_processor_falls_back_to_the_clip_class(tmp_path, image_processor, monkeypatch):
    """Where this transformers' AutoImageProcessor needs a backend that is not installed (ImportError), the CLIP
    image processor is loaded directly; any other error is left alone."""
    from modeling_capt import load_image_processor, modeling_prompt_clip

    image_processor.save_pretrained(tmp_path)
    monkeypatch.setattr(modeling_prompt_clip, "AutoImageProcessor", AutoImageProcessorRaising(TORCHVISION_MISSING))
    loaded = load_image_processor(tmp_path)
    pixels = loaded(images=random_images(2), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels, image_processor(images=random_images(2), return_tensors="pt")["pixel_values"])

    monkeypatch.setattr(modeling_prompt_clip, "AutoImageProcessor", AutoImageProcessorRaising(OSError("no preprocessor")))
    with pytest.raises(OSError, match="no preprocessor"):
        load_image_processor(tmp_path)


def test_model_needs_class_names():
    with pytest.raises(ValueError, match="id2label"):
        CaptModel(CaptConfig(clip_config=CLIPConfig(), id2label={}))


@pytest.mark.parametrize("kind", ["capt", "coop"])
def test_adapter_export_loads_onto_plain_clip(tmp_path, tiny_clip_dir, image_processor, kind):
    from modeling_capt import CaptAdapterConfig

    overrides = (
        {"adapter_config": CaptAdapterConfig(mgde_num_clusters=2)} if kind == "capt" else {"use_learnable_context": True}
    )
    model = CaptForImageClassification.from_clip(tiny_clip_dir, CLASS_NAMES, **overrides)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
        if kind == "capt":
            model.mgde.expert_gates.fill_(0.3)
            model.update_running_alpha(torch.tensor([2.0, 3.0]))
    model.clear_text_cache()
    model.save_adapter(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    loaded = CaptForImageClassification.from_adapter(tmp_path / "adapter")  # base model id read from the config
    pixels = pixel_batch(image_processor, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits, atol=0, rtol=0)
    assert loaded.config.class_names == CLASS_NAMES
    reworded = CaptForImageClassification.from_adapter(tmp_path / "adapter", template="a sketch of a {}.")
    assert reworded.config.template == "a sketch of a {}."  # the export's template is only a default
    with pytest.raises(ValueError, match=r"\['n_ctx'\] are set by the adapter export"):
        CaptForImageClassification.from_adapter(tmp_path / "adapter", n_ctx=8)
    # the export holds only the trained parts, not CLIP
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "adapter" / "adapter_model.safetensors").keys()
    assert keys and all(not k.startswith("clip.") or ".adapter." in k for k in keys)


def test_reloaded_checkpoint_keeps_clip_frozen(tmp_path, tiny_clip, tokenizer):
    # transformers' loader re-creates the loaded parameters with requires_grad=True; CLIP must stay frozen
    from modeling_capt import CaptAdapterConfig

    model = CaptForImageClassification.from_clip(
        tiny_clip, CLASS_NAMES, tokenizer=tokenizer, use_learnable_context=True,
        adapter_config=CaptAdapterConfig(mgde_num_clusters=2),
    )
    expected = model.trainable_parameter_names()
    assert expected and not any(name.startswith("clip.") and ".adapter." not in name for name in expected)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = CaptForImageClassification.from_pretrained(tmp_path / "ckpt")
    assert loaded.trainable_parameter_names() == expected
    auto = AutoModelForImageClassification.from_pretrained(tmp_path / "ckpt", trust_remote_code=True)
    assert auto.trainable_parameter_names() == expected


def test_load_state_dict_refreshes_class_text_features(tiny_clip, tokenizer, image_processor):
    model = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer, use_learnable_context=True)
    pixels = pixel_batch(image_processor, 2)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    # a random shift (a constant one would vanish in the text encoder's LayerNorm)
    state["prompt_context.ctx"] += torch.randn(model.prompt_context.ctx.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(pixel_values=pixels).logits  # caches the class features of the current context
        model.load_state_dict(state)
        got = model(pixel_values=pixels).logits
        model.clear_text_cache()
        expected = model(pixel_values=pixels).logits
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(got, expected)


def test_class_features_cached_under_inference_mode_allow_backward(tiny_clip, tokenizer, image_processor):
    from modeling_capt import CaptAdapterConfig

    model = CaptForImageClassification.from_clip(
        tiny_clip, CLASS_NAMES, tokenizer=tokenizer, adapter_config=CaptAdapterConfig(mgde_num_clusters=2)
    )
    pixels = pixel_batch(image_processor, 2)
    with torch.inference_mode():
        expected = model(pixel_values=pixels).logits  # evaluation caches the class features
    # then training in eval mode (no MGDE noise or dropout): the cache feeds a graph
    out = model(pixel_values=pixels, labels=torch.tensor([0, 1]))
    out.loss.backward()
    torch.testing.assert_close(out.logits.detach(), expected)
    assert model.mgde.expert_gates.grad is not None


def test_no_grad_forward_in_training_mode_sees_the_trained_context(tiny_clip, tokenizer, image_processor):
    coop = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer, use_learnable_context=True)
    coop.train()
    optimizer = torch.optim.SGD([p for p in coop.parameters() if p.requires_grad], lr=10.0)
    pixels = pixel_batch(image_processor, 4)
    with torch.no_grad():
        coop(pixel_values=pixels)  # e.g. a training-accuracy check: fills the cache
    coop(pixel_values=pixels, labels=torch.tensor([0, 1, 2, 3])).loss.backward()
    optimizer.step()
    with torch.no_grad():
        got = coop.get_class_text_features()
        coop.clear_text_cache()
        expected = coop.get_class_text_features()
    torch.testing.assert_close(got, expected)


def test_class_features_cached_under_autocast_are_not_reused_outside_it(tiny_clip, tokenizer):
    model = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer).eval()
    with torch.no_grad():
        expected = model.get_class_text_features()
        model.clear_text_cache()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.get_class_text_features()  # fills the cache in bf16
        got = model.get_class_text_features()
    assert low.dtype == torch.bfloat16
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_reloading_a_checkpoint_attaches_clips_tokenizer_without_a_model_type_warning(tmp_path, tiny_clip, tokenizer,
                                                                                      caplog):
    import logging

    CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer).save_pretrained(tmp_path / "c")
    with caplog.at_level(logging.WARNING):
        loaded = CaptForImageClassification.from_pretrained(tmp_path / "c")
    assert type(loaded.tokenizer).__name__.startswith("CLIPTokenizer")
    assert not [r for r in caplog.records if "instantiate a model of type" in r.getMessage()]


def test_reloading_a_checkpoint_without_a_tokenizer_attaches_none(tmp_path, tiny_clip, tokenizer):
    """transformers 5's AutoTokenizer builds an empty CLIPTokenizer from the config alone when a folder holds no
    tokenizer files; attached, it tokenised every novel class name to the same unknown tokens."""
    model = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer)
    model.tokenizer = None
    model.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "tokenizer_config.json").exists()
    loaded = CaptForImageClassification.from_pretrained(tmp_path / "ckpt")
    assert loaded.tokenizer is None
    with pytest.raises(ValueError, match="needs a tokenizer"):
        loaded.set_class_names(["zebra", "car"])
    torch.testing.assert_close(loaded.class_input_ids, model.class_input_ids, atol=0, rtol=0)


def test_reloading_from_a_subfolder_attaches_its_tokenizer_and_image_processor(tmp_path, tiny_clip, tokenizer,
                                                                              image_processor):
    model = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer,
                                                 image_processor=image_processor)
    model.save_pretrained(tmp_path / "repo" / "model")
    loaded = CaptForImageClassification.from_pretrained(tmp_path / "repo", subfolder="model")
    assert loaded.tokenizer is not None and len(loaded.tokenizer) == len(tokenizer)
    assert loaded.image_processor is not None
    loaded.set_class_names(["zebra", "car"])
    expected = tokenizer(["a photo of a zebra.", "a photo of a car."], padding="max_length", max_length=32,
                         return_tensors="pt")["input_ids"]
    torch.testing.assert_close(loaded.class_input_ids, expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    "change, error",
    [
        ({"vision_config": {"num_hidden_layers": 3}}, "missing"),  # the adapted layers get other indices
        ({"vision_config": {"hidden_size": 64, "num_attention_heads": 2}}, "another shape"),
        ({"projection_dim": 8}, "another shape"),  # only MGDE's centres and w differ
    ],
)
def test_adapter_export_refuses_a_clip_of_another_shape(tmp_path, tiny_clip, tokenizer, change, error):
    from transformers import CLIPModel

    from modeling_capt import CaptAdapterConfig

    model = CaptForImageClassification.from_clip(
        tiny_clip, CLASS_NAMES, tokenizer=tokenizer, adapter_config=CaptAdapterConfig(mgde_num_clusters=2)
    )
    model.save_adapter(tmp_path / "adapter")
    config = tiny_clip.config.to_dict()
    for key, value in change.items():
        config[key] = dict(config[key], **value) if isinstance(value, dict) else value
    other = CLIPModel(CLIPConfig(**config)).eval()
    with pytest.raises(ValueError, match=error):
        CaptForImageClassification.from_adapter(tmp_path / "adapter", clip=other, tokenizer=tokenizer)


def _trained_capt(tiny_clip, tokenizer, image_processor):
    """A CAPT model with every trained part and buffer moved off its initial value (CoOp context, adapters, MGDE
    gates, router and experts, the running alphas, the k-means centres) and non-default config fields."""
    from modeling_capt import CaptAdapterConfig

    model = CaptForImageClassification.from_clip(
        tiny_clip, CLASS_NAMES, tokenizer=tokenizer, image_processor=image_processor, use_learnable_context=True,
        max_text_length=20, adapter_config=CaptAdapterConfig(mgde_num_clusters=2, alpha_scale=3.0, mgde_top_k=1),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.init_semantic_experts(torch.randn(2, 16, generator=generator), torch.randn(2, 16, generator=generator))
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
        model.mgde.expert_gates.copy_(torch.tensor([0.3, 0.5, 0.7]))
    model.update_running_alpha(torch.tensor([2.0, 3.5, 4.25]))
    model.clear_text_cache()
    return model.eval()


def test_capt_checkpoint_round_trip_is_bit_exact(tmp_path, tiny_clip, tokenizer, image_processor):
    model = _trained_capt(tiny_clip, tokenizer, image_processor)
    pixels = pixel_batch(image_processor, 3)
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits  # fills the text cache: it must not be what is saved
    model.save_pretrained(tmp_path / "ckpt")
    loaded = CaptForImageClassification.from_pretrained(tmp_path / "ckpt").eval()
    saved, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(saved)
    for key, value in saved.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    for layer in loaded.clip.vision_model.encoder.layers:
        assert float(layer.adapter.alpha_running) == 3.25 and int(layer.adapter.alpha_count) == 3
    assert not torch.equal(loaded.mgde.commonality_expert.centres, torch.zeros(2, 16))
    mine, theirs = model.config.to_dict(), loaded.config.to_dict()
    mine.pop("_name_or_path", None), theirs.pop("_name_or_path", None)
    assert theirs == mine and loaded.config.adapter == model.config.adapter
    with torch.no_grad():  # the same weights; loaded tensors may sit at other memory alignments (last-bit BLAS noise)
        torch.testing.assert_close(loaded(pixel_values=pixels).logits, expected, atol=1e-5, rtol=0)


def test_config_round_trip_keeps_every_field(tmp_path):
    import inspect

    from modeling_capt import CaptAdapterConfig

    values = {
        "clip_config": CLIPConfig(text_config={"max_position_embeddings": 40}, projection_dim=24).to_dict(),
        "template": "a blurry photo of a {}.",
        "use_learnable_context": True,
        "n_ctx": 3,
        "ctx_init": "a blurry photo",
        "adapter_config": CaptAdapterConfig(
            target_modules=r"encoder\.layers\.[01]", layers_to_transform=[0], adapter_branches="local",
            adapter_num_heads=2, alpha_scale=2.5, alpha_gamma=0.75, use_mgde=False, mgde_top_k=3,
            mgde_num_clusters=5, mgde_router_noise_std=0.25, mgde_expert_dropout=0.2, base_model_name_or_path="o/c",
        ).to_dict(),
        "max_text_length": 33,
        "base_model_name_or_path": "org/clip",
    }
    fields = [name for name in inspect.signature(CaptConfig.__init__).parameters if name not in ("self", "kwargs")]
    assert sorted(values) == sorted(fields), "a CaptConfig field this test does not set"
    defaults = CaptConfig(id2label={0: "a"})
    for name, value in values.items():
        if name != "clip_config":
            assert getattr(defaults, name) != value, f"{name}: pick a non-default value"
    config = CaptConfig(**values, id2label={0: "apple", 1: "pear"}, label2id={"apple": 0, "pear": 1})
    config.save_pretrained(tmp_path)
    loaded = CaptConfig.from_pretrained(tmp_path)
    for name, value in values.items():
        got = getattr(loaded, name)
        assert (got.to_dict() if name == "clip_config" else got) == value, name
    assert loaded.clip_config.projection_dim == 24 and loaded.text_length == 33
    assert loaded.id2label == {0: "apple", 1: "pear"} and loaded.label2id == {"apple": 0, "pear": 1}
    assert loaded.class_names == ["apple", "pear"]


def test_saved_auto_map_names_every_auto_class(tmp_path, tiny_clip, tokenizer):
    import json

    model = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer)
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_capt.CaptConfig",
        "AutoModel": "modeling_capt.CaptModel",
        "AutoModelForImageClassification": "modeling_capt.CaptForImageClassification",
        "AutoModelForZeroShotImageClassification": "modeling_capt.CaptForZeroShotImageClassification",
    }
    assert config["architectures"] == ["CaptForImageClassification"] and config["model_type"] == "capt"


def test_novel_classes_on_a_trained_model_survive_save_and_reload(tmp_path, tiny_clip, tokenizer, image_processor):
    model = _trained_capt(tiny_clip, tokenizer, image_processor)
    model.set_class_names(["zebra", "car", "violin"])
    assert model.config.id2label == {0: "zebra", 1: "car", 2: "violin"}
    assert model.config.label2id == {"zebra": 0, "car": 1, "violin": 2} and model.config.num_labels == 3
    pixels = pixel_batch(image_processor, 2)
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
    assert expected.shape == (2, 3)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = CaptForImageClassification.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config.id2label == {0: "zebra", 1: "car", 2: "violin"}
    assert loaded.config.label2id == {"zebra": 0, "car": 1, "violin": 2}
    assert torch.equal(loaded.class_input_ids, model.class_input_ids)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("argument", ["dtype", "torch_dtype"])
def test_bf16_load_keeps_integer_buffers_and_classifies_alike(tmp_path, tiny_clip, tokenizer, image_processor,
                                                              argument):
    model = _trained_capt(tiny_clip, tokenizer, image_processor)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = CaptForImageClassification.from_pretrained(tmp_path / "ckpt", **{argument: torch.bfloat16}).eval()
    assert loaded.mgde.expert_gates.dtype == torch.bfloat16 and loaded.clip.logit_scale.dtype == torch.bfloat16
    assert loaded.class_input_ids.dtype == torch.long and loaded.class_attention_mask.dtype == torch.long
    assert all(layer.adapter.alpha_count.dtype == torch.long and int(layer.adapter.alpha_count) == 3
               for layer in loaded.clip.vision_model.encoder.layers)
    assert loaded.trainable_parameter_names() == model.trainable_parameter_names()
    pixels = pixel_batch(image_processor, 3)
    with torch.no_grad():
        got = loaded(pixel_values=pixels.bfloat16()).logits.float()
        expected = model(pixel_values=pixels).logits
    torch.testing.assert_close(got, expected, atol=0.25, rtol=0.05)


def test_device_map_load_matches(tmp_path, tiny_clip, tokenizer, image_processor):
    model = _trained_capt(tiny_clip, tokenizer, image_processor)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = CaptForImageClassification.from_pretrained(tmp_path / "ckpt", device_map="cpu").eval()
    pixels = pixel_batch(image_processor, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits,
                                   atol=1e-5, rtol=0)


def test_peft_and_transformers_refuse_the_adapter_export_rather_than_misload_it(tmp_path, tiny_clip_dir):
    """adapter_config.json is PEFT-shaped, but its peft_type is none of PEFT's: PEFT (and transformers' PEFT
    integration, which reads any folder with an adapter_config.json) must refuse it, not load something else."""
    peft = pytest.importorskip("peft")
    from modeling_capt import CaptAdapterConfig

    model = CaptForImageClassification.from_clip(tiny_clip_dir, CLASS_NAMES,
                                                 adapter_config=CaptAdapterConfig(mgde_num_clusters=2))
    model.save_adapter(tmp_path / "adapter")
    import json

    payload = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert payload["peft_type"] not in {member.value for member in peft.PeftType}
    assert payload["base_model_name_or_path"] == tiny_clip_dir
    with pytest.raises(KeyError, match="CAPT_DIFF_MANNER"):
        peft.PeftConfig.from_pretrained(tmp_path / "adapter")
    with pytest.raises((KeyError, ValueError, OSError)):
        AutoModelForImageClassification.from_pretrained(tmp_path / "adapter")


def test_load_clip_weights_refuses_a_state_dict_that_does_not_fit(tiny_clip, tokenizer):
    from modeling_capt import CaptAdapterConfig

    model = CaptForImageClassification.from_clip(
        tiny_clip, CLASS_NAMES, tokenizer=tokenizer, adapter_config=CaptAdapterConfig(use_mgde=False)
    )
    state = tiny_clip.state_dict()
    model.load_clip_weights(state)  # a plain CLIP state dict fits, the adapted layers' weights under base_layer
    with pytest.raises(ValueError, match="missing.*text_projection"):
        model.load_clip_weights({k: v for k, v in state.items() if k != "text_projection.weight"})
    with pytest.raises(ValueError, match="unexpected.*extra"):
        model.load_clip_weights(dict(state, extra=torch.zeros(1)))


def test_local_branch_on_the_last_layer_is_an_error_not_an_inert_adapter():
    """The last layer's patch update is skipped (only the CLS token is read after it), so a local-only adapter there
    would change nothing."""
    import pytest

    from modeling_capt import CaptAdapterConfig

    with pytest.raises(ValueError, match="inert"):
        CaptAdapterConfig(adapter_branches="local").select_layers(4)
    assert CaptAdapterConfig(adapter_branches="local", layers_to_transform=[-3, -2]).select_layers(4) == [1, 2]
    assert CaptAdapterConfig(adapter_branches="both").select_layers(4) == [2, 3]


def test_a_model_without_adapters_keeps_mgde(tiny_clip, tokenizer):
    from modeling_capt import CaptAdapterConfig, CaptForImageClassification

    config = CaptAdapterConfig(use_adapters=False, adapter_num_heads=2)
    model = CaptForImageClassification.from_clip(tiny_clip, ["cat", "dog"], tokenizer=tokenizer, adapter_config=config)
    assert not any("adapter" in name for name, _ in model.named_parameters())
    assert any("mgde" in name for name, _ in model.named_parameters())
