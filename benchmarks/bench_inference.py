#!/usr/bin/env python
"""Inference throughput of a CAPT classifier against plain CLIP zero-shot classification.

Both sides use the same backbone, batch, dtype and device, and cached class text features; both run under
`torch.inference_mode`. CLIP: `CLIPModel.get_image_features` -> normalise -> `logit_scale * cos` with the cached class
features -> argmax. CAPT: `CaptForImageClassification(pixel_values=...)` with Diff-Manner adapters in the last two
vision layers and MGDE (no bank at inference) -> argmax. The last line is `inference_ratio=<CAPT/CLIP throughput>`.

    python benchmarks/bench_inference.py --quick                     # ViT-B/16 shape
    python benchmarks/bench_inference.py --quick --model embedded
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torch.utils.flop_counter import FlopCounterMode

from benchmark_utils import (
    build_clip, capt_model, class_names, clock_for, describe_run, interleaved, median, paired_ratio, paired_ratios,
    parse_args, print_ratio_spread, print_table, random_pixels, torch_dtype,
)


def add_arguments(parser):
    parser.add_argument("--batch_size", type=int, default=None, help="Images per forward (default by model).")
    parser.add_argument("--repeats", type=int, default=None, help="Timed rounds (default by --quick).")
    parser.add_argument("--num_classes", type=int, default=100)


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv, add_arguments)
    vit = args.model == "vit-b16"
    batch_size = args.batch_size or (8 if vit and args.device.type == "cpu" else 64 if vit else 256)
    repeats = args.repeats or (10 if args.quick else 30)
    dtype = torch_dtype(args.dtype)

    names = class_names(args.num_classes)
    clip, tokenizer, description = build_clip(args.model, len(names), args.seed)
    capt = capt_model(clip, tokenizer, names).to(args.device, dtype).eval()
    clip = clip.to(args.device, dtype).eval()
    pixel_values = random_pixels(clip, batch_size, args.seed).to(args.device, dtype)
    with torch.inference_mode():
        text = capt.get_class_text_features().to(dtype)  # the same cached class features for both
        logit_scale = clip.logit_scale.exp()

        def plain_clip():
            image = F.normalize(clip.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
            return (logit_scale * image @ text.t()).argmax(-1)

        def capt_forward():
            return capt(pixel_values=pixel_values).logits.argmax(-1)

        times = interleaved({"clip": plain_clip, "capt": capt_forward}, repeats, args.device, clock_for(args)[1])
        flops = {}
        for name, function in (("clip", plain_clip), ("capt", capt_forward)):
            with FlopCounterMode(display=False) as counter:
                function()
            flops[name] = counter.get_total_flops()

    describe_run(args, clip, description)
    print(f"batch {batch_size}, {args.num_classes} classes, {repeats} interleaved rounds (median)")
    rows = []
    for name, label in (("clip", "CLIP zero-shot"), ("capt", "CAPT (adapters in last 2 layers + MGDE)")):
        seconds = median(times[name])
        rows.append([label, seconds * 1000, batch_size / seconds, flops[name] / batch_size / 1e9])
    print_table(["model", "ms / batch", "images / s", "GFLOP / image"], rows)
    print(f"FLOP ratio CLIP/CAPT (the bound on the measured ratio): {flops['clip'] / flops['capt']:.3f}")
    print_ratio_spread("CAPT / CLIP throughput per round", paired_ratios(times["clip"], times["capt"]))
    ratio = paired_ratio(times["clip"], times["capt"])  # CAPT throughput / CLIP throughput
    print(f"inference_ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
