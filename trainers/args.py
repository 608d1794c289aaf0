"""Command-line arguments of `trainers/train_capt.py`, as dataclasses read by `HfArgumentParser`.

A YAML or JSON file given with `--config FILE` supplies defaults; flags on the command line override it.
"""

from __future__ import annotations

import json
import os
import sys
import typing
from dataclasses import dataclass, field, fields

import yaml
from transformers import HfArgumentParser

from dataset_scripts.data import EMBEDDED_DATA, EMBEDDED_MODEL, REPO_ROOT, DataArguments, check_local_path  # noqa: F401


METHODS = ("zeroshot", "coop", "capt")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=EMBEDDED_MODEL,
        metadata={"help": "CLIP checkpoint (Hub id or path). Default: the embedded capt-tiny-fashion."},
    )
    method: str = field(default="capt", metadata={"help": "zeroshot, coop or capt."})
    template: str | None = field(
        default=None, metadata={"help": "Prompt template with one {}; default: the dataset's, else 'a photo of a {}.'"}
    )
    n_ctx: int = field(default=4, metadata={"help": "CoOp: number of learnable context tokens."})
    ctx_init: str | None = field(default="a photo of a", metadata={"help": "CoOp: words initialising the context."})


@dataclass
class CaptArguments:
    bank_path: str | None = field(default=None, metadata={"help": "Load a confusion bank (folder or Hub dataset id)."})
    bank_base_model: str | None = field(
        default=None, metadata={"help": "Checkpoint the bank is built from (default: zero-shot CLIP)."}
    )
    k_pairs: int = field(default=5, metadata={"help": "Confusion classes per sample."})
    use_sem: bool = field(default=True, metadata={"help": "Semantic Confusion Miner (scores + semantic prompts)."})
    use_sam: bool = field(default=True, metadata={"help": "Sample Confusion Miner (representative samples)."})
    use_mgde: bool = field(default=True, metadata={"help": "Multi-Granularity Discrepancy Expert."})
    confusion_statistics: bool = field(default=True, metadata={"help": "Weight scores by bank statistics (Eq. 7)."})
    symmetric_statistics: bool = field(default=False, metadata={"help": "n_i = M[i,g] + M[g,i]."})
    pseudo_gt: bool = field(default=True, metadata={"help": "Use the base model's prediction as GT for mining."})
    random_samples: bool = field(default=False, metadata={"help": "Random instead of representative samples."})
    adapter_branches: str = field(default="both", metadata={"help": "global, local or both."})
    layers_to_transform: str = field(default="-2,-1", metadata={"help": "Vision layers to adapt (comma list)."})
    alpha_scale: float = field(default=5.0, metadata={"help": "s in alpha = s * c ** gamma."})
    alpha_gamma: float = field(default=0.5, metadata={"help": "gamma in alpha = s * c ** gamma."})
    lambda_confuse: float = field(default=1.0, metadata={"help": "Weight of the confusion InfoNCE loss."})
    load_balance_coef: float = field(default=0.0, metadata={"help": "Weight of MGDE's load-balancing loss."})
    mgde_num_clusters: int = field(default=8, metadata={"help": "K-means centres per semantic expert."})
    mgde_top_k: int = field(default=2, metadata={"help": "Experts routed per sample."})
    prompt_generator: str = field(
        default="template",
        metadata={"help": "template, json or lm. template reuses the prompts stored with a --bank_path bank; json and "
                          "lm write every pair's prompts anew."},
    )
    prompt_file: str | None = field(default=None, metadata={"help": "JSON prompts for --prompt_generator json."})
    prompt_lm: str | None = field(default=None, metadata={"help": "Causal LM for --prompt_generator lm."})


@dataclass
class CaptTrainingArguments:
    output_dir: str = field(default="outputs/capt-tiny-fashion", metadata={"help": "Where everything is written."})
    seed: int = field(default=1, metadata={"help": "Seed of few-shot sampling and training."})
    num_train_epochs: int = field(default=10, metadata={"help": "Training epochs (the last one is kept)."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Training batch per process."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch per process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps accumulated per update."})
    optimizer: str = field(default="sgd", metadata={"help": "sgd or adamw."})
    learning_rate: float = field(default=0.002, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=5e-4, metadata={"help": "Weight decay."})
    warmup_epochs: int = field(default=1, metadata={"help": "Constant-lr warmup epochs at 1e-5 (CoOp)."})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (through Accelerate)."})
    report_to: str = field(default="none", metadata={"help": "Trackers for Accelerate (e.g. tensorboard), or none."})
    save_every_epochs: int = field(default=1, metadata={"help": "Checkpoint (save_state) every N epochs; 0: never."})
    save_total_limit: int = field(default=1, metadata={"help": "Epoch checkpoints kept (the newest); 0: keep all."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "A checkpoint folder, or 'latest'."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final model to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo for --push_to_hub."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repo private."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers."})
    heatmap: bool = field(default=True, metadata={"help": "Write the before/after confusion heatmap PNG."})
    prefix_cache: str = field(
        default="auto",
        metadata={"help": "Frozen-prefix cache of the training images: auto (memory if small, else disk), memory, "
                          "disk or off."},
    )
    prefix_cache_dir: str | None = field(
        default=None, metadata={"help": "Folder of the disk frozen-prefix cache (default: OUTPUT_DIR/prefix_cache)."}
    )
    torch_compile: bool = field(default=False, metadata={"help": "Compile the vision layers with torch.compile."})
    torch_compile_backend: str = field(
        default="inductor", metadata={"help": "torch.compile backend of --torch_compile (e.g. inductor, aot_eager)."}
    )
    augment: bool = field(
        default=False,
        metadata={"help": "Augment training images (random resized crop + horizontal flip, as CoOp); turns the "
                          "frozen-prefix cache off (auto) or is refused with an explicit --prefix_cache."},
    )
    augment_min_scale: float = field(
        default=0.08, metadata={"help": "Smallest area fraction of the random resized crop (--augment)."}
    )


ALL_ARGUMENTS = (ModelArguments, DataArguments, CaptArguments, CaptTrainingArguments)

# Flags a resumed run may change: where things go, how they are reported, evaluated or executed (the frozen-prefix
# cache and torch.compile give the same weights), and the epoch count (a longer run goes on from the checkpoint).
# Every other flag decides the trained weights and must match the checkpoint's run.
RESUMABLE_CHANGES = frozenset({
    "output_dir", "num_train_epochs", "per_device_eval_batch_size", "report_to", "save_every_epochs",
    "save_total_limit", "resume_from_checkpoint", "push_to_hub", "hub_model_id", "hub_private", "num_workers",
    "heatmap", "prefix_cache", "prefix_cache_dir", "torch_compile", "torch_compile_backend", "max_eval_samples",
    "fewshot_cache_dir",
})


def training_settings(*argument_groups) -> dict:
    """The flags that decide the trained weights (all but `RESUMABLE_CHANGES`), as JSON values for a checkpoint."""
    return {
        f.name: getattr(group, f.name)
        for group in argument_groups
        for f in fields(group)
        if f.name not in RESUMABLE_CHANGES
    }


def read_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must hold a mapping of argument names to values")
    known = {f.name for cls in ALL_ARGUMENTS for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--config {path} has unknown arguments: {unknown}")
    layers = data.get("layers_to_transform")  # a flag's comma list; in a file, a YAML/JSON list or one integer too
    if isinstance(layers, list) and layers and all(isinstance(v, int) and not isinstance(v, bool) for v in layers):
        data["layers_to_transform"] = ",".join(str(v) for v in layers)
    elif isinstance(layers, int) and not isinstance(layers, bool):
        data["layers_to_transform"] = str(layers)
    return data


def _check_types(config: dict, path: str) -> None:
    """Fail early on a config value of the wrong type (YAML would otherwise pass it through silently)."""
    hints = {}
    for cls in ALL_ARGUMENTS:
        hints.update(typing.get_type_hints(cls))
    for key, value in config.items():
        options = typing.get_args(hints[key]) or (hints[key],)
        if value is None:
            if type(None) not in options:
                raise ValueError(f"--config {path}: {key} cannot be null")
            continue
        kind = next(option for option in options if option is not type(None))
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise ValueError(f"--config {path}: {key} must be {kind.__name__}, got {type(value).__name__} {value!r}")


def split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """The file of `--config FILE` (or `--config=FILE`) in `argv`, if any, and `argv` without it."""
    argv = list(argv)
    for position, arg in enumerate(argv):
        if arg == "--config" or arg.startswith("--config="):
            path = arg.split("=", 1)[1] if "=" in arg else (argv[position + 1] if position + 1 < len(argv) else "")
            if not path:
                raise ValueError("--config needs a file path")
            del argv[position : position + (1 if "=" in arg else 2)]
            return path, argv
    return None, argv


def parse_args(argv: list[str] | None = None):
    """Parse `--config FILE` (YAML/JSON defaults) plus flags into the four argument dataclasses, validated."""
    path, argv = split_config_flag(list(sys.argv[1:] if argv is None else argv))
    config = {}
    if path is not None:
        config = read_config_file(path)
        _check_types(config, path)
    parser = HfArgumentParser(ALL_ARGUMENTS)
    parser.set_defaults(**config)
    model_args, data_args, capt_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    validate(model_args, data_args, capt_args, train_args)
    return model_args, data_args, capt_args, train_args


def validate(model_args, data_args, capt_args, train_args) -> None:
    if model_args.method not in METHODS:
        raise ValueError(f"--method must be one of {METHODS}, got {model_args.method!r}")
    if model_args.template is not None and model_args.template.count("{}") != 1:
        raise ValueError(f"--template must contain exactly one '{{}}', got {model_args.template!r}")
    if data_args.subsample_classes not in ("base", "all"):
        raise ValueError(f"--subsample_classes must be base or all, got {data_args.subsample_classes!r}")
    if capt_args.adapter_branches not in ("global", "local", "both"):
        raise ValueError(f"--adapter_branches must be global, local or both, got {capt_args.adapter_branches!r}")
    if capt_args.prompt_generator not in ("template", "json", "lm"):
        raise ValueError(f"--prompt_generator must be template, json or lm, got {capt_args.prompt_generator!r}")
    if capt_args.prompt_generator == "json" and not capt_args.prompt_file:
        raise ValueError("--prompt_generator json needs --prompt_file")
    if capt_args.prompt_generator == "lm" and not capt_args.prompt_lm:
        raise ValueError("--prompt_generator lm needs --prompt_lm (a local causal LM)")
    if capt_args.k_pairs < 1:
        raise ValueError(f"--k_pairs must be at least 1, got {capt_args.k_pairs}")
    layers_to_transform(capt_args)  # parses
    if train_args.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"--optimizer must be sgd or adamw, got {train_args.optimizer!r}")
    if train_args.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"--mixed_precision must be no, fp16 or bf16, got {train_args.mixed_precision!r}")
    if train_args.prefix_cache not in ("auto", "memory", "disk", "off"):
        raise ValueError(f"--prefix_cache must be auto, memory, disk or off, got {train_args.prefix_cache!r}")
    if train_args.torch_compile:
        import torch._dynamo

        backends = torch._dynamo.list_backends(exclude_tags=())
        if train_args.torch_compile_backend not in backends:
            raise ValueError(
                f"--torch_compile_backend {train_args.torch_compile_backend!r} is not a torch.compile backend; "
                f"available: {', '.join(sorted(backends))}"
            )
    if not 0 < train_args.augment_min_scale <= 1:
        raise ValueError(f"--augment_min_scale must be in (0, 1], got {train_args.augment_min_scale}")
    if train_args.augment and train_args.prefix_cache in ("memory", "disk"):
        raise ValueError(
            f"--augment changes the frozen activations every epoch, so --prefix_cache {train_args.prefix_cache} "
            "cannot be used with it (use --prefix_cache auto or off)"
        )
    for name in ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "gradient_accumulation_steps"):
        if getattr(train_args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(train_args, name)}")
    for name in ("save_every_epochs", "save_total_limit"):
        if getattr(train_args, name) < 0:
            raise ValueError(f"--{name} must be 0 or more, got {getattr(train_args, name)}")
    if train_args.resume_from_checkpoint not in (None, "latest") and model_args.method == "zeroshot":
        raise ValueError("--resume_from_checkpoint: --method zeroshot trains nothing, so there is nothing to resume")
    if not train_args.learning_rate > 0:
        raise ValueError(f"--learning_rate must be positive, got {train_args.learning_rate}")
    if data_args.max_eval_samples is not None and data_args.max_eval_samples < 1:
        raise ValueError(f"--max_eval_samples must be at least 1 (or left out for the whole test split), "
                         f"got {data_args.max_eval_samples}")
    if train_args.push_to_hub and not train_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. org/capt-oxfordpets)")
    if train_args.push_to_hub and train_args.hub_model_id.count("/") != 1:  # as push_folder_to_hub, after training
        raise ValueError(f"--hub_model_id must look like 'org/name', got {train_args.hub_model_id!r}")
    for flag, value in (("model_name_or_path", model_args.model_name_or_path), ("bank_path", capt_args.bank_path),
                        ("bank_base_model", capt_args.bank_base_model), ("dataset_name", data_args.dataset_name),
                        ("prompt_lm", capt_args.prompt_lm)):
        check_local_path(flag, value)
    resume = train_args.resume_from_checkpoint
    if resume and resume != "latest" and not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume_from_checkpoint: no checkpoint folder at {resume}")
    sources = [bool(data_args.dataset_name), bool(data_args.dataset), bool(data_args.train_dir or data_args.test_dir)]
    if sum(sources) > 1:
        raise ValueError("Give one data source: --dataset_name, --dataset/--data_dir, or --train_dir/--test_dir")
    if data_args.dataset and not data_args.data_dir:
        raise ValueError("--dataset needs --data_dir (the root of the CoOp dataset folders)")
    if bool(data_args.train_dir) != bool(data_args.test_dir):
        raise ValueError("--train_dir and --test_dir go together")
    # always local paths, never Hub ids: a missing one is named here, before any model or data is loaded
    for flag, value in (("train_dir", data_args.train_dir), ("test_dir", data_args.test_dir),
                        ("data_dir", data_args.data_dir), ("prompt_file", capt_args.prompt_file)):
        check_local_path(flag, value, always_local=True)


def layers_to_transform(capt_args) -> list[int]:
    try:
        return [int(part) for part in str(capt_args.layers_to_transform).split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--layers_to_transform must be a comma list of integers, got {capt_args.layers_to_transform!r}")
