"""The training loop every method shares: one Accelerate `prepare`, `accumulate`, checkpoints and resuming.

The method (`trainers/methods/`) gives each step's loss; the loop owns the optimizer, the learning-rate schedule
(CoOp's: a constant warmup at 1e-5, then cosine), the frozen-prefix cache, the data order and the checkpoints.
"""

from __future__ import annotations

import logging
import math
import os

import torch
from tqdm.auto import tqdm

from dataset_scripts.data import RandomResizedCropFlip, make_loader, processor_crop_size
from trainers.checkpointing import load_checkpoint, prune_checkpoints, save_checkpoint
from trainers.prefix_cache import FrozenPrefixCache, rows_loader


logger = logging.getLogger("capt")


def compile_vision(model, backend: str = "inductor") -> None:
    """`torch.compile` each vision encoder layer and MGDE in place with `backend` (state-dict keys and saving are
    unchanged)."""
    for layer in model.clip.vision_model.encoder.layers:
        layer.compile(backend=backend)
    if getattr(model, "mgde", None) is not None:
        model.mgde.compile(backend=backend)


def build_optimizer(model, train_args, steps_per_epoch, scheduler_steps_per_update=1):
    """The optimizer over the trainable parameters and its learning-rate schedule, laid out in optimizer steps
    (`steps_per_epoch` of them per epoch). The scheduler is stepped `scheduler_steps_per_update` times per optimizer
    step: Accelerate's `AcceleratedScheduler` steps it once per process."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters")
    if train_args.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=train_args.learning_rate, momentum=0.9, weight_decay=train_args.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=train_args.learning_rate, weight_decay=train_args.weight_decay)
    total = max(1, train_args.num_train_epochs * steps_per_epoch)
    warmup = min(train_args.warmup_epochs * steps_per_epoch, total - 1)  # at least the last step at the peak

    def lr_lambda(step):  # CoOp: constant 1e-5 warmup, then cosine from the peak
        step = step // scheduler_steps_per_update  # the optimizer step
        if step < warmup:
            return 1e-5 / train_args.learning_rate
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def train_model(model, method, run, settings=None, resume=None):
    """Train the trainable parts of `model` with Accelerate, the loss of each step coming from `method`.

    One `prepare`, `accumulate` for gradient accumulation, atomic `save_state` checkpoints every
    `--save_every_epochs`, and resuming from `resume` (the checkpoint folder `resolve_resume` found), skipping its
    finished epochs. `settings` (the run's weight-deciding flags, `training_settings`) is recorded in each checkpoint.
    `run` is the trainer's `RunContext`. Returns the prepared model.
    """
    settings = settings or {}
    accelerator, train_args, splits = run.accelerator, run.train_args, run.splits
    image_processor = run.image_processor
    eval_bs = train_args.per_device_eval_batch_size
    model.train()
    prefix_cache = FrozenPrefixCache.build(
        model.to(accelerator.device), splits["train"], image_processor, mode=train_args.prefix_cache,
        cache_dir=train_args.prefix_cache_dir or os.path.join(train_args.output_dir, "prefix_cache"),
        batch_size=eval_bs, accelerator=accelerator, augment=train_args.augment,
    )
    if train_args.torch_compile:
        compile_vision(model, train_args.torch_compile_backend)
    if prefix_cache is not None:  # the same rows in the same order, without decoding the images
        train_loader = rows_loader(splits["train"], train_args.per_device_train_batch_size, True,
                                   seed=train_args.seed, num_workers=train_args.num_workers)
    else:
        augment = None
        if train_args.augment:
            augment = RandomResizedCropFlip(processor_crop_size(image_processor),
                                            scale=(train_args.augment_min_scale, 1.0))
            logger.info("training images augmented: %s", augment)
        train_loader = make_loader(
            splits["train"], image_processor, train_args.per_device_train_batch_size, True, train_args.num_workers,
            "train", seed=train_args.seed, augment=augment,
        )
    shuffle_generator = train_loader.generator  # the sampler's; `prepare` keeps the same object
    steps_per_epoch = math.ceil(len(train_loader) / (accelerator.num_processes * train_args.gradient_accumulation_steps))
    # The prepared scheduler steps `num_processes` times per optimizer step (Accelerate's AcceleratedScheduler): the
    # schedule counts optimizer steps, so the learning rate per optimizer step is the same whatever the process count.
    optimizer, scheduler = build_optimizer(model, train_args, steps_per_epoch, accelerator.num_processes)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    start_epoch = 0  # the trackers were started by the trainer with the run's hyperparameters
    method.begin_training(model, run, prefix_cache)
    generators = {"train_shuffle": shuffle_generator, **method.generators()}
    if resume:
        start_epoch = load_checkpoint(accelerator, resume, generators)
        logger.info("resumed from %s after epoch %d", resume, start_epoch)
    global_step = start_epoch * len(train_loader)
    for epoch in range(start_epoch, train_args.num_train_epochs):
        model.train()
        method.begin_epoch(epoch)
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{train_args.num_train_epochs}",
                   disable=not accelerator.is_local_main_process, leave=False)
        running = 0.0
        for batch in bar:
            learning_rate = optimizer.param_groups[0]["lr"]  # this step's: scheduler.step() sets the next one
            with accelerator.accumulate(model):
                loss, logs = method.training_step(batch)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            running += loss.item()
            global_step += 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if train_args.report_to != "none":
                accelerator.log({"train/loss": loss.item(), "train/learning_rate": learning_rate, **logs},
                                step=global_step)
        done = epoch + 1
        accelerator.print(f"epoch {done}: mean loss {running / max(1, len(train_loader)):.4f}")
        if train_args.save_every_epochs and done % train_args.save_every_epochs == 0:
            checkpoint_root = os.path.join(train_args.output_dir, "checkpoints")
            save_checkpoint(accelerator, os.path.join(checkpoint_root, f"epoch_{done}"), done, generators,
                               settings)
            if accelerator.is_main_process:
                prune_checkpoints(checkpoint_root, train_args.save_total_limit, newest=done)
    return model
