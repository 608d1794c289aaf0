"""The training loop itself: which parameters the optimizer gets, the learning-rate schedule per optimizer step,
gradient accumulation, the running alpha, and which epoch's weights are saved."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from modeling_capt import CaptAdapterConfig, CaptForImageClassification
from trainers.train_capt import build_optimizer

from conftest import CLASS_NAMES


def optimizer_args(**overrides):
    values = dict(optimizer="sgd", learning_rate=0.002, weight_decay=5e-4, num_train_epochs=3, warmup_epochs=1)
    values.update(overrides)
    return SimpleNamespace(**values)


def learning_rates(train_args, steps_per_epoch, num_processes=1):
    """The learning rate of every optimizer step, stepping the scheduler as Accelerate's `AcceleratedScheduler`
    does: `num_processes` scheduler steps per optimizer step, on a schedule built for `steps_per_epoch` optimizer
    steps per epoch (the trainer's call)."""
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = build_optimizer(model, train_args, steps_per_epoch, num_processes)
    rates = []
    for _ in range(train_args.num_train_epochs * steps_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        for _ in range(num_processes):
            scheduler.step()
    return rates, optimizer.param_groups[0]["lr"]


# --------------------------------------------------------------------------------------------------- the optimizer
@pytest.mark.parametrize("method", ["coop", "capt"])
def test_the_optimizer_gets_exactly_the_trainable_parameters(tiny_clip, tokenizer, method):
    overrides = {"use_learnable_context": True, "n_ctx": 4} if method == "coop" else {
        "adapter_config": CaptAdapterConfig(layers_to_transform=[1], mgde_num_clusters=2)}
    model = CaptForImageClassification.from_clip(tiny_clip, CLASS_NAMES[:3], tokenizer=tokenizer, **overrides)
    optimizer, _ = build_optimizer(model, optimizer_args(), 4)
    given = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert given == trainable and 0 < len(trainable) < len(list(model.parameters()))
    assert not any(id(p) in given for p in model.clip.parameters() if not p.requires_grad)
    assert isinstance(optimizer, torch.optim.SGD)
    assert [(g["lr"], g["momentum"], g["weight_decay"]) for g in optimizer.param_groups] == [(1e-5, 0.9, 5e-4)]
    adamw, _ = build_optimizer(model, optimizer_args(optimizer="adamw", weight_decay=0.01), 4)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.01


def test_schedule_warms_up_at_1e_5_then_cosine_reaches_0_after_the_last_step():
    rates, after = learning_rates(optimizer_args(), steps_per_epoch=5)  # 15 optimizer steps, the first 5 warm up
    assert rates[:5] == [pytest.approx(1e-5, rel=1e-9)] * 5
    cosine = [0.002 * 0.5 * (1 + math.cos(math.pi * i / 10)) for i in range(10)]
    assert rates[5:] == pytest.approx(cosine, rel=1e-9)  # the peak on the first step after warmup
    assert rates[-1] > 0 and after == pytest.approx(0.0, abs=1e-12)  # the last step still learns


def test_schedule_per_optimizer_step_does_not_depend_on_the_process_count():
    for warmup_epochs in (0, 1, 2, 3, 5):  # 3 and 5: a warmup as long as the run is cut to leave one step at the peak
        args = optimizer_args(warmup_epochs=warmup_epochs)
        single, single_after = learning_rates(args, 3)
        if warmup_epochs >= args.num_train_epochs:
            assert single == [pytest.approx(1e-5, rel=1e-9)] * 8 + [pytest.approx(0.002, rel=1e-9)]
        for processes in (2, 3):
            rates, after = learning_rates(args, 3, processes)
            assert rates == pytest.approx(single, rel=1e-12), (warmup_epochs, processes)
            assert after == pytest.approx(single_after, abs=1e-15)
