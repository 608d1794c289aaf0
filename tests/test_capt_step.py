"""CaptStep, the CAPT training step, against the loss of METHODS.md CAPT 6 computed by hand on a tiny model:
`L = CE(logit_scale * cos(img, text), y) + lambda_confuse * L_confuse`, with `L_confuse` the symmetric InfoNCE over
`{f(x_j), f(r_c1), ..., f(r_ck)}` and `{t_y, t_c1, ..., t_ck}` (temperature 1 / logit_scale), the representatives
passing through the same adapted encoder with the sample's `alpha_j = s * mean_c(max(cos, 0)) ** gamma`."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import CLASS_NAMES
from modeling_capt import CaptAdapterConfig, CaptForImageClassification
from modeling_capt.confusion import CaptConfusionBank
from trainers.capt_training import CaptStep


NUM_CLASSES, PER_CLASS = 4, 3


class FakeRows:
    """The `train_rows` interface CaptStep reads: `len` and `pixel_values(indices, processor)`."""

    def __init__(self, pixels):
        self.pixels = pixels

    def __len__(self):
        return self.pixels.shape[0]

    def pixel_values(self, indices, image_processor):
        return self.pixels[torch.as_tensor(list(indices))]


class FakeAccelerator:
    num_processes = 1

    def unwrap_model(self, model):
        return model

    def autocast(self):
        return contextlib.nullcontext()


def capt_args(**overrides):
    args = dict(use_sem=True, use_sam=True, pseudo_gt=True, confusion_statistics=True, symmetric_statistics=False,
                random_samples=False, alpha_scale=5.0, alpha_gamma=0.5, lambda_confuse=0.7, load_balance_coef=0.0,
                k_pairs=2)
    args.update(overrides)
    return SimpleNamespace(**args)


@pytest.fixture
def setup(tiny_clip, tokenizer):
    names = CLASS_NAMES[:NUM_CLASSES]
    adapter = CaptAdapterConfig(adapter_num_heads=2, mgde_router_noise_std=0.0, mgde_expert_dropout=0.0)
    model = CaptForImageClassification.from_clip(tiny_clip, names, tokenizer=tokenizer, adapter_config=adapter)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # "trained" adapters and open MGDE gates, so alpha and every image matter
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    model.train()

    num = NUM_CLASSES * PER_CLASS
    pixels = torch.randn(num, 3, 32, 32, generator=generator)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)
    probs = torch.randn(num, NUM_CLASSES, generator=generator).mul(2).softmax(-1)
    embeds = torch.randn(num, 16, generator=generator)
    bank = CaptConfusionBank.from_tensors(torch.arange(num), labels, probs, embeds, names)
    assert bank.num_misclassified > 0
    return model, bank, FakeRows(pixels)


def loss_by_hand(model, bank, pixels, batch_indices, args):
    """Every quantity from METHODS.md, sample by sample, images encoded one at a time."""
    from modeling_capt.confusion import retrieve_representatives, select_confusion_classes

    k = args.k_pairs
    labels = bank.labels[batch_indices]
    text = model.get_class_text_features()
    scale = model.clip.logit_scale.exp()
    ce_terms, confuse_terms, alphas = [], [], []
    for j, y in zip(batch_indices.tolist(), labels.tolist()):
        classes = select_confusion_classes(bank.probs[j : j + 1], bank.confusion_matrix, torch.tensor([y]), k=k)
        reps, cosine = retrieve_representatives(bank.embeds[j : j + 1], classes, bank)
        alpha = args.alpha_scale * cosine.clamp_min(0).mean() ** args.alpha_gamma
        alphas.append(float(alpha))

        def embed(index):
            out = model(pixel_values=pixels[index : index + 1], alpha=alpha.view(1))
            return out.image_embeds[0]

        image = torch.stack([embed(j)] + [embed(int(bank.indices[r])) for r in reps[0]])  # (k + 1, P)
        texts = text[torch.cat([torch.tensor([y]), classes[0]])]  # (k + 1, P)
        ce_terms.append(F.cross_entropy(scale * image[:1] @ text.T, torch.tensor([y])))
        sims = scale * image @ texts.T  # (L, L): image i vs text i'
        targets = torch.arange(k + 1)
        confuse_terms.append(F.cross_entropy(sims, targets) + F.cross_entropy(sims.T, targets))
    ce = torch.stack(ce_terms).mean()
    confuse = torch.stack(confuse_terms).mean()
    return ce + args.lambda_confuse * confuse, ce, confuse, alphas


def test_capt_step_loss_by_hand(setup):
    model, bank, rows = setup
    args = capt_args()
    batch_indices = torch.tensor([1, 4, 8, 10])  # one sample of each class
    batch = {"indices": batch_indices, "labels": bank.labels[batch_indices], "pixel_values": rows.pixels[batch_indices]}
    step = CaptStep(model, bank, args, rows, image_processor=None, accelerator=FakeAccelerator())

    with torch.no_grad():
        expected, ce, confuse, alphas = loss_by_hand(model, bank, rows.pixels, batch_indices, args)
    assert len(set(round(a, 4) for a in alphas)) == 4  # per-sample alphas, so mixing them up shows
    assert (bank.preds[batch_indices] != bank.labels[batch_indices]).any()  # the g-first branch is exercised
    loss, logs = step(batch)
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=1e-4)
    assert logs["train/ce"] == pytest.approx(float(ce), abs=1e-4)
    assert logs["train/confuse"] == pytest.approx(float(confuse), abs=1e-4)
    assert logs["train/alpha"] == pytest.approx(sum(alphas) / len(alphas), abs=1e-5)
    # the inference alpha is the running mean of the samples' training alphas (not the representatives' copies)
    layer = model.clip.vision_model.encoder.layers[-1]
    assert layer.alpha_count.item() == 4
    assert layer.alpha_running.item() == pytest.approx(sum(alphas) / 4, abs=1e-5)
    assert math.isfinite(loss.item()) and loss.requires_grad


def test_bank_embeddings_are_frozen_clip_features_whatever_the_base_model(setup, tiny_clip):
    """METHODS.md CAPT 1 / paper Eq. 8: the bank stores the *frozen* image embedding e_j (retrieval compares samples
    through the frozen encoder E_I), also when the base model is a trained CAPT checkpoint whose adapters and MGDE
    move the image features; its probabilities C_j are the trained model's own."""
    from trainers.capt_training import build_bank

    model, _, rows = setup
    model.eval()
    labels = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)

    def make_loader(dataset, image_processor, batch_size, shuffle, num_workers, split):
        return [{"pixel_values": rows.pixels[i : i + 5], "indices": torch.arange(i, min(i + 5, len(rows))),
                 "labels": labels[i : i + 5]} for i in range(0, len(rows), 5)]

    bank = build_bank(model, SimpleNamespace(dataset=None), None, 5, model.config.class_names, model.config.template,
                      "capt", make_loader)
    with torch.no_grad():
        frozen = F.normalize(tiny_clip.get_image_features(pixel_values=rows.pixels).pooler_output, dim=-1)
        adapted = model(pixel_values=rows.pixels)
    assert not torch.allclose(adapted.image_embeds, frozen, atol=1e-3)  # the base model's own features differ
    torch.testing.assert_close(bank.embeds, frozen, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bank.probs, adapted.logits.softmax(-1), atol=1e-5, rtol=1e-5)


def test_mixed_precision_steps_reuse_the_class_text_features(setup, monkeypatch):
    """Under Accelerate's mixed precision the prepared forward runs in autocast: the step must read the class text
    features in that precision too, or the model's cache (keyed by the autocast dtype) is recomputed twice per step,
    once outside and once inside the forward (the whole text encoder over every class: 1000 prompts on ImageNet)."""
    from accelerate import Accelerator

    model, bank, rows = setup
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    step = CaptStep(prepared, bank, capt_args(), rows, image_processor=None, accelerator=accelerator)
    batch_indices = torch.tensor([1, 4, 8, 10])
    batch = {"indices": batch_indices, "labels": bank.labels[batch_indices], "pixel_values": rows.pixels[batch_indices]}
    calls = []
    encode_text = type(model).encode_text
    monkeypatch.setattr(type(model), "encode_text", lambda self, *a, **k: calls.append(1) or encode_text(self, *a, **k))
    for _ in range(3):
        loss, _ = step(batch)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    assert math.isfinite(loss.item())
    assert len(calls) == 1  # computed in the first step, then read from the cache
