#!/usr/bin/env python
"""Build a CAPT Confusion Bank from a base model over a training set, save it as a Parquet dataset, optionally push it.

    python dataset_scripts/build_confusion_bank.py --output_dir banks/fashion            # embedded default, zero-shot
    python dataset_scripts/build_confusion_bank.py --model outputs/coop/model --dataset oxford_pets \
        --data_dir $DATA --shots 16 --seed 1 --output_dir banks/pets-coop --push_to_hub org/capt-bank-pets

`--model` is a CLIP checkpoint (the bank is then built from zero-shot CLIP with `--template`) or a checkpoint of
this package (CoOp, CAPT: its own class prompts are used and must name the same classes). The training set is
chosen exactly as the trainer chooses it (same few-shot sampling and base/novel split for the same flags), so the
trainer can load the bank with `--bank_path`. The bank records a fingerprint of the training set's images and labels;
the trainer refuses it for a training set with another fingerprint (say another `--seed`'s few-shot draw).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch
from transformers import PretrainedConfig

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_scripts.bank import build_bank, top_confused_pairs  # noqa: E402
from dataset_scripts.confusion_bank import check_bank_output_dir, push_bank_to_hub, save_bank  # noqa: E402
from dataset_scripts.data_fingerprint import training_set_fingerprint  # noqa: E402
from dataset_scripts.data import (  # noqa: E402
    DataArguments, IndexedImageDataset, check_local_path, prepare_splits, resolve_template,
)
from dataset_scripts.paths import EMBEDDED_MODEL  # noqa: E402
from modeling_capt import (  # noqa: E402
    PromptCLIPForImageClassification, is_package_checkpoint, load_image_processor, load_pretrained,
)


logger = logging.getLogger("capt.bank")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="CLIP checkpoint or a checkpoint of this package")
    parser.add_argument("--template", default=None, help="Prompt template (zero-shot base model only)")
    parser.add_argument("--dataset_name", default=None, help="datasets Hub id or local Parquet/ImageFolder folder")
    parser.add_argument("--dataset", default=None, help="CoOp benchmark name, read from --data_dir")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--train_dir", default=None)
    parser.add_argument("--test_dir", default=None)
    parser.add_argument("--image_column", default="image", help="Column holding the images (as the trainer's)")
    parser.add_argument("--label_column", default="label", help="ClassLabel column holding the labels")
    parser.add_argument("--shots", type=int, default=16, help="Training images per class (0: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--subsample_classes", default="base", choices=["base", "all"])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="Where the base model runs (auto: the GPU when there is one)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--push_to_hub", default=None, metavar="ORG/NAME", help="Upload the bank as a Hub dataset")
    parser.add_argument("--private", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device (use --device cpu or auto)")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    data_args = DataArguments(
        dataset_name=args.dataset_name, dataset=args.dataset, data_dir=args.data_dir, train_dir=args.train_dir,
        test_dir=args.test_dir, shots=args.shots, subsample_classes=args.subsample_classes,
        image_column=args.image_column, label_column=args.label_column,
    )
    check_local_path("model", args.model)  # DataArguments checked the data flags
    check_bank_output_dir(args.output_dir)  # save_bank checks it too, but only after the work
    splits = prepare_splits(data_args, args.seed)
    class_names = splits["train_names"]
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")

    config, _ = PretrainedConfig.get_config_dict(args.model)  # a local folder or a Hub id (this package's or CLIP)
    if is_package_checkpoint(config):
        model = load_pretrained(args.model)
        if model.config.class_names != class_names:
            raise ValueError(f"{args.model} classifies {model.config.class_names}, not this training set's {class_names}")
        template, base_id = model.config.template, args.model
    else:
        template = args.template or resolve_template(argparse.Namespace(template=None), data_args)
        model = PromptCLIPForImageClassification.from_clip(args.model, class_names, template=template)
        base_id = f"zero-shot {args.model}"
    image_processor = load_image_processor(args.model, trust_remote_code=False)
    if getattr(model, "tokenizer", None) is None:  # fail early: the bank's semantic prompts need it
        raise ValueError(f"{args.model} has no tokenizer (tokenizer.json / vocab files) to load")
    model.to(device).eval()

    rows = IndexedImageDataset(splits["train"], "train")
    fingerprint = training_set_fingerprint(splits["train"])  # the trainer checks it when it loads the bank
    bank = build_bank(model, rows, image_processor, args.batch_size, class_names, template, base_id,
                      data_fingerprint=fingerprint)
    path = save_bank(bank, args.output_dir)
    print(f"confusion bank: {len(bank)} samples, {bank.num_misclassified} misclassified by {base_id}")
    for true, predicted, count in top_confused_pairs(bank.confusion_matrix.cpu(), class_names):
        print(f"  {true} -> {predicted}: {count}")
    print(f"saved to {path}")
    if args.push_to_hub:
        push_bank_to_hub(args.output_dir, args.push_to_hub, private=args.private or None)
    return bank


if __name__ == "__main__":
    main()
