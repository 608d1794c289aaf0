"""Shared pieces of the benchmark scripts: flags, the two model shapes, synthetic data and interleaved timing.

Every script compares two things measured side by side in one run (alternating, median of the repeats), so the
ratio it prints holds on a busy machine where absolute times do not. Random weights run exactly as fast as trained
ones, so no checkpoint is downloaded: `--model vit-b16` is a randomly initialised CLIP with the shape of
openai/clip-vit-base-patch16, `--model embedded` is the shipped `embedded/capt-tiny-fashion` (its random-weight twin
when the folder has not been built).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # `python benchmarks/bench_x.py` from anywhere
    sys.path.insert(0, REPO_ROOT)

from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast  # noqa: E402

from modeling_capt import CaptAdapterConfig, CaptForImageClassification, load_image_processor  # noqa: E402
from dataset_scripts.paths import EMBEDDED_MODEL  # noqa: E402


# openai/clip-vit-base-patch16 (text tower: 12 x 512, vision tower: 12 x 768 on 224 px, 16 px patches)
VIT_B16 = dict(
    text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu"),
    vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=16, hidden_act="quick_gelu"),
    projection_dim=512,
)
# The shape of embedded/capt-tiny-fashion, used only when that folder is missing.
EMBEDDED_SHAPE = dict(
    text_config=dict(vocab_size=616, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu"),
    vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                       image_size=28, patch_size=4, hidden_act="quick_gelu"),
    projection_dim=64,
)
TEXT_LENGTH = 16  # class prompts are short; the text features are computed once and cached in every benchmark
BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"


def parse_args(description: str, argv=None, add_arguments=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="A short run (minutes on 2 CPU cores).")
    parser.add_argument("--model", choices=("vit-b16", "embedded"), default="vit-b16", help="Model shape.")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when present.")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="Inference dtype, or the mixed-precision type of training steps.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                        help="auto: process CPU time on the CPU, wall time on a GPU.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def child_result(command: list[str], what: str, env: dict | None = None):
    """Run a measurement in a fresh process and return the JSON it prints on its `RESULT ` line; a failed child stops
    the benchmark with its output (exit -9 is the kernel's out-of-memory kill)."""
    output = subprocess.run(command, capture_output=True, text=True, check=False,
                            env=None if env is None else {**os.environ, **env})
    line = next((row for row in output.stdout.splitlines() if row.startswith("RESULT ")), None)
    if output.returncode != 0 or line is None:
        raise SystemExit(f"The {what} measurement failed (exit {output.returncode}):\n{output.stdout[-2000:]}\n"
                         f"{output.stderr[-4000:]}")
    return json.loads(line[len("RESULT "):])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(name)


def torch_dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ models
def class_names(num_classes: int) -> list[str]:
    return [f"class{i}" for i in range(num_classes)]


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over `words` (for random-weight models, which have no vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {BOS: 0, EOS: 1, UNK: 2}
    for word in ["a", "photo", "of", "."] + list(words):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                   pad_token=EOS)


def build_clip(kind: str, num_classes: int, seed: int = 0):
    """`(CLIPModel, tokenizer, description)` for `--model vit-b16|embedded`."""
    torch.manual_seed(seed)
    if kind == "embedded" and os.path.isfile(os.path.join(EMBEDDED_MODEL, "config.json")):
        from transformers import AutoTokenizer

        clip = CLIPModel.from_pretrained(EMBEDDED_MODEL)
        return clip.eval(), AutoTokenizer.from_pretrained(EMBEDDED_MODEL), "embedded capt-tiny-fashion"
    shape = VIT_B16 if kind == "vit-b16" else EMBEDDED_SHAPE
    tokenizer = word_tokenizer(class_names(num_classes))
    text = dict(shape["text_config"], bos_token_id=0, eos_token_id=1, pad_token_id=1)
    text["vocab_size"] = max(text["vocab_size"], len(tokenizer))
    config = CLIPConfig(text_config=text, vision_config=shape["vision_config"], projection_dim=shape["projection_dim"])
    description = "ViT-B/16-shaped CLIP (random weights)" if kind == "vit-b16" else (
        "capt-tiny-fashion-shaped CLIP (random weights: embedded/capt-tiny-fashion is not built)")
    return CLIPModel(config).eval(), tokenizer, description


def vision_description(clip: CLIPModel) -> str:
    vision = clip.config.vision_config
    return (f"{vision.num_hidden_layers} layers x {vision.hidden_size}, {vision.image_size} px / {vision.patch_size} px "
            f"patches")


def capt_model(clip, tokenizer, names, layers=(-2, -1), use_mgde=True, num_clusters=8, seed=0):
    """A CAPT classifier around `clip`: Diff-Manner adapters on `layers`, MGDE with random semantic centres."""
    adapter = CaptAdapterConfig(layers_to_transform=list(layers), use_mgde=use_mgde, mgde_num_clusters=num_clusters)
    model = CaptForImageClassification.from_clip(clip, names, tokenizer=tokenizer, adapter_config=adapter,
                                                 max_text_length=TEXT_LENGTH)
    if use_mgde:
        generator = torch.Generator().manual_seed(seed)
        centres = torch.nn.functional.normalize(
            torch.randn(2, num_clusters, clip.config.projection_dim, generator=generator), dim=-1)
        model.init_semantic_experts(centres[0], centres[1])
    return model


def zero_shot_model(clip, tokenizer, names):
    """CaptModel without adapters: zero-shot CLIP with cached class text features."""
    return CaptForImageClassification.from_clip(clip, names, tokenizer=tokenizer, max_text_length=TEXT_LENGTH)


def image_processor_for(kind: str, clip: CLIPModel):
    """The checkpoint's image processor, or a CLIP one at the model's resolution for random-weight models."""
    from transformers import CLIPImageProcessor

    if kind == "embedded" and os.path.isfile(os.path.join(EMBEDDED_MODEL, "preprocessor_config.json")):
        return load_image_processor(EMBEDDED_MODEL)
    size = clip.config.vision_config.image_size
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def synthetic_image_dataset(num_classes: int, per_class: int, image_size: int, seed: int = 0,
                            photo_size: tuple[int, int] | None = None):
    """A `datasets.Dataset` of random RGB images with a `ClassLabel` column, `per_class` rows per class.

    By default the images are uniform noise at `image_size` (PNG). With `photo_size=(width, height)` they are smooth
    random images of that size stored as JPEG (quality 90), so that decoding costs what it costs on a photo dataset
    (CoOp's images are typically about 500 x 375)."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    labels = [label for label in range(num_classes) for _ in range(per_class)]
    if photo_size is None:
        images = [Image.fromarray(rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)) for _ in labels]
    else:
        width, height = photo_size
        images = []
        for _ in labels:
            coarse = Image.fromarray(rng.integers(0, 255, (max(height // 16, 1), max(width // 16, 1), 3), dtype=np.uint8))
            buffer = io.BytesIO()
            coarse.resize((width, height), Image.BICUBIC).save(buffer, format="JPEG", quality=90)
            images.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names(num_classes))})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def accelerator_for(args):
    from accelerate import Accelerator

    mixed_precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[args.dtype]
    return Accelerator(cpu=args.device.type == "cpu", mixed_precision=mixed_precision)


def random_pixels(clip: CLIPModel, batch_size: int, seed: int = 0) -> torch.Tensor:
    size = clip.config.vision_config.image_size
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ timing
def clock_for(args):
    """The clock of `--clock`: on the CPU (`auto`) the process's CPU time, which other jobs on a shared machine
    disturb far less than wall time; on a GPU wall time (after synchronising)."""
    name = args.clock if args.clock != "auto" else ("cpu" if args.device.type == "cpu" else "wall")
    return name, (time.process_time if name == "cpu" else time.perf_counter)


def interleaved(functions: dict, repeats: int, device: torch.device, clock=time.perf_counter,
                warmup: int = 1) -> dict[str, list[float]]:
    """Run each function `warmup` times, then `repeats` rounds alternating their order; seconds per call.

    Round `i` of every function ran back to back, so `paired_ratio` compares them round by round."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    synchronize(device)
    times = {name: [] for name in functions}
    names = list(functions)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            synchronize(device)
            start = clock()
            functions[name]()
            synchronize(device)
            times[name].append(clock() - start)
    return times


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over the rounds of `numerator[i] / denominator[i]` (robust to load that drifts between rounds)."""
    return statistics.median(paired_ratios(numerator, denominator))


def median(values) -> float:
    return statistics.median(values)


def median_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: order statistics `(x_(k), x_(n+1-k))` with the largest
    `k` such that `P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2`; the whole range when `n` is too small for it."""
    ordered = sorted(values)
    n = len(ordered)
    tail = (1.0 - confidence) / 2
    k, cumulative = 0, 0.0
    while k < n // 2:
        cumulative += math.comb(n, k) / 2**n
        if cumulative > tail:
            break
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


def paired_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """`numerator[i] / denominator[i]` for each round."""
    return [a / b for a, b in zip(numerator, denominator)]


def print_ratio_spread(name: str, ratios: list[float]) -> None:
    """One line: the median of the per-round ratios, its 95 % distribution-free interval and the full range."""
    low, high = median_interval(ratios)
    print(f"{name}: median {statistics.median(ratios):.3f} over {len(ratios)} rounds; 95 % interval of the median "
          f"[{low:.3f}, {high:.3f}]; range [{min(ratios):.3f}, {max(ratios):.3f}]")


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in headers]] + [[_format(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths))))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def describe_run(args, clip, description: str) -> None:
    threads = torch.get_num_threads() if args.device.type == "cpu" else None
    where = f"cpu ({threads} threads)" if threads else torch.cuda.get_device_name(args.device)
    print(f"model: {description}; vision {vision_description(clip)}")
    clock = clock_for(args)[0]
    print(f"device: {where}; dtype {args.dtype}; torch {torch.__version__}; clock {clock}"
          f"{' (process CPU seconds)' if clock == 'cpu' else ''}{'; quick' if args.quick else ''}")
