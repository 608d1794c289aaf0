#!/usr/bin/env python
"""Evaluate a saved CAPT, CoOp or zero-shot checkpoint on another dataset's test split (cross-dataset transfer).

    python trainers/evaluate_capt.py --checkpoint RUNS/cross_dataset/imagenet/seed1/model --dataset dtd --data_dir DATA
    python trainers/evaluate_capt.py --checkpoint openai/clip-vit-base-patch16 --dataset imagenet_a --data_dir DATA
    python trainers/evaluate_capt.py --checkpoint outputs/capt-tiny-fashion/model --dataset_name embedded/fashion-subset

The model classifies against the *target's* classes with the target's hand-crafted template (a CoOp model keeps its
learned context instead of the template); ImageNet-A and -R are read with their 200-class subset of ImageNet's
classes. `--checkpoint` may be a folder written by the trainer's `save_pretrained` (`model/`), an adapter export
(`adapter/`, rebuilt on its base CLIP), or a plain CLIP checkpoint (Hub id or path) for zero-shot CLIP.
Evaluation runs through Accelerate, so `accelerate launch trainers/evaluate_capt.py ...` shards it over devices.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from accelerate import Accelerator
from transformers import AutoTokenizer, HfArgumentParser, PretrainedConfig

if __package__ in (None, ""):  # `python trainers/evaluate_capt.py` runs this file as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_scripts.coop_datasets import get_dataset_info, list_datasets, load_coop_dataset  # noqa: E402
from modeling_capt import (  # noqa: E402
    PromptCLIPForImageClassification, is_package_checkpoint, load_image_processor, load_pretrained,
)
from modeling_capt.configuration_capt import DEFAULT_TEMPLATE  # noqa: E402
from dataset_scripts.data import (  # noqa: E402
    check_dataset, check_local_path, load_local_dataset, make_loader, prompt_class_names, standard_columns,
)
from trainers.metrics import top_confused_pairs  # noqa: E402
from dataset_scripts.atomic_io import write_json_atomic  # noqa: E402
from trainers.evaluation import evaluate_split  # noqa: E402
from trainers.methods.lora import MERGED_LORA_KEY, is_lora_export, load_lora_adapter  # noqa: E402


logger = logging.getLogger(__name__)


@dataclass
class EvaluationArguments:
    checkpoint: str = field(
        metadata={"help": "Trainer output (`model/` or `adapter/` folder), or a plain CLIP (Hub id or path)."}
    )
    dataset: str | None = field(
        default=None, metadata={"help": "A CoOp benchmark name (e.g. dtd), read from --data_dir."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "Root of the CoOp dataset folders."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Or a `datasets` dataset: Hub id, or a local Parquet/ImageFolder folder."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config of --dataset_name."})
    split: str = field(default="test", metadata={"help": "Split to evaluate."})
    template: str | None = field(
        default=None, metadata={"help": "Prompt template with one {}; default: the target dataset's."}
    )
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column: str = field(default="label", metadata={"help": "ClassLabel column holding the labels."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap the split (for quick runs)."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch per process."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers."})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (through Accelerate)."})
    output_file: str | None = field(default=None, metadata={"help": "Write the full result (JSON) here."})


def checkpoint_kind(checkpoint: str) -> str:
    """`"capt"` (a `save_pretrained` folder), `"adapter"` (an adapter export) or `"clip"` (anything else)."""
    if os.path.isdir(checkpoint) and os.path.isfile(os.path.join(checkpoint, "adapter_config.json")) and not (
        os.path.isfile(os.path.join(checkpoint, "config.json"))
    ):
        return "adapter"
    config, _ = PretrainedConfig.get_config_dict(checkpoint)
    return "capt" if is_package_checkpoint(config) else "clip"


def load_checkpoint(checkpoint: str, class_names: list[str], template: str):
    """Load `checkpoint` (a CLIP, a saved model of this package, or an adapter export) as a classifier of
    `class_names` with `template`.

    Returns:
        `(model, tokenizer, image_processor)`, the model in eval mode.
    """
    kind = checkpoint_kind(checkpoint)
    if kind == "clip":
        model = PromptCLIPForImageClassification.from_clip(checkpoint, class_names, template=template)
        return model, model.tokenizer, model.image_processor
    if kind == "adapter":  # the class the export names; --method lora's peft export, merged onto its base CLIP
        model = (load_lora_adapter(checkpoint) if is_lora_export(checkpoint)
                 else PromptCLIPForImageClassification.from_adapter(checkpoint))
        source = model.config.base_model_name_or_path
    else:
        model = load_pretrained(checkpoint)  # the class that saved it, with the folder's tokenizer and processor
        source = model.config.base_model_name_or_path  # for what the folder lacks: the CLIP it was built from
        if (model.tokenizer is None or model.image_processor is None) and not source:
            raise ValueError(f"{checkpoint} holds no tokenizer or image processor and names no base model to take "
                             "them from (base_model_name_or_path)")
    # The base CLIP's tokenizer and image processor need no remote code.
    tokenizer = model.tokenizer or AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    image_processor = model.image_processor or load_image_processor(source, trust_remote_code=False)
    model.set_class_names(class_names, tokenizer, template=template)
    return model.eval(), tokenizer, image_processor


def method_of(model) -> str:
    """The trainer's `--method` that produced a model: `capt` (adapters), `lora` (merged LoRA weights), `coop`
    (learned context) or `zeroshot`."""
    if getattr(model.config, "adapter_config", None) is not None:
        return "capt"
    if getattr(model.config, MERGED_LORA_KEY, None):
        return "lora"
    return "coop" if model.config.use_learnable_context else "zeroshot"


def load_evaluation_split(
    dataset: str | None = None,
    data_dir: str | None = None,
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    split: str = "test",
    image_column: str = "image",
    label_column: str = "label",
    max_eval_samples: int | None = None,
):
    """One split of a CoOp benchmark (`dataset` + `data_dir`) or of a `datasets` source (`dataset_name`).

    Returns:
        `(split_dataset, class_names)`: a `datasets.Dataset` with `image` and `label` columns, and the label names.
    """
    if bool(dataset) == bool(dataset_name):
        raise ValueError("Give one target: --dataset (with --data_dir) or --dataset_name")
    if dataset:
        if not data_dir:
            raise ValueError("--dataset needs --data_dir (the root of the CoOp dataset folders)")
        # ImageNet-A / -R: the reader keeps their 200 wnid folders, labelled in ImageNet's class order.
        splits = load_coop_dataset(dataset, data_dir)
    elif os.path.exists(dataset_name):
        splits = load_local_dataset(dataset_name, config_name=dataset_config_name)
    else:
        import datasets

        splits = datasets.load_dataset(dataset_name, dataset_config_name)
    if split not in splits:
        raise ValueError(f"{dataset or dataset_name} has no {split!r} split (splits: {list(splits)})")
    data = splits[split]
    class_names = prompt_class_names(check_dataset(data, image_column, label_column, split))
    data = standard_columns(data, image_column, label_column)
    if max_eval_samples:  # the same subset the trainer's --max_eval_samples takes
        data = data.shuffle(seed=0).select(range(min(max_eval_samples, len(data))))
    return data, class_names


def evaluate_checkpoint(
    checkpoint: str,
    dataset: str | None = None,
    data_dir: str | None = None,
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    split: str = "test",
    template: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    max_eval_samples: int | None = None,
    per_device_eval_batch_size: int = 128,
    num_workers: int = 0,
    mixed_precision: str = "no",
) -> dict:
    """Accuracy of a saved checkpoint on a target dataset, with the target's class names and template.

    Args:
        checkpoint (`str`):
            A trainer `model/` folder, an `adapter/` export, or a plain CLIP checkpoint (zero-shot CLIP).
        dataset (`str`, *optional*):
            A CoOp benchmark name (`dtd`, `imagenet_a`, ...), read from `data_dir`.
        data_dir (`str`, *optional*):
            The root of the CoOp dataset folders (`$DATA`).
        dataset_name (`str`, *optional*):
            Instead of `dataset`: a `datasets` source (Hub id or local Parquet / ImageFolder folder).
        dataset_config_name (`str`, *optional*):
            Config of `dataset_name`.
        split (`str`, *optional*, defaults to `"test"`):
            The split to evaluate.
        template (`str`, *optional*):
            Prompt template with one `{}`. Defaults to the CoOp dataset's hand-crafted template (also for a Parquet
            benchmark whose `dataset_config_name` names one), else `"a photo of a {}."`. A CoOp model keeps its
            learned context and ignores it.
        image_column, label_column (`str`, *optional*):
            Column names of a `dataset_name` source.
        max_eval_samples (`int`, *optional*):
            Evaluate a fixed random subset of this size (seed 0, as the trainer).
        per_device_eval_batch_size (`int`, *optional*, defaults to 128), num_workers (`int`, *optional*),
        mixed_precision (`str`, *optional*, defaults to `"no"`):
            Loader and Accelerate settings.

    Returns:
        `dict` with `checkpoint`, `method`, `dataset`, `split`, `template`, `class_names`, `accuracy` (%),
        `num_samples`, `per_class_accuracy`, `top_confused_pairs` and `confusion_matrix`.
    """
    if template is None:  # as the trainer's: a CoOp benchmark's, or that of a Parquet benchmark's config
        if dataset:
            template = get_dataset_info(dataset).template
        elif dataset_config_name in list_datasets():
            template = get_dataset_info(dataset_config_name).template
        else:
            template = DEFAULT_TEMPLATE
    data, class_names = load_evaluation_split(
        dataset, data_dir, dataset_name=dataset_name, dataset_config_name=dataset_config_name, split=split,
        image_column=image_column, label_column=label_column, max_eval_samples=max_eval_samples,
    )
    accelerator = Accelerator(mixed_precision=mixed_precision)
    model, _, image_processor = load_checkpoint(checkpoint, class_names, template)
    if image_processor is None:
        raise ValueError(f"{checkpoint} has no image processor (preprocessor_config.json)")
    model.to(accelerator.device)
    target = dataset or dataset_name
    logger.info("evaluating %s on %s/%s: %d images, %d classes, template %r",
                checkpoint, target, split, len(data), len(class_names), template)
    loader = accelerator.prepare(
        make_loader(data, image_processor, per_device_eval_batch_size, False, num_workers, split)
    )
    with accelerator.autocast():
        metrics, _ = evaluate_split(model, loader, accelerator, class_names, f"{target} {split}")
    logger.info("%s on %s: accuracy %.2f", checkpoint, target, metrics["accuracy"])
    return {
        "checkpoint": checkpoint,
        "method": method_of(model),
        "dataset": target,
        "split": split,
        "template": template,
        "class_names": class_names,
        "accuracy": metrics["accuracy"],
        "num_samples": metrics["num_samples"],
        "per_class_accuracy": metrics["per_class_accuracy"],
        "top_confused_pairs": top_confused_pairs(metrics["confusion_matrix"], class_names),
        "confusion_matrix": metrics["confusion_matrix"],
    }


def main(argv=None) -> dict:
    (args,) = HfArgumentParser(EvaluationArguments).parse_args_into_dataclasses(args=argv)
    for flag in ("checkpoint", "dataset_name"):  # a mistyped local path is named, not looked up on the Hub
        check_local_path(flag, getattr(args, flag))
    check_local_path("data_dir", args.data_dir, always_local=True)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    options = {key: value for key, value in vars(args).items() if key not in ("checkpoint", "output_file")}
    result = evaluate_checkpoint(args.checkpoint, **options)
    if args.output_file:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_file)), exist_ok=True)
        write_json_atomic(args.output_file, result)
    print(f"{result['dataset']} ({result['split']}, {result['num_samples']} images, {len(result['class_names'])} "
          f"classes): accuracy {result['accuracy']:.2f}")
    return result


if __name__ == "__main__":
    main()
