"""The shared prompt-CLIP model: its own text tower, layer hooks, per-image text features, declared trainable parts,
frozen prefixes and adapter exports of either model family."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from modeling_capt import (
    CaptAdapterConfig,
    CaptForImageClassification,
    PromptCLIPConfig,
    PromptCLIPForImageClassification,
    PromptCLIPModel,
    PromptContextConfig,
)

from conftest import CLASS_NAMES, pixel_batch


def _clip(tokenizer, text_layers=2, vision_layers=2, seed=0):
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=text_layers, num_attention_heads=2,
            intermediate_size=37, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32, num_hidden_layers=vision_layers, num_attention_heads=2, intermediate_size=37,
            image_size=32, patch_size=4,
        ),
        projection_dim=16,
    )
    return CLIPModel(config).eval()


def _texts_with_padding(tokenizer, padding):
    texts = ["a photo of a cat.", "a blurry photo of a very large dog.", "bird"]
    return tokenizer(texts, padding=padding, max_length=32, return_tensors="pt")


# --------------------------------------------------------------------------------------------------- the text tower
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("padding", ["max_length", "longest", "none"])
def test_text_tower_equals_clip_text_features(tokenizer, attn_implementation, padding):
    """The model runs the text tower layer by layer itself: with no hook its features are CLIP's, bit for bit, with
    padding (the padding mask joins the causal mask) and without (SDPA's own causal path)."""
    model = PromptCLIPForImageClassification.from_clip(_clip(tokenizer), CLASS_NAMES, tokenizer=tokenizer)
    model.clip.set_attn_implementation(attn_implementation)
    clip = model.clip
    assert clip.text_model.config._attn_implementation == attn_implementation
    if padding == "none":
        inputs = tokenizer(["a photo of a cat.", "a cat of a photo."], return_tensors="pt")
        assert bool(inputs["attention_mask"].all())
    else:
        inputs = _texts_with_padding(tokenizer, padding)
        assert not bool(inputs["attention_mask"].all())
    with torch.no_grad():
        expected = clip.get_text_features(**inputs).pooler_output
        got = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        class_features = model.get_class_text_features()
        class_expected = clip.get_text_features(input_ids=model.class_input_ids,
                                                attention_mask=model.class_attention_mask).pooler_output
    assert torch.equal(got, expected)
    assert torch.equal(class_features, torch.nn.functional.normalize(class_expected, dim=-1))


def test_text_tower_pools_at_the_first_end_of_text_token(tokenizer):
    """Padding with the end-of-text token (CLIP's tokenizer pads with it): pooling takes the first one."""
    clip = _clip(tokenizer)
    model = PromptCLIPModel.from_clip(clip, CLASS_NAMES, tokenizer=tokenizer)
    inputs = _texts_with_padding(tokenizer, "max_length")
    eos = model._eos_index(inputs["input_ids"])
    assert eos.tolist() == (inputs["attention_mask"].sum(-1) - 1).tolist()


# --------------------------------------------------------------------------------------------------- layer hooks
def test_a_hook_that_returns_the_same_tokens_changes_nothing(tokenizer, image_processor):
    clip = _clip(tokenizer)
    model = PromptCLIPForImageClassification.from_clip(clip, CLASS_NAMES, tokenizer=tokenizer)
    pixels = pixel_batch(image_processor, 3)
    with torch.no_grad():
        expected = model(pixel_values=pixels)
    calls = []

    def same_tokens(hidden_states, state):
        calls.append((state.tower, state.layer_index))
        return hidden_states.clone()

    handles = [model.register_layer_hook(tower, index, same_tokens) for tower in ("vision", "text") for index in (0, 1)]
    with torch.no_grad():
        got = model(pixel_values=pixels)
    assert sorted(calls) == [("text", 0), ("text", 1), ("vision", 0), ("vision", 1)]
    assert torch.equal(got.logits, expected.logits) and torch.equal(got.text_embeds, expected.text_embeds)
    for handle in handles:
        handle.remove()
    calls.clear()
    with torch.no_grad():
        model.clear_text_cache()
        assert torch.equal(model(pixel_values=pixels).logits, expected.logits)
    assert calls == []


def _insert(tokens):
    def hook(hidden_states, state):
        inserted = tokens.to(hidden_states.dtype).unsqueeze(0).expand(hidden_states.shape[0], -1, -1)
        return torch.cat([hidden_states[:, :1], inserted, hidden_states[:, 1:]], dim=1)

    return hook


def test_text_hook_inserting_tokens_reaches_exactly_the_chosen_layers(tokenizer):
    """Two tokens inserted before text layer 1 of 3: layer 0 sees the prompts, layers 1 and 2 see two more tokens,
    the padding mask is extended with ones right after the start token and the EOS index moves by two."""
    model = PromptCLIPModel.from_clip(_clip(tokenizer, text_layers=3), CLASS_NAMES, tokenizer=tokenizer)
    inputs = _texts_with_padding(tokenizer, "max_length")
    seen = []

    def record(hidden_states, state):
        seen.append((state.layer_index, hidden_states.shape[1], state.num_inserted, state.eos_index.clone(),
                     state.attention_mask.clone()))

    tokens = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    for index in range(3):
        model.register_layer_hook("text", index, record)
    insert_calls = []
    model.register_layer_hook("text", 1, lambda h, s: insert_calls.append(s.layer_index) or _insert(tokens)(h, s))
    model.register_layer_hook("text", 1, record)  # after the insertion, same layer
    with torch.no_grad():
        got = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
    assert insert_calls == [1]
    eos = model._eos_index(inputs["input_ids"])
    mask = inputs["attention_mask"]
    extended = torch.cat([mask[:, :1], torch.ones(3, 2, dtype=mask.dtype), mask[:, 1:]], dim=1)
    assert [(i, length, n) for i, length, n, _, _ in seen] == [(0, 32, 0), (1, 32, 0), (1, 34, 2), (2, 34, 2)]
    for index, _, inserted, eos_index, attention_mask in seen:
        assert torch.equal(eos_index, eos + inserted)
        assert torch.equal(attention_mask, extended if inserted else mask)

    # the same as feeding the tower the longer sequence from the start of layer 1 (mask and EOS built from scratch)
    model2 = PromptCLIPModel.from_clip(_clip(tokenizer, text_layers=3), CLASS_NAMES, tokenizer=tokenizer)
    with torch.no_grad():
        hidden, _, _ = model2.encode_text_hidden(inputs["input_ids"], inputs["attention_mask"], end_layer=1)
        longer = _insert(tokens)(hidden, None)
        ids = inputs["input_ids"]
        longer_ids = torch.cat([ids[:, :1], ids[:, 1:2].expand(-1, 2), ids[:, 1:]], dim=1)  # no EOS among the new ones
        resumed, _, eos_index = model2.encode_text_hidden(longer_ids, extended, hidden_states=longer, start_layer=1)
        expected = model2.project_text_hidden(resumed, eos_index)
    assert torch.equal(got, expected)
    with torch.no_grad():
        assert not torch.allclose(got, model2.encode_text(inputs["input_ids"], inputs["attention_mask"]))


def test_vision_hook_inserting_tokens_keeps_cls_pooling(tokenizer, image_processor):
    model = PromptCLIPModel.from_clip(_clip(tokenizer, vision_layers=3), CLASS_NAMES, tokenizer=tokenizer)
    pixels = pixel_batch(image_processor, 2)
    seen = []
    tokens = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    model.register_layer_hook("vision", 2, _insert(tokens))
    for index in range(3):
        model.register_layer_hook("vision", index, lambda h, s: seen.append((s.layer_index, h.shape[1],
                                                                             s.num_inserted)))
    with torch.no_grad():
        hidden = model.encode_image_hidden(pixels)
        logits = model(pixel_values=pixels).logits
    assert seen[:3] == [(0, 65, 0), (1, 65, 0), (2, 68, 3)] and hidden.shape == (2, 68, 32)
    assert logits.shape == (2, len(CLASS_NAMES))


def test_hooks_key_the_text_cache_and_can_be_disabled(tokenizer):
    model = PromptCLIPModel.from_clip(_clip(tokenizer), CLASS_NAMES, tokenizer=tokenizer)
    tokens = torch.randn(2, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = model.get_class_text_features()
        handle = model.register_layer_hook("text", 1, _insert(tokens))
        hooked = model.get_class_text_features()  # no clear_text_cache: the cache knows the hooks changed
        with model.layer_hooks_disabled():
            assert torch.equal(model.get_class_text_features(), plain)
        assert torch.equal(model.get_class_text_features(), hooked)
        handle.remove()
        assert torch.equal(model.get_class_text_features(), plain)
    assert not torch.allclose(hooked, plain)


def test_hook_arguments_and_results_are_checked(tokenizer, image_processor):
    model = PromptCLIPModel.from_clip(_clip(tokenizer), CLASS_NAMES, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="tower"):
        model.register_layer_hook("audio", 0, lambda h, s: h)
    with pytest.raises(ValueError, match="out of range"):
        model.register_layer_hook("text", 2, lambda h, s: h)
    handle = model.register_layer_hook("text", -1, lambda h, s: None)  # negative: from the last layer; None: unchanged
    assert model.frozen_text_prefix() == 1
    handle.remove()
    model.register_layer_hook("vision", 1, lambda h, s: h[:, 1:])
    with pytest.raises(ValueError, match="removed 1 tokens"):
        model(pixel_values=pixel_batch(image_processor, 1))


# --------------------------------------------------------------------------------------------------- per-image text
def _coop(tokenizer, **kwargs):
    model = PromptCLIPForImageClassification.from_clip(
        _clip(tokenizer), CLASS_NAMES, tokenizer=tokenizer, use_learnable_context=True, ctx_init=None, **kwargs
    )
    return model


def test_per_image_context_equal_for_all_images_gives_the_shared_features(tokenizer):
    model = _coop(tokenizer)
    context = model.prompt_context.ctx.detach().unsqueeze(0).expand(3, -1, -1)
    with torch.no_grad():
        shared = model.get_class_text_features()
        per_image = model.get_class_text_features(context=context)
        one_class_per_call = model.get_class_text_features(context=context, chunk_size=4)
    assert per_image.shape == (3, len(CLASS_NAMES), 16)
    for image in range(3):
        torch.testing.assert_close(per_image[image], shared, atol=1e-6, rtol=0)
    torch.testing.assert_close(one_class_per_call, per_image, atol=1e-6, rtol=0)


class _PerImageContext(PromptCLIPForImageClassification):
    """Scores every image against prompts built on its own context (here: the shared one plus an image offset)."""

    offsets = None

    def text_embeds_for_images(self, image_hidden_states, text_hidden_states=None, text_start_layer=0):
        context = self.prompt_context.ctx.unsqueeze(0).expand(image_hidden_states.shape[0], -1, -1)
        if self.offsets is not None:
            context = context + self.offsets
        return self.get_class_text_features(context=context, chunk_size=5)


def test_forward_scores_per_image_text_features(tokenizer, image_processor):
    shared = _coop(tokenizer)
    per_image = _PerImageContext.from_clip(_clip(tokenizer), CLASS_NAMES, tokenizer=tokenizer,
                                           use_learnable_context=True, ctx_init=None)
    per_image.load_state_dict(shared.state_dict())
    pixels = pixel_batch(image_processor, 4)
    with torch.no_grad():
        expected = shared(pixel_values=pixels)
        got = per_image(pixel_values=pixels)
    assert got.text_embeds.shape == (4, len(CLASS_NAMES), 16)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=0)

    # other contexts per image: each image's row is its own prompts' logits; gradients reach the context
    per_image.offsets = torch.randn(4, 1, 32, generator=torch.Generator().manual_seed(3))
    per_image.train()
    out = per_image(pixel_values=pixels, labels=torch.tensor([0, 1, 2, 3]))
    out.loss.backward()
    assert per_image.prompt_context.ctx.grad.abs().sum() > 0
    with torch.no_grad():
        for image in range(4):
            context = (per_image.prompt_context.ctx + per_image.offsets[image]).unsqueeze(0)
            text = per_image.get_class_text_features(context=context)[0]
            logits = per_image.clip.logit_scale.exp() * out.image_embeds[image] @ text.t()
            torch.testing.assert_close(out.logits[image].detach(), logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_size", [256, 7])
def test_per_image_features_are_each_images_own(tokenizer, chunk_size):
    """Distinct contexts, several classes per text-encoder call (7 // 3 = 2, or all): row b is image b's prompts."""
    model = _coop(tokenizer)
    context = torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        together = model.get_class_text_features(context=context, chunk_size=chunk_size)
        for image in range(3):
            alone = model.get_class_text_features(context=context[image : image + 1])[0]
            torch.testing.assert_close(together[image], alone, atol=1e-6, rtol=0)
    assert not torch.allclose(together[0], together[1])


def test_per_image_context_needs_context_slots(tokenizer):
    model = PromptCLIPModel.from_clip(_clip(tokenizer), CLASS_NAMES, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="use_learnable_context"):
        model.get_class_text_features(context=torch.zeros(2, 4, 32))
    with pytest.raises(ValueError, match="n_ctx=3"):
        _coop(tokenizer, n_ctx=3).get_class_text_features(context=torch.zeros(2, 4, 32))


# --------------------------------------------------------------------------------------------------- trainable parts
def _models(tokenizer):
    clip = _clip(tokenizer)
    capt = CaptAdapterConfig(mgde_num_clusters=2, layers_to_transform=[1])
    return {
        "zero-shot": PromptCLIPForImageClassification.from_clip(clip, CLASS_NAMES, tokenizer=tokenizer),
        "coop": PromptCLIPForImageClassification.from_clip(clip, CLASS_NAMES, tokenizer=tokenizer,
                                                           use_learnable_context=True),
        "capt": CaptForImageClassification.from_clip(clip, CLASS_NAMES, tokenizer=tokenizer, adapter_config=capt),
        "capt+coop": CaptForImageClassification.from_clip(clip, CLASS_NAMES, tokenizer=tokenizer,
                                                          use_learnable_context=True, adapter_config=capt),
    }


EXPECTED_PARTS = {
    "zero-shot": [],
    "coop": ["prompt_context"],
    "capt": ["clip.vision_model.encoder.layers.1.adapter", "mgde"],
    "capt+coop": ["prompt_context", "clip.vision_model.encoder.layers.1.adapter", "mgde"],
}


@pytest.mark.parametrize("kind", list(EXPECTED_PARTS))
def test_exactly_the_declared_parts_train(tmp_path, tokenizer, kind):
    model = _models(tokenizer)[kind]
    parts = model.trainable_module_names()
    assert parts == EXPECTED_PARTS[kind]

    def under_parts(key):
        return any(key == part or key.startswith(part + ".") for part in parts)

    declared = [name for name, _ in model.named_parameters() if under_parts(name)]
    assert [name for name, p in model.named_parameters() if p.requires_grad] == declared
    assert model.trainable_parameter_names() == declared
    assert list(model.adapter_state_dict()) == [key for key in model.state_dict() if under_parts(key)]
    if "capt" in kind:  # the running alpha and the k-means centres are exported, not trained
        exported = model.adapter_state_dict()
        assert "clip.vision_model.encoder.layers.1.adapter.alpha_running" in exported
        assert "mgde.commonality_expert.centres" in exported
    model.save_pretrained(tmp_path / "ckpt")
    loaded = type(model).from_pretrained(tmp_path / "ckpt")
    assert [name for name, p in loaded.named_parameters() if p.requires_grad] == declared


@pytest.mark.parametrize("kind", list(EXPECTED_PARTS))
def test_frozen_prefixes(tokenizer, kind):
    model = _models(tokenizer)[kind]
    vision = {"zero-shot": 2, "coop": 2, "capt": 1, "capt+coop": 1}[kind]
    text = 0 if "coop" in kind else 2
    assert (model.frozen_vision_prefix(), model.frozen_text_prefix()) == (vision, text)
    handle = model.register_layer_hook("vision", 0, lambda h, s: h)
    model.register_layer_hook("text", 1, lambda h, s: h)
    assert (model.frozen_vision_prefix(), model.frozen_text_prefix()) == (0, min(text, 1))
    handle.remove()
    assert model.frozen_vision_prefix() == vision


@pytest.mark.parametrize("kind", list(EXPECTED_PARTS))
def test_adapter_export_round_trip_rebuilds_the_exporting_class(tmp_path, tokenizer, image_processor, kind):
    model = _models(tokenizer)[kind]
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
        if "capt" in kind:
            model.mgde.expert_gates.fill_(0.4)
            model.update_running_alpha(torch.tensor([1.5, 2.0]))
    model.clear_text_cache()
    model.save_adapter(tmp_path / "adapter")
    payload = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert payload["model_class"] == type(model).__name__
    loaded = PromptCLIPModel.from_adapter(tmp_path / "adapter", clip=_clip(tokenizer), tokenizer=tokenizer)
    assert type(loaded) is type(model)
    assert list(loaded.adapter_state_dict()) == list(model.adapter_state_dict())
    for key, value in model.adapter_state_dict().items():
        assert torch.equal(loaded.adapter_state_dict()[key], value), key
    pixels = pixel_batch(image_processor, 3)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits)


def test_a_prompt_clip_checkpoint_and_export_need_no_capt_fields(tmp_path, tokenizer):
    model = _models(tokenizer)["coop"]
    model.save_adapter(tmp_path / "adapter")
    payload = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert payload["peft_type"] == "PROMPT_CLIP" and "has_adapters" not in payload and "adapter_branches" not in payload
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model_type"] == "prompt_clip" and "adapter_config" not in config
    assert config["auto_map"]["AutoModel"] == "modeling_prompt_clip.PromptCLIPModel"
    with pytest.raises(TypeError, match="adapter_config"):
        PromptCLIPModel.from_clip(_clip(tokenizer), CLASS_NAMES, tokenizer=tokenizer, adapter_config={})


def test_prompt_context_config_validates_the_coop_options():
    assert PromptContextConfig().to_dict() == {"n_ctx": 4, "ctx_init": "a photo of a"}
    for bad in ({"n_ctx": 0}, {"n_ctx": True}, {"ctx_init": "  "}):
        with pytest.raises(ValueError):
            PromptContextConfig(**bad)
    with pytest.raises(ValueError, match="n_ctx"):
        PromptCLIPConfig(n_ctx=-1, id2label={0: "a"})
    config = PromptCLIPConfig(use_learnable_context=True, n_ctx=2, ctx_init=None, id2label={0: "a"})
    assert config.prompt_context == PromptContextConfig(n_ctx=2, ctx_init=None)
    assert PromptCLIPConfig(id2label={0: "a"}).prompt_context is None
