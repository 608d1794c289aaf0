#!/usr/bin/env python
"""CAPT training step time with the frozen-prefix cache against without it.

One real `trainers.methods.capt.CaptStep` (confusion mining, representative retrieval, the adapted forward of the
batch and its `k` representatives, both losses) plus backward and the optimizer step, on the same batch and model,
alternating: without the cache the step runs the whole vision tower on pixels; with it, the tower resumes from the
cached hidden states entering the first adapted layer. Images are JPEG photos (`--photo_size`, 500 x 375 by default,
CoOp's typical size). Without the cache the trainer's loader decodes and preprocesses the batch's images (the step
keeps the representatives' preprocessed pixels in memory when the few-shot set is small); with it, nothing is
decoded. Both are timed: `compute speed-up` gives the uncached step its
batch as ready pixel tensors (model compute alone), and the last line, `cache_speedup=<uncached / cached step time>`,
adds the batch's decoding and preprocessing, timed in the same rounds, as the trainer pays it.

    python benchmarks/bench_cache.py --quick                      # ViT-B/16 shape, adapters in layers 10 and 11
    python benchmarks/bench_cache.py --quick --model embedded
"""

from __future__ import annotations

import torch

from benchmark_utils import (
    accelerator_for, build_clip, capt_model, class_names, clock_for, describe_run, image_processor_for, interleaved,
    median, paired_ratios, parse_args, print_ratio_spread, print_table, synthetic_image_dataset, zero_shot_model,
)
from trainers.methods.capt import CaptArguments
from dataset_scripts.bank import build_bank
from trainers.methods.capt import CaptStep
from dataset_scripts.data import ImageClassificationCollator, IndexedImageDataset
from trainers.prefix_cache import FrozenPrefixCache


def add_arguments(parser):
    parser.add_argument("--batch_size", type=int, default=4, help="Training batch (the paper's 4).")
    parser.add_argument("--k_pairs", type=int, default=5, help="Confusion classes (representatives) per sample.")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--shots", type=int, default=2, help="Training images per class.")
    parser.add_argument("--layers", default="-2,-1", help="Adapted vision layers.")
    parser.add_argument("--repeats", type=int, default=None, help="Timed rounds (default by --quick).")
    parser.add_argument("--photo_size", default="500x375",
                        help="WIDTHxHEIGHT of the synthetic JPEG training images ('none': noise at the model's size).")


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv, add_arguments)
    repeats = args.repeats or ((3 if args.quick else 10) if args.model == "vit-b16" else (20 if args.quick else 50))
    clock_name, clock = clock_for(args)
    names = class_names(args.num_classes)
    clip, tokenizer, description = build_clip(args.model, len(names), args.seed)
    processor = image_processor_for(args.model, clip)
    photo_size = None if args.photo_size == "none" else tuple(int(v) for v in args.photo_size.lower().split("x"))
    data = synthetic_image_dataset(len(names), args.shots, clip.config.vision_config.image_size, args.seed,
                                   photo_size=photo_size)
    rows = IndexedImageDataset(data, "train")
    accelerator = accelerator_for(args)

    zeroshot = zero_shot_model(clip, tokenizer, names).to(accelerator.device)
    bank = build_bank(zeroshot, rows, processor, 32, names, zeroshot.config.template, "zero-shot")
    del zeroshot
    layers = [int(part) for part in args.layers.split(",")]
    model = capt_model(clip, tokenizer, names, layers=layers).to(accelerator.device).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    model, optimizer = accelerator.prepare(model, optimizer)

    start = clock()
    cache = FrozenPrefixCache.build(accelerator.unwrap_model(model), data, processor, mode="memory", batch_size=32,
                                    accelerator=accelerator)
    build_seconds = clock() - start
    capt_args = CaptArguments(k_pairs=min(args.k_pairs, len(names) - 1))
    steps = {
        "uncached": CaptStep(model, bank, capt_args, rows, processor, accelerator, seed=args.seed),
        "cached": CaptStep(model, bank, capt_args, rows, processor, accelerator, seed=args.seed, prefix_cache=cache),
    }
    indices = torch.randperm(len(rows), generator=torch.Generator().manual_seed(args.seed))[: args.batch_size]
    labels = torch.tensor([data[int(i)]["label"] for i in indices])
    batches = {
        "uncached": {"pixel_values": rows.pixel_values(indices.tolist(), processor), "labels": labels, "indices": indices},
        "cached": {"labels": labels, "indices": indices},
    }
    batches = {name: {k: v.to(accelerator.device) for k, v in batch.items()} for name, batch in batches.items()}

    def training_step(name):
        def run():
            with accelerator.accumulate(model):
                loss, _ = steps[name](batches[name])
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
        return run

    collator = ImageClassificationCollator(processor, "train")

    def decode():  # what the trainer's loader does per batch without the cache: read, decode, preprocess, move
        collator([rows[int(i)] for i in indices])["pixel_values"].to(accelerator.device)

    functions = {name: training_step(name) for name in steps}
    functions["decode"] = decode
    times = interleaved(functions, repeats, args.device, clock)

    describe_run(args, clip, description)
    images = args.batch_size * (1 + capt_args.k_pairs)
    print(f"batch {args.batch_size} + {args.batch_size * capt_args.k_pairs} representatives = {images} images per "
          f"step; adapted layers {accelerator.unwrap_model(model).adapted_layer_names}; "
          f"cache enters layer {cache.start_layer}; {repeats} interleaved rounds (median)")
    end_to_end = [u + d for u, d in zip(times["uncached"], times["decode"])]
    rows_out = [["uncached: decode + preprocess the batch", median(times["decode"]) * 1000],
                ["uncached: step", median(times["uncached"]) * 1000],
                ["uncached: total", median(end_to_end) * 1000],
                ["cached: step", median(times["cached"]) * 1000]]
    print_table(["training step", f"ms ({clock_name})"], rows_out)
    saved = median(end_to_end) - median(times["cached"])
    print(f"cache build: {build_seconds:.2f} s ({clock_name}) for {len(rows)} images, "
          f"repaid after {build_seconds / saved:.1f} steps" if saved > 0 else
          f"cache build: {build_seconds:.2f} s ({clock_name}) for {len(rows)} images")
    print_ratio_spread("compute speed-up (batch pixels ready)", paired_ratios(times["uncached"], times["cached"]))
    ratios = paired_ratios(end_to_end, times["cached"])
    print_ratio_spread("speed-up with the batch's decoding", ratios)
    speedup = median(ratios)
    print(f"cache_speedup={speedup:.2f}")
    return speedup


if __name__ == "__main__":
    main()
