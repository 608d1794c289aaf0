"""ANPrompt's model pair on a tiny random CLIP: the noise paths, where the prompts enter, NRVPP's LoRA, the logits,
novel classes, and saving / loading / serving."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from conftest import random_images
from modeling_capt import AnpromptConfig, AnpromptForImageClassification, AnpromptPromptConfig, load_pretrained
from modeling_capt.configuration_anprompt import default_prompt_layers
from modeling_capt.modeling_anprompt import AnpromptLoRA


NAMES = ["cat", "dog", "bird"]
SENTENCES = {name: {"main": [f"a photo of a {name}.", f"a {name}."], "noise": [f"a photo of something like a {name}."]}
             for name in NAMES}


def deep_clip(tokenizer, layers=4):
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=24, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=37,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    return CLIPModel(config).eval()


def build(clip, tokenizer, **prompt_options):
    return AnpromptForImageClassification.from_clip(
        clip, NAMES, tokenizer=tokenizer, prompt_config=AnpromptPromptConfig(**prompt_options),
        class_sentences=SENTENCES,
    )


def pixels(n=2, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_default_layers_are_the_papers_6_to_12_of_12_as_a_rule_on_depth():
    assert [i + 1 for i in default_prompt_layers(12)] == list(range(6, 13))
    assert default_prompt_layers(24) == list(range(10, 24))
    assert default_prompt_layers(2) == [1]


@pytest.mark.parametrize("bad", [dict(num_prompts=0), dict(theta=1.5), dict(second_logits="x"), dict(eval_logits="y"),
                                 dict(noise_alpha=-1), dict(prompt_layers=[])])
def test_prompt_config_validates(bad):
    with pytest.raises(ValueError):
        AnpromptPromptConfig(**bad)


def test_with_eps_and_alpha_zero_the_noise_has_no_effect(tiny_clip, tokenizer):
    model = build(tiny_clip, tokenizer, anti_noise_eps=0.0, noise_alpha=0.0)
    with torch.no_grad():
        before = model(pixel_values=pixels())
        model.set_noise_prompts(torch.randn(5, 16))
        model.set_class_names(NAMES, class_sentences={n: {"main": SENTENCES[n]["main"], "noise": ["zebra stripes."]}
                                                       for n in NAMES})
        after = model(pixel_values=pixels())
    for name in ("logits", "logits_align", "logits_weak_noise", "logits_nrvpp"):
        torch.testing.assert_close(getattr(after, name), getattr(before, name), rtol=0, atol=0)
    noisy = build(tiny_clip, tokenizer, anti_noise_eps=0.5)  # the same seed-free weights differ: compare its own
    with torch.no_grad():
        first = noisy(pixel_values=pixels()).logits_align
        noisy.set_noise_prompts(torch.randn(5, 16))
        assert not torch.allclose(noisy(pixel_values=pixels()).logits_align, first)


def test_prompts_reach_exactly_the_chosen_layers_and_shift_the_eos_index(tokenizer):
    model = build(deep_clip(tokenizer), tokenizer, prompt_layers=[1, 3], num_prompts=3)
    assert model.frozen_vision_prefix() == 1 and model.frozen_text_prefix() == 1
    seen = {"vision": {}, "text": {}}
    projections = {"vision": model.vision_prompt_projections, "text": model.text_prompt_projections}

    def recorder(tower, layer):
        def hook(hidden, state):  # registered after the model's own hooks: sees what the layer receives
            slot = [1, 3].index(layer) if layer in (1, 3) else None
            prompt = None if slot is None else projections[tower][slot](model.anti_noise())
            seen[tower][layer] = dict(length=hidden.shape[1], inserted=state.num_inserted,
                                      eos=None if state.eos_index is None else state.eos_index.clone(),
                                      mask=None if state.attention_mask is None else state.attention_mask.clone(),
                                      equal=None if prompt is None else torch.allclose(hidden[0, 1:4], prompt))
        return hook

    for tower in ("vision", "text"):
        for layer in range(4):
            model.register_layer_hook(tower, layer, recorder(tower, layer))
    with torch.no_grad():
        model(pixel_values=pixels(1))
    tokens = model.clip.vision_model.embeddings.num_positions
    assert [seen["vision"][i]["length"] for i in range(4)] == [tokens, tokens + 3, tokens + 3, tokens + 3]
    assert [seen["vision"][i]["equal"] for i in (1, 3)] == [True, True]
    eos = model._eos_index(model.class_input_ids)
    text = seen["text"]
    assert text[0]["inserted"] == 0 and torch.equal(text[0]["eos"], eos)
    for layer in (1, 2, 3):
        assert text[layer]["inserted"] == 3 and torch.equal(text[layer]["eos"], eos + 3)
        assert text[layer]["length"] == model.class_input_ids.shape[1] + 3
        assert torch.equal(text[layer]["mask"][:, 1:4], torch.ones(len(NAMES), 3, dtype=torch.long))
    assert text[1]["equal"] and text[3]["equal"]


def test_an_untrained_lora_adds_nothing_and_matches_peft(tiny_clip, tokenizer):
    peft = pytest.importorskip("peft")
    lora = AnpromptLoRA(24, 16, rank=4, alpha=8.0)
    x = torch.randn(3, 24)
    assert torch.equal(lora(x), torch.zeros(3, 16))
    torch.nn.init.normal_(lora.lora_B)
    holder = torch.nn.Module()
    holder.proj = base = torch.nn.Linear(24, 16)
    expected = base(x).detach() + lora(x)
    wrapped = peft.get_peft_model(holder, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["proj"]))
    layer = wrapped.base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(lora.lora_A)
        layer.lora_B["default"].weight.copy_(lora.lora_B)
        torch.testing.assert_close(layer(x), expected)


def test_prediction_is_theta_mixture_and_options_pick_the_logits(tiny_clip, tokenizer):
    model = build(tiny_clip, tokenizer, theta=0.7)
    with torch.no_grad():
        out = model(pixel_values=pixels(), labels=torch.tensor([0, 2]))
    torch.testing.assert_close(out.logits, 0.7 * out.logits_align + 0.3 * out.logits_weak_noise)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits_align, torch.tensor([0, 2])))
    code = build(tiny_clip, tokenizer, second_logits="nrvpp_text")
    with torch.no_grad():
        out = code(pixel_values=pixels())
    torch.testing.assert_close(out.logits, 0.7 * out.logits_align + 0.3 * out.logits_nrvpp_text)
    align = build(tiny_clip, tokenizer, eval_logits="align")
    with torch.no_grad():
        out = align(pixel_values=pixels())
    torch.testing.assert_close(out.logits, out.logits_align)


def test_novel_classes_take_weak_noise_from_sentences_or_the_template_with_a_warning(tiny_clip, tokenizer, caplog):
    model = build(tiny_clip, tokenizer)
    with caplog.at_level("WARNING"):
        model.set_class_names(["cat", "zebra"])
    assert "zebra" in caplog.text and "'cat'" not in caplog.text
    template = model.encode_sentences(["a photo of a zebra."])[0]
    torch.testing.assert_close(torch.nn.functional.normalize(model.weak_noise_features[1], dim=-0), template)
    main = model.encode_sentences(SENTENCES["cat"]["main"])
    noise = model.encode_sentences(SENTENCES["cat"]["noise"])
    torch.testing.assert_close(model.weak_noise_features[0], main.mean(0) + 0.001 * noise.mean(0))


@pytest.mark.slow
def test_saves_loads_with_remote_code_and_serves_both_pipelines(tiny_clip, tokenizer, image_processor, tmp_path):
    from transformers import AutoModel, pipeline

    model = AnpromptForImageClassification.from_clip(tiny_clip, NAMES, tokenizer=tokenizer,
                                                     image_processor=image_processor, class_sentences=SENTENCES)
    model.set_noise_prompts(torch.randn(5, 16))
    model.save_pretrained(tmp_path / "m")
    values = image_processor(images=random_images(2), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=values).logits
        loaded = AutoModel.from_pretrained(tmp_path / "m", trust_remote_code=True).eval()
        torch.testing.assert_close(loaded(pixel_values=values).logits, expected)
        torch.testing.assert_close(load_pretrained(tmp_path / "m")(pixel_values=values).logits, expected)
    assert loaded.config.class_sentences == SENTENCES
    classify = pipeline("image-classification", model=str(tmp_path / "m"), trust_remote_code=True)
    assert {r["label"] for r in classify(random_images(1)[0], top_k=3)} == set(NAMES)
    zero_shot = pipeline("zero-shot-image-classification", model=str(tmp_path / "m"), trust_remote_code=True)
    assert {r["label"] for r in zero_shot(random_images(1)[0], candidate_labels=["zebra", "car"])} == {"zebra", "car"}
    model.save_adapter(tmp_path / "adapter")
    restored = AnpromptForImageClassification.from_adapter(tmp_path / "adapter", clip=tiny_clip, tokenizer=tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(restored(pixel_values=values).logits, expected)


def test_config_refuses_a_coop_context_and_bad_sentences():
    with pytest.raises(ValueError):
        AnpromptConfig(id2label={0: "a"}, use_learnable_context=True)
    with pytest.raises(ValueError):
        AnpromptConfig(id2label={0: "a"}, class_sentences={"a": {"main": []}})
