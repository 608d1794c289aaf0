"""Small Confusion Banks for the tests of the bank (dataset_scripts/bank.py) and of what is mined from it
(trainers/confusion.py)."""

import torch

from dataset_scripts.bank import CaptConfusionBank
from trainers.confusion import select_confusion_classes


# M[a, b]: samples of true class a predicted b. Column 0 is empty, so a pseudo-GT of 0 has no statistics.
MATRIX = torch.tensor(
    [
        [0, 2, 1, 0],
        [0, 0, 0, 1],
        [0, 4, 0, 2],
        [0, 0, 5, 0],
    ]
)
PROBS = torch.tensor(
    [
        [0.10, 0.60, 0.20, 0.10],  # g = 1
        [0.25, 0.05, 0.30, 0.40],  # g = 3
        [0.70, 0.10, 0.15, 0.05],  # g = 0
    ]
)


def one_hot_probs(preds, num_classes):
    probs = torch.full((len(preds), num_classes), 0.2 / (num_classes - 1))
    probs[torch.arange(len(preds)), torch.as_tensor(preds)] = 0.8
    return probs


def small_bank(fallback="class"):
    """Six samples on three classes, with 2-d embeddings chosen for hand-checkable cosines.

    Class 0: rows 0, 1 misclassified (into 1 and 2), row 2 right. Class 1: rows 3, 4 right (no misclassified sample,
    so its pool falls back to the whole class). Class 2: row 5, misclassified into 0.
    """
    embeds = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([1, 2, 0, 1, 1, 0])
    return CaptConfusionBank.from_tensors(
        torch.arange(6), labels, one_hot_probs(preds, 3), embeds, ["cat", "dog", "fox"], fallback=fallback
    )


def random_bank(num_samples=200, num_classes=7, dim=16, seed=0, fallback="class"):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (num_samples,), generator=generator)
    logits = torch.randn(num_samples, num_classes, generator=generator) * 2
    logits[torch.arange(num_samples), labels] += 1.5
    embeds = torch.randn(num_samples, dim, generator=generator)
    indices = torch.randperm(num_samples, generator=generator) * 3 + 10
    names = [f"class {i}" for i in range(num_classes)]
    return CaptConfusionBank.from_tensors(
        indices, labels, logits.softmax(-1), embeds, names, template="a photo of a {}.", base_model="test",
        fallback=fallback,
    )


def random_queries(bank, batch_size, k, seed):
    """Random query embeddings and the confusion classes `select_confusion_classes` picks for them."""
    generator = torch.Generator().manual_seed(seed)
    num_classes, dim = bank.num_classes, bank.embeds.shape[1]
    query = torch.randn(batch_size, dim, generator=generator)
    labels = torch.randint(num_classes, (batch_size,), generator=generator)
    probs = torch.randn(batch_size, num_classes, generator=generator).softmax(-1)
    return query, select_confusion_classes(probs, bank.confusion_matrix, labels, k=k)
