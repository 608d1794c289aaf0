"""The training loop itself: which parameters the optimizer gets, the learning-rate schedule per optimizer step,
gradient accumulation, the running alpha, and which epoch's weights are saved."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from modeling_capt import CaptAdapterConfig, CaptForImageClassification
from trainers.loop import build_optimizer
from trainers.train_capt import main

from conftest import CLASS_NAMES, reset_accelerate, small_run_args


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


# --------------------------------------------------------------------------------------------------- the loop
@pytest.fixture
def loop_args(tmp_path, tiny_clip_dir):
    return small_run_args(tmp_path, tiny_clip_dir)  # 3 base classes x 4 shots: 12 training images


def trained_weights(folder) -> dict:
    return load_file(os.path.join(folder, "model.safetensors"))


def test_gradient_accumulation_trains_as_the_larger_batch(loop_args, tmp_path):
    """Batches of 2 accumulated twice are one optimizer step on a batch of 4: the loss is scaled once, the gradients
    are summed before the step, the scheduler steps per optimizer step, and the running alpha counts every sample
    once. CAPT without MGDE (whose router noise and dropout draw per forward) is deterministic."""
    flags = ["--method", "capt", "--no_use_mgde", "--save_every_epochs", "0"]
    main(loop_args + flags + ["--output_dir", str(tmp_path / "big"), "--per_device_train_batch_size", "4"])
    reset_accelerate()
    main(loop_args + flags + ["--output_dir", str(tmp_path / "accumulated"), "--per_device_train_batch_size", "2",
                              "--gradient_accumulation_steps", "2"])
    big, accumulated = trained_weights(tmp_path / "big" / "model"), trained_weights(tmp_path / "accumulated" / "model")
    assert big.keys() == accumulated.keys()
    adapter_weights = [name for name in big if "adapter" in name and name.endswith("weight")]
    assert adapter_weights
    assert max(big[name].abs().max().item() for name in adapter_weights if "out_proj" in name) > 1e-4  # it trained
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-4, atol=1e-7, msg=name)
    counts = [big[name] for name in big if name.endswith("alpha_count")]
    assert counts and all(int(count) == 2 * 12 for count in counts)  # 2 epochs x 12 samples, each counted once


def test_partial_accumulation_window_is_an_optimizer_step_and_the_last_epoch_is_kept(loop_args, tmp_path):
    """6 batches of 2 accumulated 4 at a time: each epoch ends on a partial window of 2, which is flushed as an
    optimizer step; the schedule counts it, so the learning rate reaches 0 right after the run's last step. The saved
    model is the last epoch's."""
    out = tmp_path / "out"
    main(loop_args + ["--method", "coop", "--output_dir", str(out), "--per_device_train_batch_size", "2",
                      "--gradient_accumulation_steps", "4", "--save_total_limit", "0"])
    for epoch in (1, 2):
        state = torch.load(out / "checkpoints" / f"epoch_{epoch}" / "scheduler.bin", weights_only=True)
        assert state["last_epoch"] == 2 * epoch  # ceil(6 / 4) = 2 optimizer steps per epoch
    assert state["_last_lr"] == [pytest.approx(0.0, abs=1e-12)]
    final = trained_weights(out / "model")
    last, first = (trained_weights(out / "checkpoints" / f"epoch_{e}") for e in (2, 1))
    context = [name for name in final if "prompt_context" in name]
    assert context
    for name in context:
        torch.testing.assert_close(final[name], last[name], rtol=0, atol=0)
        assert not torch.equal(final[name], first[name])
