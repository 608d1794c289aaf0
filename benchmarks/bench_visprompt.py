#!/usr/bin/env python
"""VisPrompt training step time against CoOp's, and the peak memory of a 1000-class VisPrompt step.

VisPrompt reads every image's own class prompts through the text encoder: `B x K` sequences per step, where CoOp
reads `K` (once per step, shared by the batch). Both steps here are real: forward, loss, backward and an SGD step,
on the same batch, alternating, with the same 16-token context; the frozen image side comes from the frozen-prefix
cache in both (the whole vision tower's output, every token for VisPrompt — `keep_all_tokens`, the CLS token for
CoOp), as in training, so the ratio is the text side's cost.

The memory line measures one VisPrompt step (batch `--memory_batch_size`, `--memory_classes` classes) with the
class chunks recomputed in the backward pass (`checkpoint_text_chunks`, the default) and without: GPU
`torch.cuda.max_memory_allocated`, CPU the resident high-water growth over the step plus the model's bytes (as
`bench_memory.py` measures it), each variant in a fresh process whose glibc returns every freed block of 64 KiB or
more to the system (`MALLOC_MMAP_THRESHOLD_`): otherwise the high-water mark counts the heap that many chunks leave
fragmented, not live memory (ViT-B/16 shape, 128 classes: 10.0 GB in-process against 2.4 GB).

    python benchmarks/bench_visprompt.py --quick          # under a minute on 2 CPU cores: smaller shapes, see below
    python benchmarks/bench_visprompt.py                  # ViT-B/16 shape, batch 16, 10 classes; 1000-class memory

`--quick` times batch 2 x 5 classes on the ViT-B/16 shape, and measures the 1000-class memory at batch 4 on the
embedded model's shape (the full run: ViT-B/16 shape, batch 16). The last lines are `visprompt_step_ratio=<VisPrompt / CoOp step
time>` and `visprompt_peak_memory_gb=<1000-class step, checkpointed chunks>`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from benchmark_utils import (
    accelerator_for, build_clip, child_result, class_names, clock_for, describe_run, interleaved, median, paired_ratios,
    parse_args, print_ratio_spread, print_table, random_pixels,
)
from bench_memory import _reset_host_peak, _status_kib
from modeling_capt import PromptCLIPForImageClassification, VisPromptForImageClassification, VisPromptGuidanceConfig


N_CTX = 16


def text_length(tokenizer, names) -> int:
    """Start, context, the longest class name's tokens, ".", end: no prompt is cut (a word-level tokenizer gives one
    token per name, the embedded BPE several)."""
    return N_CTX + max(len(tokenizer(f"{name}.").input_ids) for name in names)


def add_arguments(parser):
    parser.add_argument("--batch_size", type=int, default=None, help="Training batch (16; --quick: 2).")
    parser.add_argument("--num_classes", type=int, default=None, help="Classes timed (10; --quick: 5).")
    parser.add_argument("--repeats", type=int, default=None, help="Timed rounds (5; --quick: 2).")
    parser.add_argument("--memory_classes", type=int, default=1000)
    parser.add_argument("--memory_batch_size", type=int, default=None, help="Batch of the memory step (16; --quick: 4).")
    parser.add_argument("--memory_model", choices=("vit-b16", "embedded"), default=None,
                        help="Shape of the memory measurement (--model; --quick: embedded).")
    parser.add_argument("--memory_default_only", action="store_true",
                        help="Measure only the default (recomputed chunks): keeping every chunk for backward needs "
                             "tens of GB on the ViT-B/16 shape at 1000 classes, more than a 24 GB host has.")
    parser.add_argument("--memory_child", choices=("recompute", "kept"), default=None, help=argparse.SUPPRESS)


def build(model_class, clip, tokenizer, names, device, **overrides):
    model = model_class.from_clip(clip, names, tokenizer=tokenizer, n_ctx=N_CTX, ctx_init=None,
                                  max_text_length=text_length(tokenizer, names), **overrides)
    return model.to(device).train()


def cached_image_side(model, pixels):
    """What the frozen-prefix cache holds for these images: the last vision layer's output (every token when the
    model reads them all, else the CLS token), entering the model as `hidden_states` at the last layer."""
    with torch.no_grad():
        hidden = model.encode_image_hidden(pixels)
    if model.reads_only_cls_token:
        hidden = hidden[:, :1]
    return {"hidden_states": hidden, "start_layer": len(model.clip.vision_model.encoder.layers)}


def training_step(model, inputs, labels):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def run():
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return run


def peak_memory(args, kind, recompute):
    """Bytes at the peak of one 1000-class VisPrompt step (model included), on the device or the host."""
    names = class_names(args.memory_classes)
    clip, tokenizer, _ = build_clip(kind, len(names), args.seed)
    guidance = VisPromptGuidanceConfig(checkpoint_text_chunks=recompute)
    model = build(VisPromptForImageClassification, clip, tokenizer, names, args.device, guidance_config=guidance)
    del clip
    pixels = random_pixels(model.clip, args.memory_batch_size, args.seed).to(args.device)
    inputs = cached_image_side(model, pixels)
    labels = torch.arange(args.memory_batch_size, device=args.device) % len(names)
    step = training_step(model, inputs, labels)
    model_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    if args.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    before = _reset_host_peak()
    step()
    return model_bytes + _status_kib("VmHWM") * 1024 - before


#: glibc gives every freed block of this size or more back to the system, so VmHWM follows live memory.
HOST_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def measure_memory(args, argv, memory_model, recompute) -> int:
    """Peak bytes of one step: on a GPU in this process, on the CPU in a fresh one (see the module docstring)."""
    if args.device.type == "cuda":
        return peak_memory(args, memory_model, recompute)
    command = [sys.executable, os.path.abspath(__file__), *argv, "--device", "cpu", "--memory_model", memory_model,
               "--memory_batch_size", str(args.memory_batch_size),
               "--memory_child", "recompute" if recompute else "kept"]
    return child_result(command, "memory", env=HOST_MALLOC_ENV)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(__doc__.splitlines()[0], argv, add_arguments)
    if args.memory_child:
        print("RESULT " + json.dumps(peak_memory(args, args.memory_model, args.memory_child == "recompute")), flush=True)
        return None
    batch_size = args.batch_size or (2 if args.quick else 16)
    num_classes = args.num_classes or (5 if args.quick else 10)
    repeats = args.repeats or (2 if args.quick else 5)
    memory_model = args.memory_model or ("embedded" if args.quick else args.model)
    args.memory_batch_size = args.memory_batch_size or (4 if args.quick else 16)
    clock_name, clock = clock_for(args)
    accelerator_for(args)  # the device checks of every benchmark
    names = class_names(num_classes)
    clip, tokenizer, description = build_clip(args.model, len(names), args.seed)
    models = {
        "visprompt": build(VisPromptForImageClassification, clip, tokenizer, names, args.device),
        "coop": build(PromptCLIPForImageClassification, clip, tokenizer, names, args.device,
                      use_learnable_context=True),
    }
    pixels = random_pixels(clip, batch_size, args.seed).to(args.device)
    labels = torch.arange(batch_size, device=args.device) % len(names)
    steps = {name: training_step(model, cached_image_side(model, pixels), labels) for name, model in models.items()}
    times = interleaved(steps, repeats, args.device, clock)

    describe_run(args, clip, description)
    print(f"batch {batch_size}, {num_classes} classes, {N_CTX} context tokens: VisPrompt runs {batch_size * num_classes}"
          f" text sequences per step, CoOp {num_classes}; image side from the frozen-prefix cache; {repeats} "
          "interleaved rounds (median)")
    print_table(["training step", f"ms ({clock_name})"],
                [[name, median(values) * 1000] for name, values in times.items()])
    ratios = paired_ratios(times["visprompt"], times["coop"])
    print_ratio_spread("VisPrompt / CoOp step time", ratios)

    if args.device.type == "cpu" and not os.path.exists("/proc/self/clear_refs"):
        raise SystemExit("Measuring CPU memory needs Linux /proc (clear_refs); run on Linux or on a GPU")
    gb = 1024**3
    variants = (True,) if args.memory_default_only else (True, False)
    memory = {recompute: measure_memory(args, argv, memory_model, recompute) for recompute in variants}
    print(f"peak memory of one {args.memory_classes}-class step at batch {args.memory_batch_size} "
          f"({args.memory_batch_size * args.memory_classes} text sequences), {memory_model} shape")
    labels = {True: "recomputed in backward (default)", False: "kept for backward"}
    print_table(["class chunks", "peak GB"], [[labels[recompute], memory[recompute] / gb] for recompute in variants])
    ratio = median(ratios)
    print(f"visprompt_step_ratio={ratio:.2f}")
    print(f"visprompt_peak_memory_gb={memory[True] / gb:.2f}")
    return ratio


if __name__ == "__main__":
    main()
