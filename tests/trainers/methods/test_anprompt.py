"""ANPrompt's training method: the loss terms, the description cache, and the prefix caches."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import CLASS_NAMES, small_run_args
from modeling_capt import AnpromptForImageClassification
from trainers.methods.anprompt import (
    AnpromptArguments, AnpromptTrainingConfig, adaptive_gamma, similarity_loss, weak_alignment_loss,
)
from trainers.semantic_prompts import (
    JSONDescriptionGenerator, SemanticPromptFileError, TemplateDescriptionGenerator, load_descriptions,
    save_descriptions,
)


def test_gamma_is_the_formula_and_detached_by_default():
    logits = torch.randn(4, 6, requires_grad=True)
    gamma = adaptive_gamma(logits)
    assert gamma.item() == pytest.approx(1.0 / (logits.std().item() * 24 + 1e-6), rel=1e-6)
    assert not gamma.requires_grad
    assert adaptive_gamma(logits, detach=False).requires_grad


def test_kl_direction_follows_the_option():
    a, w = torch.randn(3, 5), torch.randn(3, 5)
    p_a, p_w = a.softmax(-1), w.softmax(-1)
    forward = (p_a * (p_a.log() - p_w.log())).sum()
    reverse = (p_w * (p_w.log() - p_a.log())).sum()
    torch.testing.assert_close(weak_alignment_loss(a, w, "kl", "forward"), forward)
    torch.testing.assert_close(weak_alignment_loss(a, w, "kl", "reverse"), reverse)
    assert not torch.allclose(forward, reverse)
    for distance in ("l1", "mse", "cos"):
        assert weak_alignment_loss(a, a, distance).abs().item() < 1e-6


def test_similarity_loss_is_zero_for_the_untrained_model_with_the_prompt_path_disabled(tiny_clip, tokenizer):
    model = AnpromptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        clip_image = F.normalize(tiny_clip.visual_projection(tiny_clip.vision_model(pixel_values=pixels).pooler_output), dim=-1)
        clip_text = F.normalize(model.encode_sentences([f"a photo of a {n}." for n in CLASS_NAMES]), dim=-1)
        with model.layer_hooks_disabled():
            out = model(pixel_values=pixels)
        assert similarity_loss(out.image_embeds, clip_image, out.text_embeds, clip_text).abs().item() < 1e-6
        prompted = model(pixel_values=pixels)
        assert similarity_loss(prompted.image_embeds, clip_image, prompted.text_embeds, clip_text).item() > 1e-4


def test_flags_validate_through_the_configs():
    with pytest.raises(ValueError):
        AnpromptArguments(kl_direction="sideways")
    with pytest.raises(ValueError):
        AnpromptArguments(theta=2.0)
    with pytest.raises(ValueError):
        AnpromptTrainingConfig(description_generator="json")


def test_offline_descriptions_use_the_pretraining_caption_templates():
    from dataset_scripts.embedded_captions import CAPTION_TEMPLATES

    main, noise = TemplateDescriptionGenerator().generate(["ankle_boot"])
    assert main["ankle_boot"] == [t.format("ankle boot") for t in CAPTION_TEMPLATES]
    assert len(noise["ankle_boot"]) == 5


def test_json_descriptions_name_the_classes_without_sentences(tmp_path):
    save_descriptions({"cat": ["a cat."], "dog": []}, tmp_path / "main.json")
    save_descriptions({"cat": ["maybe a cat."], "dog": ["maybe a dog."]}, tmp_path / "noise.json")
    assert load_descriptions(tmp_path / "main.json") == {"cat": ["a cat."]}
    with pytest.raises(SemanticPromptFileError, match="dog"):
        JSONDescriptionGenerator(tmp_path / "main.json", tmp_path / "noise.json").generate(["cat", "dog"])


@pytest.mark.slow
def test_the_prefix_caches_give_the_same_training(tmp_path, tiny_clip_dir):
    from trainers.train_capt import main
    from conftest import reset_accelerate

    argv = small_run_args(tmp_path, tiny_clip_dir) + ["--method", "anprompt", "--save_every_epochs", "0"]
    main(argv + ["--output_dir", str(tmp_path / "cached"), "--prefix_cache", "memory"])
    reset_accelerate()
    main(argv + ["--output_dir", str(tmp_path / "plain"), "--prefix_cache", "off"])
    cached = load_file(tmp_path / "cached" / "model" / "model.safetensors")
    plain = load_file(tmp_path / "plain" / "model" / "model.safetensors")
    for key in plain:
        torch.testing.assert_close(cached[key], plain[key], rtol=0, atol=1e-6, msg=key)
    assert json.loads((tmp_path / "cached" / "descriptions" / "main.json").read_text())["cat"]


def _prepare(tmp_path, tiny_clip, tokenizer, **flags):
    """`AnpromptMethod.prepare` on the offline descriptions of CLASS_NAMES, then the model's weak-noise features."""
    from types import SimpleNamespace

    from trainers.methods.anprompt import AnpromptMethod

    run = SimpleNamespace(
        train_names=CLASS_NAMES, splits={}, state={}, accelerator=SimpleNamespace(is_main_process=True),
        train_args=SimpleNamespace(seed=1, output_dir=str(tmp_path / "out")),
    )
    AnpromptMethod(AnpromptArguments(**flags)).prepare(run)
    model = AnpromptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer,
                                                     class_sentences=run.state["class_sentences"])
    return run.state, model.weak_noise_features.clone()


def test_strong_perturbation_changes_the_main_sentences_only(tmp_path, tiny_clip, tokenizer):
    clean, clean_features = _prepare(tmp_path, tiny_clip, tokenizer)
    none, none_features = _prepare(tmp_path, tiny_clip, tokenizer, strong_perturbation="none", fw_sampling="mean")
    assert none["descriptions"] == clean["descriptions"]
    mean, mean_features = _prepare(tmp_path, tiny_clip, tokenizer, fw_sampling="mean")
    torch.testing.assert_close(none_features, mean_features, rtol=0, atol=0)  # 'none' leaves the features unchanged
    shuffled, shuffled_features = _prepare(tmp_path, tiny_clip, tokenizer, strong_perturbation="shuffle",
                                           fw_sampling="mean")
    assert shuffled["descriptions"][1] == clean["descriptions"][1]  # the noise sentences are not perturbed
    for name in CLASS_NAMES:
        for perturbed, original in zip(shuffled["descriptions"][0][name], clean["descriptions"][0][name]):
            assert sorted(perturbed.split()) == sorted(original.split())
    assert shuffled["class_sentences"] != mean["class_sentences"]
    assert not torch.allclose(shuffled_features, mean_features)
    again, _ = _prepare(tmp_path, tiny_clip, tokenizer, strong_perturbation="shuffle", fw_sampling="mean")
    assert again["class_sentences"] == shuffled["class_sentences"]  # seeded by the run's seed
    saved = json.loads((tmp_path / "out" / "descriptions" / "main.json").read_text())
    assert saved == clean["descriptions"][0]  # the description cache stays clean
    with pytest.raises(ValueError, match="strong_perturbation"):
        AnpromptTrainingConfig(strong_perturbation="swap")
    with pytest.raises(ValueError, match="perturbation_rate"):
        AnpromptTrainingConfig(perturbation_rate=1.5)


def test_lm_descriptions_from_a_tiny_random_local_lm(tmp_path, caplog):
    """`--description_generator lm` on a local folder: a real text-generation pipeline, greedy, one line a sentence."""
    import logging

    from transformers import TextGenerationPipeline

    from fixtures_lm import WORDS, tiny_random_lm
    from trainers.semantic_prompts import LMDescriptionGenerator, get_description_generator

    model, tokenizer = tiny_random_lm()
    folder = tmp_path / "tiny-lm"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    generator = get_description_generator("lm", description_lm=str(folder), num_main=2, num_noise=1,
                                          max_new_tokens=8, show_progress=False)
    assert isinstance(generator.pipeline, TextGenerationPipeline)
    main, noise = generator.generate(["wolf", "cat"])
    for descriptions, count in ((main, 2), (noise, 1)):
        assert list(descriptions) == ["wolf", "cat"]
        for sentences in descriptions.values():
            assert 1 <= len(sentences) <= count
            assert all(set(sentence.split()) <= set(WORDS.split()) for sentence in sentences)  # the LM's own words
    assert generator.generate(["wolf", "cat"]) == (main, noise)  # greedy decoding

    strict = LMDescriptionGenerator(model, tokenizer=tokenizer, num_main=2, num_noise=1, max_new_tokens=8,
                                    max_sentence_chars=1, show_progress=False)  # no line is short enough
    with caplog.at_level(logging.WARNING, logger="trainers.semantic_prompts"):
        fallback_main, fallback_noise = strict.generate(["cat"])
    assert (fallback_main, fallback_noise) == TemplateDescriptionGenerator().generate(["cat"])
    assert "no usable sentences for 'cat'" in caplog.text
