#!/usr/bin/env python
"""Peak memory of one CAPT training step on a 1000-class label set at batch 32.

A real `trainers.methods.capt.CaptStep` (batch 32 plus 32 x 5 representatives = 192 images through the adapted
encoder, both losses), its backward and the first SGD step (which allocates the momentum buffers), with the
frozen-prefix cache (the trainer's default; `--quick` measures only this) and without it, each in a fresh process. Class text features for the 1000
classes are computed and cached before the measurement, as in training; the bank and the cached hidden states are
synthetic (their values do not change the memory).

How memory is measured:
- GPU: `torch.cuda.max_memory_allocated()` over the step: everything on the device (weights, cached text
  features, activations, gradients, optimizer state).
- CPU: there is no allocator statistic for CPU tensors, so the script reads the process's resident set: it returns
  freed heap to the OS (`malloc_trim`), resets the high-water mark (`/proc/self/clear_refs`), runs the step and reads
  `VmHWM`. Step memory = `VmHWM - VmRSS` before the step; the accelerator-equivalent figure adds the bytes of the
  model's parameters and buffers (what a GPU would hold besides the step). Host-side buffers (the frozen-prefix cache,
  the preprocessed images) are not counted: on a GPU they stay in host memory.
The last line is `peak_memory_gb=<accelerator-equivalent peak with the cache>`.

    python benchmarks/bench_memory.py --quick
    python benchmarks/bench_memory.py --quick --model embedded
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys

import torch

from benchmark_utils import (
    accelerator_for, build_clip, capt_model, child_result, class_names, describe_run, image_processor_for, parse_args,
    print_table,
)
from bench_bank import synthetic_bank
from trainers.methods.capt import CaptArguments
from trainers.methods.capt import CaptStep
from trainers.prefix_cache import FrozenPrefixCache, _MemoryStore, prefix_start_layer


GOAL_GB = 8.0


def add_arguments(parser):
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--k_pairs", type=int, default=5)
    parser.add_argument("--modes", default=None,
                        help="Steps to measure, comma list of cached, uncached (default: cached with --quick, else both).")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)


class SyntheticRows:
    """Stands in for the training rows: random preprocessed images (the uncached step's pixel source)."""

    def __init__(self, num_rows, image_size):
        self.num_rows, self.image_size = num_rows, image_size

    def __len__(self):
        return self.num_rows

    def pixel_values(self, indices, image_processor=None):
        indices = list(indices)
        generator = torch.Generator().manual_seed(len(indices))
        return torch.randn(len(indices), 3, self.image_size, self.image_size, generator=generator)


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_host_peak() -> int:
    """Give freed heap back to the OS, reset the resident high-water mark; return the resident bytes now."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")
    return _status_kib("VmRSS") * 1024


def measure(args, mode: str) -> dict:
    """One fresh process: build the model and step, then measure the peak over one training step (forward,
    backward and the optimizer step that allocates the optimizer state)."""
    names = class_names(args.num_classes)
    clip, tokenizer, _ = build_clip(args.model, len(names), args.seed)
    processor = image_processor_for(args.model, clip)
    accelerator = accelerator_for(args)
    model = capt_model(clip, tokenizer, names).to(accelerator.device).train()
    del clip
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    # the 1000 class features, cached after `prepare` (its device move clears the cache) and in the step's precision,
    # so the measured step reuses them (CAPT never runs the text encoder in a step)
    with torch.no_grad(), accelerator.autocast():
        unwrapped.get_class_text_features()

    num_rows = len(names)  # one training image per class
    bank = synthetic_bank(num_rows, len(names), unwrapped.config.clip_config.projection_dim, 0.3, args.seed)
    vision = unwrapped.config.clip_config.vision_config
    rows = SyntheticRows(num_rows, vision.image_size)
    cache = None
    if mode == "cached":
        start_layer = prefix_start_layer(unwrapped)
        tokens = (vision.image_size // vision.patch_size) ** 2 + 1
        hidden = torch.randn(num_rows, tokens, vision.hidden_size)
        cache = FrozenPrefixCache(_MemoryStore(hidden), start_layer, num_rows, "synthetic", "memory")
    step = CaptStep(model, bank, CaptArguments(k_pairs=args.k_pairs), rows, processor, accelerator, seed=args.seed,
                    prefix_cache=cache)
    indices = torch.arange(args.batch_size) % num_rows
    batch = {"labels": bank.labels[indices], "indices": indices}
    if cache is None:
        batch["pixel_values"] = rows.pixel_values(indices.tolist())
    batch = {key: value.to(accelerator.device) for key, value in batch.items()}
    model_bytes = sum(t.numel() * t.element_size() for t in list(unwrapped.parameters()) + list(unwrapped.buffers()))

    if args.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _reset_host_peak()
    loss, _ = step(batch)
    accelerator.backward(loss)
    optimizer.step()  # the first step also allocates the optimizer state
    optimizer.zero_grad()
    if args.device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        step_bytes, total = peak - before, peak
    else:
        step_bytes = _status_kib("VmHWM") * 1024 - before
        total = model_bytes + step_bytes
    return {"mode": mode, "model_bytes": model_bytes, "step_bytes": step_bytes, "total_bytes": total,
            "images": int(args.batch_size * (1 + step.k)), "start_layer": cache.start_layer if cache else 0}


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv, add_arguments)
    if args.child:
        print("RESULT " + json.dumps(measure(args, args.child)), flush=True)
        return None
    if args.device.type == "cpu" and not os.path.exists("/proc/self/clear_refs"):
        raise SystemExit("Measuring CPU memory needs Linux /proc (clear_refs); run on Linux or on a GPU")
    results = []
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    modes = args.modes or ("cached" if args.quick else "cached,uncached")
    for mode in modes.split(","):
        command = [sys.executable, os.path.abspath(__file__), *passthrough, "--device", args.device.type,
                   "--child", mode]
        results.append(child_result(command, mode))

    clip, _, description = build_clip(args.model, 2, args.seed)
    describe_run(args, clip, description)
    gb = 1024**3
    method = ("torch.cuda.max_memory_allocated" if args.device.type == "cuda" else
              "host RSS high-water growth over the step (VmHWM after clear_refs) + model parameters and buffers")
    print(f"{args.num_classes} classes, batch {args.batch_size} + {args.batch_size * args.k_pairs} representatives = "
          f"{results[0]['images']} images per step; measured as {method}")
    print_table(["training step", "model GB", "step GB", "peak GB", f"within {GOAL_GB:.0f} GB"],
                [[r["mode"], r["model_bytes"] / gb, r["step_bytes"] / gb, r["total_bytes"] / gb,
                  "yes" if r["total_bytes"] / gb <= GOAL_GB else "no"] for r in results])
    headline = next((r for r in results if r["mode"] == "cached"), results[0])
    print(f"peak_memory_gb={headline['total_bytes'] / gb:.2f}")
    return headline["total_bytes"] / gb


if __name__ == "__main__":
    main()
