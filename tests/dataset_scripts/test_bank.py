"""dataset_scripts/bank.py: the Confusion Bank's structure, its derived index and state, and the confusion matrix."""

import io

import pytest
import torch

from dataset_scripts.bank import CaptConfusionBank, compute_confusion_matrix, top_confused_pairs
from trainers.confusion import retrieve_representatives, select_confusion_classes
from fixtures_bank import MATRIX, one_hot_probs, random_bank, small_bank


def test_bank_derived_index():
    bank = small_bank()
    assert bank.confusion_matrix.tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 0]]
    assert bank.num_misclassified == 3
    assert bank.misclassified_rows(0).tolist() == [0, 1]
    assert bank.misclassified_rows(1).tolist() == []
    assert bank.pool_rows(0).tolist() == [0, 1]
    assert bank.pool_rows(1).tolist() == [3, 4]  # fallback: the whole class
    assert bank.pool_rows(2).tolist() == [5]
    assert small_bank(fallback="none").pool_rows(1).tolist() == []


def test_build_from_batches_matches_from_tensors():
    reference = random_bank(num_samples=50)
    # The same data, shuffled and streamed as dicts and tuples.
    order = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    fields = [reference.indices[order], reference.labels[order], reference.probs[order], reference.embeds[order]]
    batches = []
    for start in range(0, 50, 16):
        chunk = [tensor[start : start + 16] for tensor in fields]
        batches.append(dict(zip(["indices", "labels", "probs", "embeds"], chunk)) if start % 32 else tuple(chunk))
    bank = CaptConfusionBank.build(iter(batches), reference.class_names, reference.template, reference.base_model)
    for name in ("indices", "labels", "probs", "preds", "embeds", "confusion_matrix"):
        torch.testing.assert_close(getattr(bank, name), getattr(reference, name))
    rows = bank.rows_for(torch.tensor([[reference.indices[7], reference.indices[3]]]))
    assert rows.tolist() == [[7, 3]]
    with pytest.raises(KeyError):
        bank.rows_for(torch.tensor([11]))


def test_bank_rejects_bad_inputs():
    labels, embeds = torch.tensor([0, 1]), torch.randn(2, 3)
    with pytest.raises(ValueError, match="logits"):
        CaptConfusionBank.from_tensors(torch.arange(2), labels, torch.randn(2, 2) * 5, embeds, ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        CaptConfusionBank.from_tensors(torch.tensor([1, 1]), labels, torch.eye(2), embeds, ["a", "b"])
    with pytest.raises(ValueError, match="class names"):
        CaptConfusionBank.from_tensors(torch.arange(2), labels, torch.eye(2), embeds, ["a", "b", "c"])


def test_bank_refuses_non_finite_probabilities_and_embeddings():
    """NaN passed every check and crashed later with an unrelated IndexError; all-NaN probabilities read as logits."""
    labels, probs = torch.tensor([0, 1]), torch.eye(2)
    nan_embeds = torch.randn(2, 3)
    nan_embeds[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"embeds holds non-finite values .* indices \[11\]"):
        CaptConfusionBank.from_tensors(torch.tensor([10, 11]), labels, probs, nan_embeds, ["a", "b"])
    with pytest.raises(ValueError, match=r"probs holds non-finite values \(NaN or inf\) in 2 of 2 rows"):
        CaptConfusionBank.from_tensors(torch.arange(2), labels, torch.full((2, 2), float("nan")), torch.randn(2, 3),
                                       ["a", "b"])


def test_check_compatible_names_the_first_mismatch():
    bank = small_bank()
    bank.check_compatible(["cat", "dog", "fox"], "a photo of a {}.")
    with pytest.raises(ValueError, match="class 1 is 'dog' in the bank but 'wolf' here"):
        bank.check_compatible(["cat", "wolf", "fox"])
    with pytest.raises(ValueError, match="3 classes, the class list 4"):
        bank.check_compatible(["cat", "dog", "fox", "owl"])
    with pytest.raises(ValueError, match="template"):
        bank.check_compatible(["cat", "dog", "fox"], "a drawing of a {}.")


def test_state_dict_round_trip():
    bank = random_bank()
    bank.semantic_prompts = [{"pair": [0, 1], "commonality": "both are round", "difference": "one is red"}]
    buffer = io.BytesIO()
    torch.save(bank.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # plain tensors and containers: no pickled objects

    restored = CaptConfusionBank()  # empty, as in `accelerator.register_for_checkpointing` then `load_state`
    restored.load_state_dict(state)
    for name in ("indices", "labels", "probs", "preds", "embeds", "confusion_matrix"):
        assert torch.equal(getattr(restored, name), getattr(bank, name))
    assert restored.class_names == bank.class_names
    assert (restored.template, restored.base_model) == (bank.template, bank.base_model)
    assert restored.semantic_prompts == bank.semantic_prompts
    assert torch.equal(restored.pool_rows(3), bank.pool_rows(3))

    other = CaptConfusionBank(["a", "b"])
    with pytest.raises(ValueError, match="class 0 is 'a' in the bank"):
        other.load_state_dict(state)


def test_bank_without_misclassified_samples_warns_and_falls_back():
    probs = one_hot_probs([0, 1, 1], 2)
    with pytest.warns(UserWarning, match="no misclassified sample"):
        bank = CaptConfusionBank.from_tensors(
            torch.arange(3), torch.tensor([0, 1, 1]), probs, torch.eye(3), ["a", "b"]
        )
    assert torch.equal(bank.confusion_matrix, torch.zeros(2, 2, dtype=torch.long))
    assert bank.pool_rows(1).tolist() == [1, 2]
    classes = select_confusion_classes(bank.probs, bank.confusion_matrix, bank.labels, k=1)
    assert classes.tolist() == [[1], [0], [0]]
    rows, _ = retrieve_representatives(bank.embeds[:1], classes[:1], bank)
    assert rows.tolist() == [[1]]


def test_confusion_matrix_and_top_pairs():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 0, 0, 1])
    assert compute_confusion_matrix(labels, preds, 3).tolist() == [[0, 1, 0], [0, 0, 0], [2, 1, 0]]
    with_diagonal = compute_confusion_matrix(labels, preds, 3, include_diagonal=True)
    assert with_diagonal.tolist() == [[1, 1, 0], [0, 1, 0], [2, 1, 0]]
    names = ["a", "b", "c", "d"]
    assert top_confused_pairs(MATRIX, names, k=5) == [
        ("d", "c", 5),
        ("c", "b", 4),
        ("a", "b", 2),
        ("c", "d", 2),
        ("a", "c", 1),
    ]
    assert top_confused_pairs(torch.eye(2, dtype=torch.long), ["a", "b"]) == []
