"""Learning with noisy labels (VisPrompt, NLPrompt): the optimal-transport purification, the robust losses and the
clean-set diagnostics. Plain functions on tensors; POT (`ot`) solves the transport, in float64 and log domain.

NLPrompt's "PromptOT": the model's class probabilities `p` over the `N` training samples give the cost
`-log(p + 1e-8)`; entropic OT with uniform marginals (`1/N` per sample, `1/K` per class) spreads the samples evenly
over the classes, and each sample's OT label is the class its row of the plan favours. A sample whose given label is
its OT label is clean.
"""

from __future__ import annotations

import numpy as np
import ot
import torch
import torch.nn.functional as F


def ot_plan(probs: torch.Tensor, reg: float = 0.01, max_iter: int = 1000, tol: float = 1e-6) -> torch.Tensor:
    """The entropic OT plan `(N, K)` (float64) for class probabilities `probs` `(N, K)`: cost `-log(p + 1e-8)`,
    uniform marginals, POT's log-domain Sinkhorn (`ot.bregman.sinkhorn_log`)."""
    if probs.dim() != 2 or probs.shape[1] < 2:
        raise ValueError(f"OT needs probabilities over at least two classes, got shape {tuple(probs.shape)}")
    cost = -np.log(probs.detach().double().cpu().numpy() + 1e-8)
    n, k = cost.shape
    a, b = np.full(n, 1.0 / n), np.full(k, 1.0 / k)
    plan = ot.bregman.sinkhorn_log(a, b, cost, reg, numItermax=max_iter, stopThr=tol)
    return torch.from_numpy(np.asarray(plan, dtype=np.float64))


def ot_assignments(probs: torch.Tensor, reg: float = 0.01, max_iter: int = 1000, tol: float = 1e-6):
    """Each sample's OT label `(N,)` and its confidence `max_k Q` `(N,)`."""
    plan = ot_plan(probs, reg, max_iter, tol)
    confidence, labels = plan.max(dim=1)
    return labels, confidence


def curriculum_keep(confidence: torch.Tensor, budget: float) -> torch.Tensor:
    """The rows kept by a curriculum of `budget` (share of rows, the most confident by `max_k Q`), as a bool mask."""
    count = max(1, int(round(min(1.0, budget) * confidence.numel())))
    keep = torch.zeros(confidence.numel(), dtype=torch.bool)
    keep[torch.argsort(confidence, descending=True, stable=True)[:count]] = True
    return keep


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str, q: float = 0.5) -> torch.Tensor:
    """`(B,)` losses: `ce`; `gce` (generalised cross-entropy, `(1 - p_y^q) / q`, Zhang & Sabuncu 2018); `mae`
    (`sum |onehot - p| = 2 (1 - p_y)`, Ghosh et al. 2017)."""
    if kind == "ce":
        return F.cross_entropy(logits, labels, reduction="none")
    p_y = logits.float().softmax(dim=-1).gather(1, labels[:, None]).squeeze(1)
    if kind == "gce":
        return (1 - p_y.clamp_min(1e-12) ** q) / q
    if kind == "mae":
        return 2 * (1 - p_y)
    raise ValueError(f"unknown loss {kind!r}: ce, gce or mae")


def clean_set_metrics(clean: torch.Tensor, given: torch.Tensor, true: torch.Tensor) -> dict:
    """Precision and recall (%) of a predicted clean set against the truly clean samples (given label == true)."""
    truly_clean = given == true
    hits = (clean & truly_clean).sum().item()
    return {
        "clean_precision": 100.0 * hits / max(1, clean.sum().item()),
        "clean_recall": 100.0 * hits / max(1, truly_clean.sum().item()),
        "clean_fraction": 100.0 * clean.float().mean().item(),
    }


__all__ = ["clean_set_metrics", "curriculum_keep", "ot_assignments", "ot_plan", "per_sample_loss"]
