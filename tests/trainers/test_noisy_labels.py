"""The OT purification and the robust losses (trainers/noisy_labels.py)."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from trainers.noisy_labels import clean_set_metrics, curriculum_keep, ot_assignments, ot_plan, per_sample_loss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ot_assignments_match_pot_on_random_costs(seed):
    generator = torch.Generator().manual_seed(seed)
    probs = torch.randn(60, 7, generator=generator).mul(3).softmax(-1)
    cost = -np.log(probs.double().numpy() + 1e-8)
    expected = ot.bregman.sinkhorn_log(np.full(60, 1 / 60), np.full(7, 1 / 7), cost, 0.01, numItermax=1000,
                                       stopThr=1e-6)
    plan = ot_plan(probs)
    assert plan.dtype == torch.float64
    np.testing.assert_allclose(plan.numpy(), expected, atol=1e-6)
    labels, confidence = ot_assignments(probs)
    assert (labels.numpy() == expected.argmax(1)).all()
    np.testing.assert_allclose(plan.sum(0).numpy(), 1 / 7, atol=1e-2)  # classes filled evenly (1000 iterations at
    # reg 0.01 need not converge fully: the spec's settings)


def test_ot_spreads_samples_over_classes_when_the_model_is_biased():
    probs = torch.tensor([[0.9, 0.1]] * 10)  # everything looks like class 0
    probs[5:] = torch.tensor([0.6, 0.4])
    labels, _ = ot_assignments(probs)
    assert labels.tolist() == [0] * 5 + [1] * 5


def test_ot_refuses_one_class():
    with pytest.raises(ValueError, match="two classes"):
        ot_plan(torch.ones(4, 1))


def test_losses_and_clean_metrics():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0])
    p = logits.softmax(-1)[:, 0]
    torch.testing.assert_close(per_sample_loss(logits, labels, "gce", 0.5), (1 - p.sqrt()) / 0.5)
    torch.testing.assert_close(per_sample_loss(logits, labels, "mae"), 2 * (1 - p))
    torch.testing.assert_close(per_sample_loss(logits, labels, "ce"), -p.log())
    metrics = clean_set_metrics(torch.tensor([True, True, False, False]), torch.tensor([0, 1, 1, 0]),
                                torch.tensor([0, 0, 1, 0]))
    assert metrics["clean_precision"] == 50.0 and metrics["clean_recall"] == pytest.approx(100 / 3)
    assert curriculum_keep(torch.tensor([0.1, 0.9, 0.5, 0.3]), 0.5).tolist() == [False, True, True, False]
