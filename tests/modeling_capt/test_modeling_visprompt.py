"""VisPrompt's model: the config's checks, CoOp as its untrained special case, per-image prompts, chunking, saving."""

from __future__ import annotations

import pytest
import torch

from modeling_capt import (
    PromptCLIPForImageClassification,
    VisPromptConfig,
    VisPromptForImageClassification,
    VisPromptGuidanceConfig,
    load_pretrained,
)

from conftest import CLASS_NAMES, pixel_batch


def visprompt(tiny_clip, tokenizer, **guidance):
    return VisPromptForImageClassification.from_clip(
        tiny_clip, CLASS_NAMES, tokenizer=tokenizer, n_ctx=4, guidance_config=VisPromptGuidanceConfig(**guidance)
    )


@pytest.mark.parametrize("bad", [
    {"image_tokens": "patches"}, {"film_mode": "channel"}, {"film_update": "mul"}, {"num_attention_heads": 0},
    {"attention_dropout": 1.0}, {"ffn_dim": 0}, {"use_gate": "yes"}, {"text_chunk_size": -1},
])
def test_guidance_config_refuses_bad_values(bad):
    with pytest.raises((ValueError, TypeError)):
        VisPromptGuidanceConfig(**bad)


def test_config_round_trips_and_needs_the_context():
    config = VisPromptConfig(id2label={0: "a", 1: "b"}, guidance_config={"image_tokens": "global"})
    again = VisPromptConfig.from_dict(config.to_dict())
    assert again.guidance == VisPromptGuidanceConfig(image_tokens="global")
    assert again.n_ctx == 16 and again.ctx_init is None
    with pytest.raises(ValueError, match="use_learnable_context"):
        VisPromptConfig(use_learnable_context=False)
    with pytest.raises(ValueError, match="Unknown"):
        VisPromptConfig(guidance_config={"gate": True})


def test_heads_must_divide_the_text_width(tiny_clip, tokenizer):
    with pytest.raises(ValueError, match="divide"):
        visprompt(tiny_clip, tokenizer, num_attention_heads=5)


def test_untrained_gate_and_ffn_with_zero_attention_give_coop_logits(tiny_clip, tokenizer, image_processor):
    model = visprompt(tiny_clip, tokenizer, use_film=False).eval()
    with torch.no_grad():
        model.image_guidance.attention.out_proj.weight.zero_()
        model.image_guidance.attention.out_proj.bias.zero_()
    coop = PromptCLIPForImageClassification.from_clip(
        tiny_clip, CLASS_NAMES, tokenizer=tokenizer, use_learnable_context=True, n_ctx=4, ctx_init=None).eval()
    coop.load_state_dict({"prompt_context.ctx": model.prompt_context.ctx.detach().clone()}, strict=False)
    pixels = pixel_batch(image_processor, 3)
    with torch.no_grad():
        out = model(pixel_values=pixels)
        expected = coop(pixel_values=pixels).logits
    assert out.text_embeds.shape == (3, len(CLASS_NAMES), 16)  # one prompt set per image
    assert out.gate.shape == (3,) and bool(((out.gate > 0) & (out.gate < 1)).all())
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)


def test_without_image_guidance_it_is_coop(tiny_clip, tokenizer, image_processor):
    model = visprompt(tiny_clip, tokenizer, image_guidance=False).eval()
    assert model.trainable_module_names() == ["prompt_context"] and model.reads_only_cls_token
    out = model(pixel_values=pixel_batch(image_processor, 2))
    assert out.gate is None and out.text_embeds.shape == (len(CLASS_NAMES), 16)


@pytest.mark.parametrize("guidance", [
    {}, {"image_tokens": "global"}, {"film_mode": "global"}, {"film_update": "add"}, {"use_gate": False},
    {"use_ffn": False},
])
def test_every_option_trains_the_guidance(tiny_clip, tokenizer, image_processor, guidance):
    model = visprompt(tiny_clip, tokenizer, **guidance).train()
    assert model.reads_only_cls_token == (guidance.get("image_tokens") == "global")
    out = model(pixel_values=pixel_batch(image_processor, 2), labels=torch.tensor([0, 1]))
    out.loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "prompt_context.ctx" in trained
    assert "image_guidance.image_projection.weight" in trained
    assert not any(n.startswith("clip.") for n in trained)


def test_chunked_and_checkpointed_text_match_one_call(tiny_clip, tokenizer, image_processor):
    pixels, labels = pixel_batch(image_processor, 3), torch.tensor([0, 2, 5])
    grads, logits = [], []
    for chunk, recompute in ((256, False), (4, True)):  # 4 sequences per call: one class per chunk at batch 3
        model = visprompt(tiny_clip, tokenizer, text_chunk_size=chunk, checkpoint_text_chunks=recompute,
                          attention_dropout=0.0, ffn_dropout=0.0)
        torch.manual_seed(0)
        model.load_state_dict(visprompt(tiny_clip, tokenizer).state_dict())
        model.train()
        out = model(pixel_values=pixels, labels=labels)
        out.loss.backward()
        logits.append(out.logits.detach())
        grads.append(model.prompt_context.ctx.grad.clone())
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_save_load_and_adapter_round_trip(tiny_clip, tokenizer, image_processor, tmp_path):
    model = visprompt(tiny_clip, tokenizer, film_mode="global").eval()
    with torch.no_grad():
        for p in model.image_guidance.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.image_processor = image_processor
    pixels = pixel_batch(image_processor, 2)
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_pretrained(str(tmp_path / "ckpt"))
    assert type(loaded) is VisPromptForImageClassification
    assert loaded.config.guidance.film_mode == "global"
    model.save_adapter(tmp_path / "adapter")
    again = VisPromptForImageClassification.from_adapter(tmp_path / "adapter", clip=tiny_clip, tokenizer=tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixel_values=pixels).logits, expected)
        torch.testing.assert_close(again(pixel_values=pixels).logits, expected)


@pytest.mark.slow
def test_remote_code_and_both_pipelines(tiny_clip, tokenizer, image_processor, tmp_path):
    from transformers import AutoModel, pipeline

    model = visprompt(tiny_clip, tokenizer)
    model.image_processor = image_processor
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "modeling_visprompt.py").exists()
    assert type(AutoModel.from_pretrained(tmp_path / "ckpt", trust_remote_code=True)).__name__ == "VisPromptModel"
    classify = pipeline("image-classification", model=str(tmp_path / "ckpt"), trust_remote_code=True)
    from conftest import random_images

    image = random_images(1)[0]
    assert len(classify(image, top_k=2)) == 2
    zero_shot = pipeline("zero-shot-image-classification", model=str(tmp_path / "ckpt"), trust_remote_code=True)
    assert {x["label"] for x in zero_shot(image, candidate_labels=["zebra", "car"])} == {"zebra", "car"}
