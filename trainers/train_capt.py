#!/usr/bin/env python
"""Train and evaluate zero-shot CLIP, CoOp or CAPT with Accelerate.

    accelerate launch trainers/train_capt.py                      # the main job on the embedded default
    accelerate launch trainers/train_capt.py --config run.yaml --method coop --shots 4

With no argument it runs the whole CAPT pipeline on the embedded `capt-tiny-fashion` model and the shipped
Fashion-MNIST subset: zero-shot evaluation, 16-shot base-to-novel training, evaluation, `metrics.json`, the saved
checkpoint and a before/after confusion heatmap.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import sys
import time

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, CLIPConfig, CLIPModel

if __package__ in (None, ""):  # `accelerate launch trainers/train_capt.py` runs this file as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_scripts.atomic_io import replace_directory, write_directory_atomic, write_json_atomic  # noqa: E402
from dataset_scripts.confusion_bank import load_bank_for_training  # noqa: E402
from dataset_scripts.data import (  # noqa: E402
    IndexedImageDataset, RandomResizedCropFlip, classes_without_images, make_loader, prepare_splits,
    processor_crop_size, resolve_template,
)
from modeling_capt import CaptAdapterConfig, CaptConfig, CaptForImageClassification, load_image_processor  # noqa: E402
from trainers import capt_training  # noqa: E402
from trainers.args import layers_to_transform, parse_args, training_settings  # noqa: E402
from trainers.heatmap import save_confusion_heatmaps  # noqa: E402
from trainers.hub import push_folder_to_hub, write_model_card  # noqa: E402
from trainers.metrics import classification_metrics, harmonic_mean, top_confused_pairs  # noqa: E402
from trainers.prefix_cache import FrozenPrefixCache, rows_loader  # noqa: E402


logger = logging.getLogger("capt")


PROGRESS_FILE = "capt_progress.json"
# The trainer's own random generators (the training loader's shuffle, CAPT's random representative draws), one file
# per process: Accelerate's `save_state` restores the global RNGs but not these private generators.
GENERATORS_FILE = "capt_generators_{}.safetensors"


@torch.inference_mode()
def predict(model, loader, accelerator, desc: str) -> dict:
    """Predictions, labels, row indices and normalised image embeddings over a loader, gathered without duplicates.

    Runs under the run's mixed precision (`accelerator.autocast`), so the zero-shot model (never `prepare`d) and
    the trained one are evaluated in the same precision."""
    model = accelerator.unwrap_model(model)  # evaluation needs no DDP wrapper (and may change the class list)
    model.eval()
    outputs = {"preds": [], "labels": [], "indices": [], "probs": [], "embeds": []}
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
        with accelerator.autocast():
            out = model(pixel_values=batch["pixel_values"])
        gathered = accelerator.gather_for_metrics(
            (out.logits.argmax(-1), batch["labels"], batch["indices"], out.logits.float().softmax(-1), out.image_embeds.float())
        )
        for key, value in zip(outputs, gathered):
            outputs[key].append(value.cpu())
    return {key: torch.cat(values) for key, values in outputs.items()}


def evaluate_split(model, loader, accelerator, class_names, desc) -> tuple[dict, dict]:
    result = predict(model, loader, accelerator, desc)
    metrics = classification_metrics(result["labels"], result["preds"], class_names)
    return metrics, result


def compile_vision(model, backend: str = "inductor") -> None:
    """`torch.compile` each vision encoder layer and MGDE in place with `backend` (state-dict keys and saving are
    unchanged)."""
    for layer in model.clip.vision_model.encoder.layers:
        layer.compile(backend=backend)
    if model.mgde is not None:
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


def _epoch_folders(root) -> list[str]:
    """The `epoch_N` folders under `root`, oldest first (not the `.tmp` / `.old` folders of an interrupted save)."""
    if not os.path.isdir(root):
        return []
    names = [d for d in os.listdir(root) if re.fullmatch(r"epoch_\d+", d) and os.path.isdir(os.path.join(root, d))]
    return sorted(names, key=_epoch_number)


def _epoch_number(folder_name: str) -> int:
    """N of an `epoch_N` checkpoint folder."""
    return int(folder_name.split("_")[1])


def _prune_checkpoints(root, keep, newest: int | None = None):
    """Delete all but the newest `keep` finished epoch checkpoints under `root` (0 keeps all).

    `newest` is the epoch this run has just saved: a checkpoint of a later epoch is left over from an earlier run into
    the same output folder (a run of more epochs), so it counts as older than every checkpoint of this run. Without
    this, pruning deleted the checkpoint just written and kept the earlier run's, which `--resume_from_checkpoint
    latest` then resumed.
    """
    if keep <= 0 or not os.path.isdir(root):
        return
    done = _epoch_folders(root)
    if newest is not None:
        done = [d for d in done if _epoch_number(d) > newest] + [d for d in done if _epoch_number(d) <= newest]
    for old in done[:-keep]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)


def _save_generators(directory, generators: dict, process_index: int) -> None:
    from safetensors.torch import save_file

    states = {name: generator.get_state() for name, generator in generators.items() if generator is not None}
    save_file(states, os.path.join(directory, GENERATORS_FILE.format(process_index)))


def _load_generators(directory, generators: dict, process_index: int) -> None:
    from safetensors.torch import load_file

    path = os.path.join(directory, GENERATORS_FILE.format(process_index))
    if not os.path.isfile(path):
        logger.warning("%s holds no generator states (an older checkpoint): the resumed run's data order and "
                       "random draws differ from an uninterrupted run", directory)
        return
    states = load_file(path)
    for name, generator in generators.items():
        if generator is not None and name in states:
            generator.set_state(states[name])


def _atomic_save_state(accelerator, directory, epoch, generators=None, settings=None):
    """`save_state` into a temporary folder, then rename: a crash never leaves a half-written checkpoint.

    The finished epoch and the run's weight-deciding flags (`settings`, checked on resume) go to a JSON file beside
    Accelerate's files (not `register_for_checkpointing`, whose pickled custom states Accelerate reloads with
    `weights_only=False`). The confusion bank needs no checkpoint: it is saved as Parquet in
    `OUTPUT_DIR/confusion_bank` and rebuilt identically on resume.
    """
    tmp = directory + ".tmp"
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp, safe_serialization=True)
    if generators:
        _save_generators(tmp, generators, accelerator.process_index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(os.path.join(tmp, PROGRESS_FILE), {"epoch": epoch, "settings": settings})
        replace_directory(tmp, directory)  # the old epoch_N is set aside, not deleted in place
    accelerator.wait_for_everyone()


def _latest_checkpoint(output_dir):
    root = os.path.join(output_dir, "checkpoints")
    done = [d for d in _epoch_folders(root) if os.path.isfile(os.path.join(root, d, PROGRESS_FILE))]
    if not done:
        return None
    return os.path.join(root, done[-1])


def resolve_resume(train_args, settings: dict) -> str | None:
    """The checkpoint folder `--resume_from_checkpoint` names (`latest`: the newest finished one, or None), checked
    before any work: it must be a finished checkpoint of a run with the same weight-deciding flags."""
    resume = train_args.resume_from_checkpoint
    if not resume:
        return None
    if resume == "latest":
        resume = _latest_checkpoint(train_args.output_dir)
        if resume is None:
            logger.info("--resume_from_checkpoint latest: no finished checkpoint under %s, training from epoch 0",
                        os.path.join(train_args.output_dir, "checkpoints"))
            return None
    if not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume_from_checkpoint: no checkpoint folder at {resume}")
    progress_file = os.path.join(resume, PROGRESS_FILE)
    if not os.path.isfile(progress_file):
        raise FileNotFoundError(f"{resume} is not a finished checkpoint of this trainer (no {PROGRESS_FILE})")
    with open(progress_file, encoding="utf-8") as handle:
        progress = json.load(handle)
    saved = progress.get("settings")
    if int(progress.get("epoch", 0)) > train_args.num_train_epochs:
        raise ValueError(
            f"{resume} was saved after epoch {progress['epoch']}, past this run's --num_train_epochs "
            f"{train_args.num_train_epochs}: it cannot be resumed into this run (give --num_train_epochs "
            f"{progress['epoch']} or more, or train into a new --output_dir)"
        )
    if saved is None:
        logger.warning("%s does not record its run's flags (an older checkpoint): they are not checked", resume)
        return resume
    changed = {name: (saved.get(name), value) for name, value in settings.items() if saved.get(name) != value}
    if changed:
        listed = "; ".join(f"--{name}: checkpoint {old!r}, this run {new!r}" for name, (old, new) in changed.items())
        raise ValueError(
            f"{resume} was written by a run with other training flags ({listed}). Resume with the same flags, or "
            "train into a new --output_dir."
        )
    return resume


def evaluate_base_and_novel(model, loaders, splits, tokenizer, accelerator, name) -> dict:
    """Metrics and predictions of `model` on the test split of the training classes and, when the run has one, on
    the novel classes' test split (the class list is switched for it, then restored)."""
    train_names = splits["train_names"]
    result = {}
    result["base"], result["base_predictions"] = evaluate_split(
        model, loaders["test"], accelerator, train_names, f"{name} test")
    if "test_novel" in loaders:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.set_class_names(splits["novel_names"], tokenizer)
        result["novel"], result["novel_predictions"] = evaluate_split(
            model, loaders["test_novel"], accelerator, splits["novel_names"], f"{name} novel")
        unwrapped.set_class_names(train_names, tokenizer)
    return result


def summarize_results(result: dict, class_names) -> dict:
    """The `metrics.json` entry of one model: accuracy (base, novel, HM), per-class accuracy, confusion matrices."""
    base = result["base"]
    entry = {"accuracy": base["accuracy"]}
    if "novel" in result:
        novel = result["novel"]["accuracy"]
        entry.update(base_accuracy=base["accuracy"], novel_accuracy=novel, hm=harmonic_mean(base["accuracy"], novel))
    entry["top_confused_pairs"] = top_confused_pairs(base["confusion_matrix"], class_names)
    entry["per_class_accuracy"] = base["per_class_accuracy"]
    entry["confusion_matrix"] = base["confusion_matrix"]
    if "novel" in result:
        entry["novel_confusion_matrix"] = result["novel"]["confusion_matrix"]
    return entry


def train_model(model, bank, splits, train_rows, image_processor, accelerator, method, data_args, capt_args,
                train_args, settings=None, resume=None):
    """Train the trainable parts of `model` (CoOp context, or CAPT's adapters and MGDE) with Accelerate.

    One `prepare`, `accumulate` for gradient accumulation, atomic `save_state` checkpoints every
    `--save_every_epochs`, and resuming from `resume` (the checkpoint folder `resolve_resume` found), skipping its
    finished epochs. `settings` (the run's weight-deciding flags, `training_settings`) is recorded in each checkpoint.
    Returns the prepared model.
    """
    settings = settings or {}
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
    start_epoch = 0
    if train_args.report_to != "none":
        accelerator.init_trackers("capt", config={"method": method, "seed": train_args.seed, "shots": data_args.shots})
    step_fn = None
    if method == "capt":
        step_fn = capt_training.CaptStep(model, bank, capt_args, train_rows, image_processor, accelerator,
                                         seed=train_args.seed, prefix_cache=prefix_cache)
    generators = {"train_shuffle": shuffle_generator, "capt_step": step_fn.generator if step_fn is not None else None}
    if resume:
        accelerator.load_state(resume)
        _load_generators(resume, generators, accelerator.process_index)
        with open(os.path.join(resume, PROGRESS_FILE), encoding="utf-8") as handle:
            start_epoch = int(json.load(handle)["epoch"])
        logger.info("resumed from %s after epoch %d", resume, start_epoch)
    global_step = start_epoch * len(train_loader)
    for epoch in range(start_epoch, train_args.num_train_epochs):
        model.train()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{train_args.num_train_epochs}",
                   disable=not accelerator.is_local_main_process, leave=False)
        running = 0.0
        for batch in bar:
            with accelerator.accumulate(model):
                if step_fn is not None:
                    loss, logs = step_fn(batch)
                else:
                    if prefix_cache is not None:
                        images = prefix_cache.model_inputs(batch["indices"], batch["labels"].device)
                    else:
                        images = {"pixel_values": batch["pixel_values"]}
                    loss = model(**images, labels=batch["labels"]).loss
                    logs = {}
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            running += loss.item()
            global_step += 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if train_args.report_to != "none":
                accelerator.log({"train/loss": loss.item(), **logs}, step=global_step)
        done = epoch + 1
        accelerator.print(f"epoch {done}: mean loss {running / max(1, len(train_loader)):.4f}")
        if train_args.save_every_epochs and done % train_args.save_every_epochs == 0:
            checkpoint_root = os.path.join(train_args.output_dir, "checkpoints")
            _atomic_save_state(accelerator, os.path.join(checkpoint_root, f"epoch_{done}"), done, generators,
                               settings)
            if accelerator.is_main_process:
                _prune_checkpoints(checkpoint_root, train_args.save_total_limit, newest=done)
    return model


def adapter_config_of(capt_args, mgde_num_clusters: int) -> CaptAdapterConfig:
    """The CAPT adapter config the flags ask for (MGDE's cluster count is known once the semantic prompts are)."""
    return CaptAdapterConfig(
        layers_to_transform=layers_to_transform(capt_args),
        adapter_branches=capt_args.adapter_branches,
        alpha_scale=capt_args.alpha_scale,
        alpha_gamma=capt_args.alpha_gamma,
        use_mgde=capt_args.use_mgde,
        mgde_top_k=capt_args.mgde_top_k,
        mgde_num_clusters=mgde_num_clusters,
    )


def check_model_flags(model_args, capt_args) -> None:
    """Build the trained model's configuration from the flags before any data or model is loaded, so that a value it
    refuses (`--layers_to_transform` past the CLIP's layers, `--mgde_top_k 9`, `--n_ctx 0`, ...) fails before the
    zero-shot evaluation and the Confusion Bank rather than after them."""
    if model_args.method == "coop":
        CaptConfig(use_learnable_context=True, n_ctx=model_args.n_ctx, ctx_init=model_args.ctx_init)
    elif model_args.method == "capt":
        adapter = adapter_config_of(capt_args, capt_args.mgde_num_clusters)
        adapter.select_layers(CLIPConfig.from_pretrained(model_args.model_name_or_path).vision_config.num_hidden_layers)


def main(argv=None):
    model_args, data_args, capt_args, train_args = parse_args(argv)
    settings = training_settings(model_args, data_args, capt_args, train_args)
    accelerator = Accelerator(
        # the last layer's adapter skips its patch update (nothing reads those tokens), so its local branch may get no
        # gradient in a step: DDP must not wait for it
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        mixed_precision=train_args.mixed_precision,
        log_with=None if train_args.report_to == "none" else train_args.report_to,
        project_dir=train_args.output_dir,
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    if not accelerator.is_local_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    set_seed(train_args.seed)
    resume = resolve_resume(train_args, settings)  # a wrong checkpoint, or one of other flags, fails before any work
    check_model_flags(model_args, capt_args)
    os.makedirs(train_args.output_dir, exist_ok=True)
    started = time.time()

    # ---------------------------------------------------------------- data and the frozen zero-shot model
    splits = prepare_splits(data_args, train_args.seed)
    empty = classes_without_images(splits["train"])
    if empty:  # e.g. an ImageFolder test tree with a class folder the training tree lacks
        message = (f"The training split has no image of the class(es) {empty[:10]}, which are "
                   f"{'base' if data_args.subsample_classes == 'base' else 'training'} classes")
        if model_args.method == "capt":  # its Confusion Bank and representative samples need every class
            raise ValueError(f"{message}: CAPT needs training images of every class it trains on. Add images of "
                             "them, or remove them from the dataset.")
        logger.warning("%s: they are still classified, but nothing is trained on them", message)
    if len(splits["train_names"]) < 2 and model_args.method != "zeroshot":  # one class: the loss is always 0
        hint = " (a 2-class dataset has one base class: use --subsample_classes all)" if "novel_names" in splits else ""
        raise ValueError(f"--method {model_args.method} needs at least two training classes, got "
                         f"{splits['train_names']}{hint}")
    template = resolve_template(model_args, data_args)
    loaded_bank = None
    if model_args.method == "capt" and capt_args.bank_path:
        # a bank of other data (other labels, or other images: another --seed's few-shot draw) fails here, before
        # any model is loaded or evaluated
        loaded_bank = load_bank_for_training(capt_args.bank_path, splits["train"],
                                                           splits["train_names"], template)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    image_processor = load_image_processor(model_args.model_name_or_path)
    clip = CLIPModel.from_pretrained(model_args.model_name_or_path)
    train_names = splits["train_names"]
    logger.info(
        "data: %d training images (%d classes, %s shots), %d test images%s",
        len(splits["train"]), len(train_names), data_args.shots, len(splits["test"]),
        f", {len(splits['test_novel'])} novel test images" if "test_novel" in splits else "",
    )
    train_rows = IndexedImageDataset(splits["train"], "train")
    train_rows.verify()  # a corrupt training image fails here, before any training time is spent

    eval_bs = train_args.per_device_eval_batch_size
    loaders = {
        split: accelerator.prepare(make_loader(splits[split], image_processor, eval_bs, False, train_args.num_workers, split))
        for split in ("test", "test_novel")
        if split in splits
    }

    def build(**overrides):
        return CaptForImageClassification.from_clip(
            clip, train_names, template=template, tokenizer=tokenizer, image_processor=image_processor,
            base_model_name_or_path=model_args.model_name_or_path, **overrides,
        )

    zeroshot = build().to(accelerator.device)  # frozen: no optimizer, no DDP wrapper
    results = {"zeroshot": evaluate_base_and_novel(zeroshot, loaders, splits, tokenizer, accelerator, "zero-shot")}

    # ---------------------------------------------------------------- the trained model
    method = model_args.method
    bank = None
    model = zeroshot
    if method != "zeroshot":
        overrides = {}
        if method == "coop":
            overrides.update(use_learnable_context=True, n_ctx=model_args.n_ctx, ctx_init=model_args.ctx_init)
        if method == "capt":
            bank, semantic = capt_training.prepare_bank_and_prompts(
                accelerator, capt_args, train_args, zeroshot, train_rows, image_processor, tokenizer, train_names,
                template, model_args, bank=loaded_bank,
            )
            overrides["adapter_config"] = adapter_config_of(
                capt_args, semantic.num_clusters if capt_args.use_mgde else capt_args.mgde_num_clusters)
        model = build(**overrides)
        if method == "capt" and model.mgde is not None:
            model.init_semantic_experts(semantic.commonality_centres, semantic.difference_centres)
        model = train_model(model, bank, splits, train_rows, image_processor, accelerator, method, data_args,
                            capt_args, train_args, settings, resume)

    # ---------------------------------------------------------------- evaluation of the trained model
    results[method] = evaluate_base_and_novel(model, loaders, splits, tokenizer, accelerator, method)

    summary = {
        "dataset": data_args.dataset or data_args.dataset_name or data_args.train_dir or "embedded/fashion-subset",
        "model": model_args.model_name_or_path,
        "method": method,
        "seed": train_args.seed,
        "shots": data_args.shots,
        "subsample_classes": data_args.subsample_classes,
        "template": template,
        "num_train_images": len(splits["train"]),
        "num_processes": accelerator.num_processes,
    }
    for name in dict.fromkeys(["zeroshot", method]):
        summary[name] = summarize_results(results[name], train_names)
    if method == "capt":
        zs, tr = results["zeroshot"], results[method]
        summary[method].update(
            capt_training.correction_metrics(
                accelerator.unwrap_model(model), bank, train_rows, image_processor, accelerator,
                zs["base_predictions"], tr["base_predictions"], zs.get("novel_predictions"),
                tr.get("novel_predictions"), eval_bs,
            )
        )
    summary["wall_time_s"] = round(time.time() - started, 1)

    if accelerator.is_main_process:
        final_dir = os.path.join(train_args.output_dir, "model")
        unwrapped = accelerator.unwrap_model(model)

        def write_model(folder):
            unwrapped.save_pretrained(folder, is_main_process=True, save_function=accelerator.save)
            write_model_card(folder, summary, train_names, repo_id=train_args.hub_model_id)

        write_directory_atomic(final_dir, write_model)
        if method != "zeroshot":
            write_directory_atomic(os.path.join(train_args.output_dir, "adapter"), unwrapped.save_adapter)
        write_json_atomic(os.path.join(train_args.output_dir, "metrics.json"), summary)
        if train_args.heatmap:
            save_confusion_heatmaps(
                os.path.join(train_args.output_dir, "confusion_heatmap.png"),
                [summary["zeroshot"]["confusion_matrix"], summary[method]["confusion_matrix"]],
                train_names,
                ["zero-shot CLIP", method.upper() if method != "zeroshot" else "zero-shot"],
            )
        print_table(summary, method)
        if train_args.push_to_hub:
            push_folder_to_hub(final_dir, train_args.hub_model_id, private=train_args.hub_private or None)
    accelerator.wait_for_everyone()
    if train_args.report_to != "none":
        accelerator.end_training()
    return summary


def print_table(summary: dict, method: str) -> None:
    rows = [("zero-shot", summary["zeroshot"])]
    if method != "zeroshot":
        rows.append((method, summary[method]))
    novel = "novel_accuracy" in summary["zeroshot"]
    header = f"{'model':<10} {'base':>7} {'novel':>7} {'HM':>7}" if novel else f"{'model':<10} {'accuracy':>8}"
    print(f"\n{summary['dataset']} | {summary['shots']} shots | seed {summary['seed']}")
    print(header)
    for name, entry in rows:
        if novel:
            print(f"{name:<10} {entry['base_accuracy']:>7.2f} {entry['novel_accuracy']:>7.2f} {entry['hm']:>7.2f}")
        else:
            print(f"{name:<10} {entry['accuracy']:>8.2f}")
    if method == "capt":
        entry = summary["capt"]
        for key in ("correction_rate", "test_correction_rate", "test_break_rate"):
            value = entry.get(key)
            print(f"{key}: {'n/a' if value is None else f'{value:.2f}'}")
    for name, entry in rows:
        pairs = ", ".join(f"{p['true']}->{p['predicted']} ({p['count']})" for p in entry["top_confused_pairs"][:3])
        print(f"top confusions, {name}: {pairs}")


if __name__ == "__main__":
    main()
