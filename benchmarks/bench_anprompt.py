#!/usr/bin/env python
"""ANPrompt training step time without the frozen-prefix caches against with them (vision prefix per image, text
prefix per class).

ANPrompt prompts layers 6-12 of 12 in both towers, so layers 1-5 of each tower are frozen CLIP: with the caches the
vision tower resumes from the cached hidden states entering layer 6 and the class prompts from theirs. One step is the
method's loss (`CE(l_A) + lambda L_sim + gamma L_WA`, with the frozen CLIP features precomputed as the method keeps
them), backward and an AdamW step, on the same batch and model, the two variants interleaved. Prints
`anprompt_cache_speedup=<step time without / with the caches>` (median of paired rounds, batch pixels ready).

    python benchmarks/bench_anprompt.py --quick                   # ViT-B/16 shape, under a minute on 2 CPU cores
    python benchmarks/bench_anprompt.py --quick --model embedded
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark_utils import (
    accelerator_for, build_clip, class_names, clock_for, describe_run, image_processor_for, interleaved, median,
    paired_ratios, parse_args, print_ratio_spread, print_table, synthetic_image_dataset,
)
from dataset_scripts.data import IndexedImageDataset
from modeling_capt import AnpromptForImageClassification
from trainers.methods.anprompt import adaptive_gamma, similarity_loss, weak_alignment_loss
from trainers.prefix_cache import FrozenPrefixCache, TextPrefixCache


def add_arguments(parser):
    parser.add_argument("--batch_size", type=int, default=4, help="Training batch (the paper's 4).")
    parser.add_argument("--num_classes", type=int, default=10, help="Base classes (their prompts run every step).")
    parser.add_argument("--repeats", type=int, default=None, help="Timed rounds (default by --quick).")


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv, add_arguments)
    repeats = args.repeats or ((3 if args.quick else 10) if args.model == "vit-b16" else (20 if args.quick else 50))
    clock_name, clock = clock_for(args)
    names = class_names(args.num_classes)
    clip, tokenizer, description = build_clip(args.model, len(names), args.seed)
    processor = image_processor_for(args.model, clip)
    data = synthetic_image_dataset(len(names), 1, clip.config.vision_config.image_size, args.seed)
    rows = IndexedImageDataset(data, "train")
    accelerator = accelerator_for(args)
    model = AnpromptForImageClassification.from_clip(clip, names, tokenizer=tokenizer)
    model = model.to(accelerator.device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=5e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    vision_cache = FrozenPrefixCache.build(unwrapped, data, processor, mode="memory", batch_size=8,
                                           accelerator=accelerator)
    text_cache = TextPrefixCache.build(unwrapped, accelerator)
    indices = torch.arange(min(args.batch_size, len(rows)))
    pixels = rows.pixel_values(indices.tolist(), processor).to(accelerator.device)
    labels = torch.tensor([data[int(i)]["label"] for i in indices], device=accelerator.device)
    with torch.no_grad(), unwrapped.layer_hooks_disabled():
        clip_image = F.normalize(unwrapped.get_image_features(pixel_values=pixels), dim=-1)
        clip_text = unwrapped.get_class_text_features().detach().clone()
    inputs = {
        "uncached": {"pixel_values": pixels},
        "cached": {**vision_cache.model_inputs(indices, accelerator.device), **text_cache.model_inputs(unwrapped)},
    }

    def training_step(name):
        def run():
            out = model(**inputs[name])
            loss = F.cross_entropy(out.logits_align, labels)
            loss = loss + similarity_loss(out.image_embeds, clip_image, out.text_embeds, clip_text)
            loss = loss + adaptive_gamma(out.logits_weak_noise) * weak_alignment_loss(out.logits_align,
                                                                                      out.logits_nrvpp)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        return run

    times = interleaved({name: training_step(name) for name in inputs}, repeats, args.device, clock)
    describe_run(args, clip, description)
    print(f"batch {len(indices)}, {len(names)} classes; prompted layers vision {unwrapped.vision_prompt_layers}, "
          f"text {unwrapped.text_prompt_layers}; caches enter vision layer {vision_cache.start_layer}, text layer "
          f"{text_cache.start_layer}; {repeats} interleaved rounds (median)")
    print_table(["training step", f"ms ({clock_name})"],
                [[name, median(values) * 1000] for name, values in times.items()])
    ratios = paired_ratios(times["uncached"], times["cached"])
    print_ratio_spread("speed-up", ratios)
    speedup = median(ratios)
    print(f"anprompt_cache_speedup={speedup:.2f}")
    return speedup


if __name__ == "__main__":
    main()
