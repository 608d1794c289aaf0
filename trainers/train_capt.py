#!/usr/bin/env python
"""Train and evaluate a prompt-learning method on a frozen CLIP with Accelerate (`--method`: zeroshot, coop, capt).

    accelerate launch trainers/train_capt.py                      # the main job on the embedded default
    accelerate launch trainers/train_capt.py --config run.yaml --method coop --shots 4
    python trainers/train_capt.py --method coop --help            # the flags of one method

With no argument it runs the whole CAPT pipeline on the embedded `capt-tiny-fashion` model and the shipped
Fashion-MNIST subset: zero-shot evaluation, 16-shot base-to-novel training, evaluation, `metrics.json`, the saved
checkpoint and a before/after confusion heatmap. Every method runs the same pipeline; what differs is in its module
under `trainers/methods/`.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import time

from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from transformers import AutoTokenizer, CLIPModel

if __package__ in (None, ""):  # `accelerate launch trainers/train_capt.py` runs this file as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_scripts.atomic_io import (  # noqa: E402
    recover_directories, replace_directories_together, write_json_atomic,
)
from dataset_scripts.data import (  # noqa: E402
    IndexedImageDataset, classes_without_images, make_loader, prepare_splits, resolve_template,
)
from modeling_capt import PromptCLIPForImageClassification, load_image_processor  # noqa: E402
from trainers.args import build_parser, method_of, parse_args, split_config_flag, training_settings  # noqa: E402
from trainers.checkpointing import resolve_resume  # noqa: E402
from trainers.evaluation import evaluate_base_and_novel, print_table, summarize_results  # noqa: E402
from trainers.heatmap import save_confusion_heatmaps  # noqa: E402
from trainers.hub import push_folder_to_hub, write_model_card  # noqa: E402
from trainers.loop import train_model  # noqa: E402
from trainers.methods import RunContext, get_method  # noqa: E402
from trainers.output_lock import output_dir_lock  # noqa: E402
from trainers.tracking import final_metrics, tracker_config  # noqa: E402
from trainers.write_space import write_space  # noqa: E402


logger = logging.getLogger("capt")

#: Where a run with label noise saves its noisy (and true) training labels (`--noisy_labels_file` reads it back).
NOISY_LABELS_FILE = "noisy_labels.json"
#: The model class of the frozen zero-shot CLIP every run evaluates first.
ZERO_SHOT_MODEL = PromptCLIPForImageClassification


def check_training_classes(splits, method, data_args) -> None:
    """Refuse (or warn about) training classes the method cannot train on, before any model is loaded."""
    empty = classes_without_images(splits["train"])
    if empty:  # e.g. an ImageFolder test tree with a class folder the training tree lacks
        message = (f"The training split has no image of the class(es) {empty[:10]}, which are "
                   f"{'base' if data_args.subsample_classes == 'base' else 'training'} classes")
        if method.needs_every_training_class:
            raise ValueError(f"{message}: {method.title} needs training images of every class it trains on. Add "
                             "images of them, or remove them from the dataset.")
        logger.warning("%s: they are still classified, but nothing is trained on them", message)
    if len(splits["train_names"]) < 2 and method.trains:  # one class: the loss is always 0
        hint = " (a 2-class dataset has one base class: use --subsample_classes all)" if "novel_names" in splits else ""
        raise ValueError(f"--method {method.name} needs at least two training classes, got "
                         f"{splits['train_names']}{hint}")


#: The folders of the final save, swapped in together (`replace_directories_together`).
FINAL_FOLDERS = ("model", "adapter")


def check_free_space(output_dir, model, folders, margin: int = 16 * 2**20) -> None:
    """Refuse the final save before writing anything when `output_dir`'s disk cannot hold it: the weights of each
    folder (the whole model for `model/`, the trainable parts for `adapter/`) and `margin` bytes of code, tokenizer
    and card. The old folders stay beside the new ones until the swap, so their space is not counted as free."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    needed = weights + (trainable if "adapter" in folders else 0) + margin
    free = shutil.disk_usage(output_dir).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"Not enough disk space in {output_dir} for the final save of {folders}: it needs "
                      f"about {needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free. metrics.json is saved; the "
                      "previous model and adapter folders are unchanged.")


def load_run(method, model_args, data_args, train_args, accelerator) -> RunContext:
    """Load what a run of `method` needs: the splits (checked for the method), the method's early loads, the frozen
    CLIP with its tokenizer and image processor, the verified training rows and the zero-shot model."""
    splits = prepare_splits(data_args, train_args.seed)
    check_training_classes(splits, method, data_args)
    run = RunContext(accelerator=accelerator, model_args=model_args, data_args=data_args, train_args=train_args,
                     splits=splits, template=resolve_template(model_args, data_args))
    method.before_evaluation(run)
    run.tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    run.image_processor = load_image_processor(model_args.model_name_or_path)
    run.clip = CLIPModel.from_pretrained(model_args.model_name_or_path)
    logger.info(
        "data: %d training images (%d classes, %s shots), %d test images%s",
        len(splits["train"]), len(run.train_names), data_args.shots, len(splits["test"]),
        f", {len(splits['test_novel'])} novel test images" if "test_novel" in splits else "",
    )
    run.train_rows = IndexedImageDataset(splits["train"], "train")
    run.train_rows.verify()  # a corrupt training image fails here, before any training time is spent
    run.zeroshot = run.build(ZERO_SHOT_MODEL).to(accelerator.device)  # frozen: no optimizer, no DDP wrapper
    return run


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:  # the flags of the --method given (CAPT's by default)
        build_parser(method_of(split_config_flag(argv)[1], {})).parse_args(["--help"])
    model_args, data_args, method_args, train_args = parse_args(argv)
    settings = training_settings(model_args, data_args, method_args, train_args)
    method = get_method(model_args.method)(method_args)
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
    method.check(model_args)  # a model option the model's config refuses fails before any data or model is loaded
    os.makedirs(train_args.output_dir, exist_ok=True)
    # one writer per output folder: a second run into it is refused (its main process holds the lock)
    with output_dir_lock(train_args.output_dir, enabled=accelerator.is_main_process):
        if accelerator.is_main_process:  # finish or undo a final save a crash interrupted; drop its staging folders
            recover_directories(train_args.output_dir, FINAL_FOLDERS)
        return run_and_save(method, model_args, data_args, train_args, settings, resume, accelerator)


def run_and_save(method, model_args, data_args, train_args, settings, resume, accelerator):
    """The run itself, once `main` has checked the flags and the checkpoint and holds the output folder's lock."""
    if train_args.report_to != "none":
        accelerator.init_trackers("capt", config=tracker_config(settings, output_dir=train_args.output_dir))
    started = time.time()

    # ---------------------------------------------------------------- data and the frozen zero-shot model
    run = load_run(method, model_args, data_args, train_args, accelerator)
    splits, train_names = run.splits, run.train_names
    if "label_noise" in splits and accelerator.is_main_process:  # the noisy labels travel with the run
        write_json_atomic(os.path.join(train_args.output_dir, NOISY_LABELS_FILE), splits["label_noise"])

    eval_bs = train_args.per_device_eval_batch_size
    loaders = {
        split: accelerator.prepare(
            make_loader(splits[split], run.image_processor, eval_bs, False, train_args.num_workers, split))
        for split in ("test", "test_novel")
        if split in splits
    }
    results = {"zeroshot": evaluate_base_and_novel(run.zeroshot, loaders, splits, run.tokenizer, accelerator,
                                                    "zero-shot")}

    # ---------------------------------------------------------------- the trained model
    method.prepare(run)
    model = method.build_model(run)
    if method.trains:
        model = train_model(model, method, run, settings, resume)

    # ---------------------------------------------------------------- evaluation of the trained model
    results[method.name] = evaluate_base_and_novel(model, loaders, splits, run.tokenizer, accelerator, method.name)

    summary = {
        "dataset": data_args.dataset or data_args.dataset_name or data_args.train_dir or "embedded/fashion-subset",
        "model": model_args.model_name_or_path,
        "method": method.name,
        "seed": train_args.seed,
        "shots": data_args.shots,
        "subsample_classes": data_args.subsample_classes,
        "template": run.template,
        "num_train_images": len(splits["train"]),
        **({"label_noise": {k: v for k, v in splits["label_noise"].items() if k not in ("labels", "true_labels")}}
           if "label_noise" in splits else {}),
        "num_processes": accelerator.num_processes,
    }
    for name in dict.fromkeys(["zeroshot", method.name]):
        summary[name] = summarize_results(results[name], train_names, splits.get("novel_names"))
    if method.trains:
        summary[method.name].update(method.extra_metrics(accelerator.unwrap_model(model), run, results))
    summary["wall_time_s"] = round(time.time() - started, 1)
    if train_args.report_to != "none":
        accelerator.log(final_metrics(summary))

    if accelerator.is_main_process:
        final_dir = os.path.join(train_args.output_dir, "model")
        unwrapped = accelerator.unwrap_model(model)

        def write_model(folder):
            unwrapped.save_pretrained(folder, is_main_process=True, save_function=accelerator.save)
            write_model_card(folder, summary, train_names, repo_id=train_args.hub_model_id,
                             space_id=train_args.hub_space_id)

        # the results first (small): a full disk at the model save must not lose a finished run's numbers
        write_json_atomic(os.path.join(train_args.output_dir, "metrics.json"), summary)
        folders = {"model": write_model, **({"adapter": unwrapped.save_adapter} if method.trains else {})}
        check_free_space(train_args.output_dir, unwrapped, list(folders))
        replace_directories_together(train_args.output_dir, folders)  # model/ and adapter/ swap in as one step
        if train_args.heatmap:
            trained = method.name.upper() if method.trains else "zero-shot"
            matrices, names = [summary["zeroshot"]["confusion_matrix"], summary[method.name]["confusion_matrix"]], None
            titles = ["zero-shot CLIP", trained]
            if "novel_confusion_matrix" in summary["zeroshot"]:  # the novel classes' panels beside the base ones
                matrices += [summary["zeroshot"]["novel_confusion_matrix"], summary[method.name]["novel_confusion_matrix"]]
                names = [train_names] * 2 + [splits["novel_names"]] * 2
                titles = [f"{title}, base classes" for title in titles] + [f"{title}, novel classes" for title in titles]
            save_confusion_heatmaps(os.path.join(train_args.output_dir, "confusion_heatmap.png"), matrices,
                                    names or train_names, titles)
        print_table(summary, method.name, method.printed_metrics)
        if train_args.push_to_hub:  # the model repository carries its own demo (Space files) and Endpoint handler
            write_space(final_dir)  # with the run's heatmap, found beside model/
            push_folder_to_hub(final_dir, train_args.hub_model_id, private=train_args.hub_private or None)
    accelerator.wait_for_everyone()
    if train_args.report_to != "none":
        accelerator.end_training()
    return summary


if __name__ == "__main__":
    main()
