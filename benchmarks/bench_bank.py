#!/usr/bin/env python
"""Confusion Bank costs: building it against plain inference, and retrieval time against bank size.

1. Building: `dataset_scripts.bank.build_bank` (the base model's forward, softmax, embeddings gathered to the CPU,
   the bank and its index) against plain zero-shot inference (forward + argmax) over the same preprocessed batches,
   alternating. `bank_build_ratio` is the bank's throughput over plain inference (1.0: building costs nothing extra).
2. Retrieval: `trainers.confusion.retrieve_representatives` (the Sample Confusion Miner's one matmul + scatter
   per step) for one training batch, on synthetic banks of 10^3 .. 10^6 samples with the model's embedding size.
   `retrieval_loglog_slope` is the least-squares slope of log(time) against log(bank size): 1 is linear. Each size
   also times both of its paths forced (dense: one `B x pool` score matrix; per-class: one matmul per requested
   class), so the printed crossover shows where `DENSE_RETRIEVAL_MAX_SCORES` belongs on this device.

    python benchmarks/bench_bank.py --quick
    python benchmarks/bench_bank.py --quick --model embedded
"""

from __future__ import annotations

import contextlib
import gc
import math

import torch
import torch.nn.functional as F

from benchmark_utils import (
    build_clip, class_names, clock_for, describe_run, image_processor_for, interleaved, median, paired_ratio,
    parse_args, print_table, synthetic_image_dataset, torch_dtype, zero_shot_model,
)
from trainers import confusion
from dataset_scripts.bank import CaptConfusionBank
from trainers.confusion import retrieve_representatives, select_confusion_classes
from dataset_scripts.bank import build_bank
from dataset_scripts.data import IndexedImageDataset


def add_arguments(parser):
    parser.add_argument("--num_images", type=int, default=None, help="Images the bank is built from.")
    parser.add_argument("--batch_size", type=int, default=None, help="Images per forward while building.")
    parser.add_argument("--num_classes", type=int, default=10, help="Classes of the built bank.")
    parser.add_argument("--sizes", default="1000,10000,100000,1000000", help="Bank sizes for retrieval.")
    parser.add_argument("--retrieval_classes", type=int, default=100, help="Classes of the retrieval banks.")
    parser.add_argument("--retrieval_batch", type=int, default=32, help="Training batch whose samples retrieve.")
    parser.add_argument("--k_pairs", type=int, default=5)
    parser.add_argument("--misclassified", type=float, default=0.3, help="Share of misclassified bank samples.")
    parser.add_argument("--repeats", type=int, default=None)


def synthetic_bank(num_samples, num_classes, embed_dim, misclassified, seed=0) -> CaptConfusionBank:
    """A bank of `num_samples` samples with balanced labels, random unit embeddings, and a `misclassified` share
    predicted as another class."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_samples) % num_classes  # every class has samples once num_samples >= num_classes
    wrong = torch.rand(num_samples, generator=generator) < misclassified
    shift = torch.randint(1, num_classes, (num_samples,), generator=generator)
    preds = torch.where(wrong, (labels + shift) % num_classes, labels)
    probs = torch.full((num_samples, num_classes), 0.1 / (num_classes - 1))
    probs[torch.arange(num_samples), preds] = 0.9
    embeds = F.normalize(torch.randn(num_samples, embed_dim, generator=generator), dim=-1)
    return CaptConfusionBank.from_tensors(torch.arange(num_samples), labels, probs, embeds,
                                          class_names(num_classes), normalize_embeds=False)


def bench_building(args, clip, tokenizer, clock):
    vit = args.model == "vit-b16"
    num_images = args.num_images or (16 if vit and args.quick else 128 if vit else 1024)
    batch_size = args.batch_size or (8 if vit else 256)
    repeats = args.repeats or (5 if args.quick else 10)
    names = class_names(args.num_classes)
    processor = image_processor_for(args.model, clip)
    per_class = max(1, num_images // len(names))
    data = synthetic_image_dataset(len(names), per_class, clip.config.vision_config.image_size, args.seed)
    rows = IndexedImageDataset(data, "train")
    model = zero_shot_model(clip, tokenizer, names).to(args.device).eval()
    batches = [
        {"pixel_values": rows.pixel_values(range(start, min(start + batch_size, len(rows))), processor),
         "labels": torch.tensor(data["label"][start : start + batch_size]),
         "indices": torch.arange(start, min(start + batch_size, len(rows)))}
        for start in range(0, len(rows), batch_size)
    ]
    dtype = torch_dtype(args.dtype)
    autocast = (torch.autocast(args.device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())

    def plain_inference():
        with torch.inference_mode(), autocast:
            for batch in batches:
                model(pixel_values=batch["pixel_values"].to(args.device)).logits.argmax(-1).cpu()

    def bank_building():
        with autocast:
            build_bank(model, rows, processor, batch_size, names, model.config.template, "zero-shot", loader=batches)

    with torch.inference_mode(), autocast:
        model.get_class_text_features()  # cached before timing, for both (in the precision they run in)
    times = interleaved({"inference": plain_inference, "bank": bank_building}, repeats, args.device, clock)
    return len(rows), batch_size, repeats, times


RETRIEVAL_PATHS = ("auto", "dense", "per_class")


@contextlib.contextmanager
def retrieval_path(path: str):
    """Force `retrieve_representatives` onto one path (`dense`, `per_class`), or leave its own choice (`auto`)."""
    saved = confusion.DENSE_RETRIEVAL_MAX_SCORES
    if path != "auto":
        confusion.DENSE_RETRIEVAL_MAX_SCORES = 1 << 62 if path == "dense" else -1
    try:
        yield
    finally:
        confusion.DENSE_RETRIEVAL_MAX_SCORES = saved


def bench_retrieval(args, embed_dim, clock):
    sizes = [int(float(size)) for size in args.sizes.split(",")]
    repeats = args.repeats or (5 if args.quick else 20)
    results = []
    for size in sizes:
        bank = synthetic_bank(size, args.retrieval_classes, embed_dim, args.misclassified, args.seed).to(args.device)
        generator = torch.Generator().manual_seed(args.seed)
        rows = torch.randint(size, (args.retrieval_batch,), generator=generator).to(args.device)
        classes = select_confusion_classes(bank.probs[rows], bank.confusion_matrix, bank.labels[rows], args.k_pairs)
        query = bank.embeds[rows]

        def retrieve(path, query=query, classes=classes, bank=bank):
            def run():
                with retrieval_path(path):
                    retrieve_representatives(query, classes, bank)
            return run

        times = interleaved({path: retrieve(path) for path in RETRIEVAL_PATHS}, repeats, args.device, clock)
        pool = int(bank.pool_sizes.sum())
        chosen = "dense" if confusion.uses_dense_retrieval(args.retrieval_batch, pool) else "per_class"
        results.append((size, pool, median(times["auto"]), median(times["dense"]), median(times["per_class"]), chosen))
        del bank, query, classes, retrieve
        gc.collect()
    xs = [math.log(row[0]) for row in results]
    ys = [math.log(row[2]) for row in results]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return results, repeats, slope


def crossover(retrieval, batch_size: int) -> str:
    """Where the per-class path starts to beat the dense one for good, in query x pool scores (the threshold's
    unit)."""
    wins = [(pool * batch_size, per_class < dense) for _, pool, _, dense, per_class, _ in retrieval]
    start = len(wins)  # the first size from which per-class is faster at every larger size
    while start > 0 and wins[start - 1][1]:
        start -= 1
    if start == len(wins):
        return f"dense was faster at the largest size ({wins[-1][0]} scores)"
    if start == 0:
        return f"per-class was faster at every size (from {wins[0][0]} scores)"
    return f"measured crossover: dense faster at {wins[start - 1][0]} scores, per-class from {wins[start][0]} on"


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv, add_arguments)
    sizes = [int(float(size)) for size in args.sizes.split(",") if size.strip()]
    if len(set(sizes)) < 2 or min(sizes) < 1:
        raise SystemExit(f"--sizes needs two or more different positive bank sizes (a slope), got {args.sizes!r}")
    clock_name, clock = clock_for(args)
    clip, tokenizer, description = build_clip(args.model, args.num_classes, args.seed)
    num_images, batch_size, repeats, times = bench_building(args, clip, tokenizer, clock)
    retrieval, retrieval_repeats, slope = bench_retrieval(args, clip.config.projection_dim, clock)

    describe_run(args, clip, description)
    print(f"\n1. bank building vs plain inference: {num_images} images, batch {batch_size}, {args.num_classes} "
          f"classes, {repeats} interleaved rounds (median)")
    print_table(["pass", f"ms ({clock_name})", "images / s"],
                [[name, median(times[key]) * 1000, num_images / median(times[key])]
                 for name, key in (("plain inference", "inference"), ("bank building", "bank"))])
    print(f"\n2. retrieval for a batch of {args.retrieval_batch} samples x {args.k_pairs} classes, "
          f"{args.retrieval_classes} classes, embeddings of {clip.config.projection_dim}, "
          f"{args.misclassified:.0%} misclassified; median of {retrieval_repeats}")
    print_table(["bank size", "candidate pool", f"ms ({clock_name})", "ns / pool sample", "path", "dense ms",
                 "per-class ms"],
                [[size, pool, auto * 1000, auto / pool * 1e9, chosen, dense * 1000, per_class * 1000]
                 for size, pool, auto, dense, per_class, chosen in retrieval])
    print(f"the dense path runs up to {confusion.DENSE_RETRIEVAL_MAX_SCORES} query x pool scores "
          f"(trainers.confusion.DENSE_RETRIEVAL_MAX_SCORES); {crossover(retrieval, args.retrieval_batch)}")
    ratio = paired_ratio(times["inference"], times["bank"])
    print(f"bank_build_ratio={ratio:.3f}")
    print(f"retrieval_loglog_slope={slope:.3f}")
    return ratio, slope


if __name__ == "__main__":
    main()
