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
from dataset_scripts.bank import CaptConfusionBank
from trainers.methods.capt import CaptStep


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
                k_pairs=2, confusion_rule="exclude_label", samples_per_class=1, alpha_per_representative=False)
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


def mined_classes(bank, j, y, args):
    """Sample `j`'s confusion classes as the flags say: with SEM, the score S and the pseudo-GT as configured; without
    SEM, the base model's most probable wrong classes (no statistics, true label)."""
    from trainers.confusion import select_confusion_classes

    if args.use_sem:
        flags = dict(pseudo_gt=args.pseudo_gt, use_statistics=args.confusion_statistics,
                     symmetric=args.symmetric_statistics, exclude_label=args.confusion_rule == "exclude_label")
    else:
        flags = dict(pseudo_gt=False, use_statistics=False)
    return select_confusion_classes(bank.probs[j : j + 1], bank.confusion_matrix, torch.tensor([y]), k=args.k_pairs,
                                    **flags)


def loss_by_hand(model, bank, pixels, batch_indices, args):
    """Every quantity from METHODS.md, sample by sample, images encoded one at a time."""
    from trainers.confusion import retrieve_representatives

    k = args.k_pairs
    labels = bank.labels[batch_indices]
    text = model.get_class_text_features()
    scale = model.clip.logit_scale.exp()
    ce_terms, confuse_terms, alphas = [], [], []
    classes = torch.cat([mined_classes(bank, j, y, args) for j, y in zip(batch_indices.tolist(), labels.tolist())])
    if args.use_sam and args.random_samples:  # the step's draws: one call, its generator seeded with 0
        random_reps, random_cosine = retrieve_representatives(bank.embeds[batch_indices], classes, bank,
                                                              random_samples=True,
                                                              generator=torch.Generator().manual_seed(0))
    for position, (j, y) in enumerate(zip(batch_indices.tolist(), labels.tolist())):
        own = classes[position : position + 1]
        if args.use_sam and args.random_samples:
            reps, cosine = random_reps[position : position + 1], random_cosine[position : position + 1]
        elif args.use_sam:
            reps, cosine = retrieve_representatives(bank.embeds[j : j + 1], own, bank)
            m = args.samples_per_class
            if m > 1:  # the m most similar pool members of each class, by brute force
                rows_of, cos_of = [], []
                for c in own[0].tolist():
                    pool = [r for r in range(len(bank)) if bank.labels[r] == c and bank.preds[r] != c] or [
                        r for r in range(len(bank)) if bank.labels[r] == c]
                    sims_c = F.normalize(bank.embeds[pool], dim=-1) @ F.normalize(bank.embeds[j], dim=-1)
                    order = sorted(range(len(pool)), key=lambda i: (-float(sims_c[i]), i))[:m]
                    order = [order[i % len(order)] for i in range(m)]
                    rows_of += [pool[i] for i in order]
                    cos_of += [float(sims_c[i]) for i in order]
                reps, cosine = torch.tensor([rows_of]), torch.tensor([cos_of])
        if args.use_sam:
            alpha = args.alpha_scale * cosine.clamp_min(0).mean() ** args.alpha_gamma
        else:
            alpha = torch.tensor(float(args.alpha_scale))
        alphas.append(float(alpha))

        def embed(index, weight=alpha):
            out = model(pixel_values=pixels[index : index + 1], alpha=torch.as_tensor(weight).view(1))
            return out.image_embeds[0]

        texts = text[torch.cat([torch.tensor([y]), own[0]])]  # (k + 1, P)
        if args.use_sam:
            m = reps.shape[1] // max(own.shape[1], 1)
            group = [y] + [c for c in own[0].tolist() for _ in range(m)]
            rep_alphas = (args.alpha_scale * cosine[0].clamp_min(0) ** args.alpha_gamma
                          if args.alpha_per_representative else [alpha] * reps.shape[1])
            image = torch.stack([embed(j)] + [embed(int(bank.indices[r]), a) for r, a in zip(reps[0], rep_alphas)])
            texts = text[torch.tensor(group)]
            sims = scale * image @ texts.T  # (L, L): image i vs text i'
            terms = []
            for matrix in (sims, sims.T):  # a repeated class is neither target nor negative of its twin
                for i in range(len(group)):
                    keep = [jj for jj in range(len(group)) if jj == i or group[jj] != group[i]]
                    terms.append(-F.log_softmax(matrix[i, keep], -1)[keep.index(i)])
            confuse_terms.append(torch.stack(terms[: len(group)]).mean() + torch.stack(terms[len(group):]).mean())
        else:  # no representatives: the sample against its own and its confusion classes' texts
            image = embed(j)[None]
            confuse_terms.append(F.cross_entropy(scale * image @ texts.T, torch.tensor([0])))
        ce_terms.append(F.cross_entropy(scale * image[:1] @ text.T, torch.tensor([y])))
    ce = torch.stack(ce_terms).mean()
    confuse = torch.stack(confuse_terms).mean()
    return ce + args.lambda_confuse * confuse, ce, confuse, alphas


def check_step(model, bank, rows, args, batch_indices):
    """Run one CaptStep on the batch and compare it with `loss_by_hand`; returns the hand-computed loss."""
    batch = {"indices": batch_indices, "labels": bank.labels[batch_indices], "pixel_values": rows.pixels[batch_indices]}
    step = CaptStep(model, bank, args, rows, image_processor=None, accelerator=FakeAccelerator())
    with torch.no_grad():
        expected, ce, confuse, alphas = loss_by_hand(model, bank, rows.pixels, batch_indices, args)
    if args.use_sam:
        assert len(set(round(a, 4) for a in alphas)) == len(alphas)  # per-sample alphas, so mixing them up shows
    else:
        assert alphas == [args.alpha_scale] * len(alphas)
    assert (bank.preds[batch_indices] != bank.labels[batch_indices]).any()  # the g-first branch is exercised
    loss, logs = step(batch)
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=1e-4)
    assert logs["train/ce"] == pytest.approx(float(ce), abs=1e-4)
    assert logs["train/confuse"] == pytest.approx(float(confuse), abs=1e-4)
    if args.use_sam:
        assert logs["train/alpha"] == pytest.approx(sum(alphas) / len(alphas), abs=1e-5)
    # the inference alpha is the running mean of the samples' training alphas (not the representatives' copies)
    layer = model.clip.vision_model.encoder.layers[-1]
    assert layer.alpha_count.item() == len(alphas)
    assert layer.alpha_running.item() == pytest.approx(sum(alphas) / len(alphas), abs=1e-5)
    assert math.isfinite(loss.item()) and loss.requires_grad
    return expected


def test_capt_step_loss_by_hand(setup):
    model, bank, rows = setup
    check_step(model, bank, rows, capt_args(), torch.tensor([1, 4, 8, 10]))  # one sample of each class


def designed_bank(names, embeds):
    """A bank on which each mining flag changes the confusion class (k = 1) of a sample of the batch [0, 3, 7, 10].

    Predictions (3 samples per class): class 0 -> [0, 0, 1], class 1 -> [1, 1, 2], class 2 -> [2, 3, 3],
    class 3 -> [3, 1, 1], so M[0,1] = 1, M[1,2] = 1, M[2,3] = 2, M[3,1] = 2 and the other cells are 0.

    - row 0 (y = g = 0), C = [.5, .16, .18, .16]: column 0 of M is empty, S = C -> class 2; symmetric statistics
      n = M[i,0] + M[0,i] = [0, 1, 0, 0] -> S_1 = 2 * .16 = .32 -> class 1.
    - row 3 (y = g = 1), C = [.2, .45, .25, .1]: n = M[:, 1] = [1, 0, 0, 2], sum 3, S = [.2667, -, .25, .1667]
      -> class 0; without statistics (also SEM off) -> class 2; symmetric n = [1, 0, 1, 2], sum 4,
      S = [.25, -, .3125, .15] -> class 2.
    - row 7 (y = 2, predicted 3), C = [.1, .22, .28, .4]: pseudo-GT -> g = 3 first; real GT: n = M[:, 2] =
      [0, 1, 0, 0], S = [.1, .44, -, .4] -> class 1.
    - row 10 (y = 3, predicted 1): class 1 whatever the flags.
    """
    preds = [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 1, 1]
    probs = torch.full((12, NUM_CLASSES), 0.1)
    probs[torch.arange(12), torch.tensor(preds)] = 0.7
    probs[0] = torch.tensor([0.5, 0.16, 0.18, 0.16])
    probs[3] = torch.tensor([0.2, 0.45, 0.25, 0.1])
    probs[7] = torch.tensor([0.1, 0.22, 0.28, 0.4])
    labels = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)
    bank = CaptConfusionBank.from_tensors(torch.arange(12), labels, probs, embeds, names)
    assert bank.preds.tolist() == preds
    return bank


VARIANTS = {
    "real_gt": ({"pseudo_gt": False}, {7}),
    "no_statistics": ({"confusion_statistics": False}, {3}),
    "symmetric": ({"symmetric_statistics": True}, {0, 3}),
    "no_sem": ({"use_sem": False}, {3}),
    "s_gamma": ({"alpha_scale": 3.0, "alpha_gamma": 2.0}, set()),
    "random_samples": ({"random_samples": True}, set()),
    "no_sam": ({"use_sam": False}, set()),
}

#: Options that keep the default's mining but change the loss in another way.
LOSS_VARIANTS = {
    # k = 1: the mean is the one intensity; gamma = 2 spreads the representatives' alphas
    "alpha_per_representative": {"alpha_per_representative": True, "k_pairs": 2, "alpha_gamma": 2.0},
    "samples_per_class_2": {"samples_per_class": 2, "k_pairs": 1},
}


@pytest.mark.parametrize("variant", list(LOSS_VARIANTS))
def test_capt_step_per_representative_alpha_and_several_samples_per_class(setup, variant):
    """Eq. 13 read per representative, and Figure 9's several representatives per class (duplicate text targets
    masked), each match the hand computation and change the loss."""
    model, setup_bank, rows = setup
    bank = designed_bank(setup_bank.class_names, setup_bank.embeds + 0.5)
    batch_indices = torch.tensor([0, 3, 7, 10])
    overrides = LOSS_VARIANTS[variant]
    expected = check_step(model, bank, rows, capt_args(**overrides), batch_indices)
    with torch.no_grad():
        others = {key: value for key, value in overrides.items() if key not in ("alpha_per_representative",
                                                                                  "samples_per_class")}
        baseline = loss_by_hand(model, bank, rows.pixels, batch_indices, capt_args(**others))[0]
    assert abs(float(expected - baseline)) > 5e-4  # well above the 1e-4 to which the step matches the hand loss


def test_capt_step_paper_rule_may_pick_the_own_label(setup):
    """The paper's literal pseudo-GT rule ranks S over every class but g: row 7 (y = 2, predicted 3) gets its own
    label with k = 2, and the InfoNCE masks the duplicate text target."""
    model, setup_bank, rows = setup
    bank = designed_bank(setup_bank.class_names, setup_bank.embeds + 0.5)
    args = capt_args(k_pairs=2, confusion_rule="paper")
    assert mined_classes(bank, 7, 2, args)[0].tolist() == [2, 1]  # S = [.1, .22, .56, -]: the own label first
    assert mined_classes(bank, 7, 2, capt_args(k_pairs=2))[0].tolist() == [3, 1]
    check_step(model, bank, rows, args, torch.tensor([0, 3, 7, 10]))


def test_no_sam_builds_no_adapters_and_nothing_to_train_is_refused(tiny_clip_dir):
    """The paper places the Diff-Manner adapters in SAM: without SAM the model has none ("SEM only" = prompts + MGDE)."""
    from trainers.methods.capt import CaptArguments, CaptMethod, adapter_config_of

    no_sam = CaptArguments(use_sam=False)
    assert adapter_config_of(no_sam).use_adapters is False and adapter_config_of(CaptArguments()).use_adapters
    method = CaptMethod(CaptArguments(use_sam=False, use_mgde=False))
    with pytest.raises(ValueError, match="train nothing"):
        method.check(SimpleNamespace(model_name_or_path=tiny_clip_dir))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_capt_step_follows_the_flags(setup, variant):
    """Each SEM / SAM flag reaches the step: the step matches the hand computation under the flag, and the flag
    changes the loss on this batch (a step that dropped it would compute the default's loss)."""
    model, setup_bank, rows = setup
    bank = designed_bank(setup_bank.class_names, setup_bank.embeds + 0.5)  # positive cosines: every alpha > 0
    overrides, changed_rows = VARIANTS[variant]
    args, default = capt_args(k_pairs=1, **overrides), capt_args(k_pairs=1)
    batch_indices = torch.tensor([0, 3, 7, 10])
    labels = bank.labels[batch_indices].tolist()
    mined = {j: mined_classes(bank, j, y, args).item() for j, y in zip(batch_indices.tolist(), labels)}
    default_mined = {j: mined_classes(bank, j, y, default).item() for j, y in zip(batch_indices.tolist(), labels)}
    assert default_mined == {0: 2, 3: 0, 7: 3, 10: 1}  # as the docstring of designed_bank computes
    assert {j for j in mined if mined[j] != default_mined[j]} == changed_rows
    expected = check_step(model, bank, rows, args, batch_indices)
    with torch.no_grad():
        baseline = loss_by_hand(model, bank, rows.pixels, batch_indices, default)[0]
    assert not torch.allclose(expected, baseline, atol=1e-3, rtol=1e-3)


def test_bank_embeddings_are_frozen_clip_features_whatever_the_base_model(setup, tiny_clip):
    """METHODS.md CAPT 1 / paper Eq. 8: the bank stores the *frozen* image embedding e_j (retrieval compares samples
    through the frozen encoder E_I), also when the base model is a trained CAPT checkpoint whose adapters and MGDE
    move the image features; its probabilities C_j are the trained model's own."""
    from dataset_scripts.bank import build_bank

    model, _, rows = setup
    model.eval()
    labels = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)

    loader = [{"pixel_values": rows.pixels[i : i + 5], "indices": torch.arange(i, min(i + 5, len(rows))),
                 "labels": labels[i : i + 5]} for i in range(0, len(rows), 5)]

    bank = build_bank(model, SimpleNamespace(dataset=None), None, 5, model.config.class_names, model.config.template,
                      "capt", loader=loader)
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


def test_correction_metrics_match_predictions_to_bank_rows_by_index(monkeypatch):
    """The trained model's predictions come back in any order (shards of several processes): each is matched to its
    bank row by training-set index, and the test predictions of the two models by test index."""
    import trainers.methods.capt as capt_method
    from trainers.methods.capt import correction_metrics

    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    base_preds = [1, 0, 0, 1, 2, 0]  # the bank's misclassified samples: indices 10, 12 and 15
    bank = CaptConfusionBank.from_tensors(torch.arange(10, 16), labels, F.one_hot(torch.tensor(base_preds), 3).float(),
                                          torch.eye(6), ["a", "b", "c"])
    order = torch.tensor([5, 3, 0, 4, 1, 2])
    new_preds = torch.tensor([0, 0, 0, 1, 2, 2])  # corrects 10 and 15, keeps 12 wrong: 2 of 3
    shuffled = {"indices": bank.indices[order], "preds": new_preds[order], "labels": labels[order]}
    monkeypatch.setattr(capt_method, "predict", lambda *args, **kwargs: shuffled)
    monkeypatch.setattr(capt_method, "make_loader", lambda *args, **kwargs: None)

    accelerator = FakeAccelerator()
    accelerator.prepare = lambda loader: loader
    test_labels = torch.tensor([0, 1, 2, 0])
    zeroshot = {"indices": torch.arange(4), "preds": torch.tensor([1, 1, 0, 0]), "labels": test_labels}
    trained_order = torch.tensor([3, 1, 2, 0])  # wrong before: 0, 2 -> fixes 0; right before: 1, 3 -> breaks 3
    trained = {"indices": trained_order, "preds": torch.tensor([0, 1, 1, 2])[trained_order],
               "labels": test_labels[trained_order]}
    result = correction_metrics(None, bank, SimpleNamespace(dataset=None), None, accelerator, zeroshot, trained,
                                None, None, 4)
    assert result["correction_rate"] == pytest.approx(200 / 3)
    assert result["bank_misclassified"] == 3
    assert result["test_correction_rate"] == pytest.approx(50.0)
    assert result["test_break_rate"] == pytest.approx(50.0)


def test_a_bank_of_other_training_data_is_refused(tmp_path):
    """--bank_path: a bank whose rows are not this training set's (same classes and size, other labels per index)
    is an error before any training, not a silent mismatch (its rows would be mined for the wrong samples)."""
    from dataset_scripts.confusion_bank import save_bank
    from trainers.methods.capt import prepare_bank_and_prompts

    names = ["cat", "dog", "fox"]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    probs = F.one_hot(torch.tensor([1, 0, 1, 2, 2, 0]), 3).float()
    bank = CaptConfusionBank.from_tensors(torch.arange(6), labels, probs, torch.eye(6), names)
    save_bank(bank, tmp_path / "bank")
    args = SimpleNamespace(bank_path=str(tmp_path / "bank"), bank_base_model=None, k_pairs=1, use_sem=False,
                           prompt_generator="template", mgde_num_clusters=2)

    def prepare(train_labels):
        rows = FakeRows(torch.zeros(len(train_labels), 3, 2, 2))
        rows.dataset = {"label": train_labels}
        return prepare_bank_and_prompts(
            SimpleNamespace(is_main_process=False), args, SimpleNamespace(seed=0, output_dir=str(tmp_path)),
            SimpleNamespace(get_class_text_features=lambda: torch.eye(3)), rows, None, None, names,
            "a photo of a {}.", None,
        )

    loaded, _ = prepare([0, 0, 1, 1, 2, 2])
    assert torch.equal(loaded.labels, labels)
    with pytest.raises(ValueError, match=r"training sample 1 is a 'dog' here but a 'cat' in the bank \(4 of 6"):
        prepare([0, 1, 0, 2, 1, 2])
    with pytest.raises(ValueError, match="holds 6 samples but the training set has 5"):
        prepare([0, 0, 1, 1, 2])
