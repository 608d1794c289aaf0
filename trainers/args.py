"""Command-line arguments of `trainers/train_capt.py`, as dataclasses read by `HfArgumentParser`.

The flags are read in two steps: `--method` (default `capt`) picks a method from the registry
(`trainers/methods/__init__.py`), then the model, data and training flags and that method's own flags
(`Method.Arguments`) are parsed together. A method's flags are built from the configuration dataclasses that own
its options (`trainers.flags.flags_from_dataclasses`), so each option is declared and validated once, by its
configuration class.
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

from dataset_scripts.data import DataArguments, check_local_path
from dataset_scripts.paths import EMBEDDED_MODEL
from modeling_capt import check_template
from trainers.flags import parse_comma_list
from trainers.methods import METHODS, get_method


DEFAULT_METHOD = "capt"


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=EMBEDDED_MODEL,
        metadata={"help": "CLIP checkpoint (Hub id or path). Default: the embedded capt-tiny-fashion."},
    )
    method: str = field(default=DEFAULT_METHOD, metadata={"help": "The method to train (see trainers/methods)."})
    template: str | None = field(
        default=None, metadata={"help": "Prompt template with one {}; default: the dataset's, else 'a photo of a {}.'"}
    )

    def __post_init__(self):
        if self.template is not None:
            check_template(self.template)
        check_local_path("model_name_or_path", self.model_name_or_path)


@dataclass
class TrainingArguments:
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
    hub_space_id: str | None = field(default=None, metadata={"help": "The Space that demos the model, linked from "
                                                                       "its card (org/name)."})
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

    def __post_init__(self):
        choices = {"optimizer": ("sgd", "adamw"), "mixed_precision": ("no", "fp16", "bf16"),
                   "prefix_cache": ("auto", "memory", "disk", "off")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, "
                                 f"got {getattr(self, name)!r}")
        if self.torch_compile:
            import torch._dynamo

            backends = torch._dynamo.list_backends(exclude_tags=())
            if self.torch_compile_backend not in backends:
                raise ValueError(
                    f"--torch_compile_backend {self.torch_compile_backend!r} is not a torch.compile backend; "
                    f"available: {', '.join(sorted(backends))}"
                )
        if not 0 < self.augment_min_scale <= 1:
            raise ValueError(f"--augment_min_scale must be in (0, 1], got {self.augment_min_scale}")
        if self.augment and self.prefix_cache in ("memory", "disk"):
            raise ValueError(
                f"--augment changes the frozen activations every epoch, so --prefix_cache {self.prefix_cache} "
                "cannot be used with it (use --prefix_cache auto or off)"
            )
        for name in ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("save_every_epochs", "save_total_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be 0 or more, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. org/capt-oxfordpets)")
        if self.push_to_hub and self.hub_model_id.count("/") != 1:  # as push_folder_to_hub, after training
            raise ValueError(f"--hub_model_id must look like 'org/name', got {self.hub_model_id!r}")
        resume = self.resume_from_checkpoint
        if resume and resume != "latest" and not os.path.isdir(resume):
            raise FileNotFoundError(f"--resume_from_checkpoint: no checkpoint folder at {resume}")


# Flags a resumed run may change: where things go, how they are reported, evaluated or executed (the frozen-prefix
# cache and torch.compile give the same weights), and the epoch count (a longer run goes on from the checkpoint).
# Every other flag decides the trained weights and must match the checkpoint's run.
RESUMABLE_CHANGES = frozenset({
    "output_dir", "num_train_epochs", "per_device_eval_batch_size", "report_to", "save_every_epochs",
    "save_total_limit", "resume_from_checkpoint", "push_to_hub", "hub_model_id", "hub_private", "hub_space_id",
    "num_workers",
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


def argument_classes(method: str) -> tuple[type, ...]:
    """The four argument dataclasses of a run of `method`: model, data, the method's own, training."""
    return (ModelArguments, DataArguments, get_method(method).Arguments, TrainingArguments)


def _other_methods_hint(names) -> str:
    """' (k_pairs is a flag of --method capt)' for the names that are other methods' flags."""
    hints = []
    for name in names:
        owners = [method for method, cls in METHODS.items() if name in {f.name for f in fields(cls.Arguments)}]
        if owners:
            hints.append(f"{name} is a flag of --method {' / '.join(owners)}")
    return f" ({'; '.join(hints)})" if hints else ""


def read_config_file(path: str) -> dict:
    """The mapping of a `--config` YAML or JSON file; a list of integers becomes a flag's comma list."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must hold a mapping of argument names to values")
    for key, value in list(data.items()):
        if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            data[key] = ",".join(str(v) for v in value)
        elif key == "layers_to_transform" and isinstance(value, int) and not isinstance(value, bool):
            data[key] = str(value)
    return data


def _check_types(config: dict, path: str, classes) -> None:
    """Fail early on a config value of the wrong type (YAML would otherwise pass it through silently)."""
    hints = {}
    for cls in classes:
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


def method_of(argv: list[str], config: dict) -> str:
    """The `--method` of `argv` (the last one given), else the config file's, else the default."""
    method = config.get("method", DEFAULT_METHOD)
    for position, arg in enumerate(argv):
        if arg == "--method" and position + 1 < len(argv):
            method = argv[position + 1]
        elif arg.startswith("--method="):
            method = arg.split("=", 1)[1]
    return method


def build_parser(method: str) -> HfArgumentParser:
    """The parser of a run of `method` (its `--help` lists the method's own flags)."""
    return HfArgumentParser(argument_classes(method))


def parse_args(argv: list[str] | None = None):
    """Parse `--config FILE` (YAML/JSON defaults) plus flags into `(model_args, data_args, method_args, train_args)`.

    Each dataclass validates its own fields when it is built; `validate` checks what spans several of them.
    """
    path, argv = split_config_flag(list(sys.argv[1:] if argv is None else argv))
    config = read_config_file(path) if path is not None else {}
    method_name = method_of(argv, config)
    if method_name not in METHODS:
        raise ValueError(f"--method must be one of {tuple(METHODS)}, got {method_name!r}")
    classes = argument_classes(method_name)
    if path is not None:
        unknown = sorted(set(config) - {f.name for cls in classes for f in fields(cls)})
        if unknown:
            raise ValueError(f"--config {path} has unknown arguments: {unknown}{_other_methods_hint(unknown)}")
        _check_types(config, path, classes)
    parser = build_parser(method_name)
    parser.set_defaults(**{**get_method(method_name).training_defaults, **config})
    *groups, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        names = [arg[2:].split("=", 1)[0].replace("no_", "", 1) if arg.startswith("--no_") else arg[2:].split("=", 1)[0]
                 for arg in remaining if arg.startswith("--")]
        raise ValueError(f"These flags are not used by --method {method_name}: {remaining}{_other_methods_hint(names)}")
    model_args, data_args, method_args, train_args = groups
    validate(model_args, data_args, method_args, train_args)
    return model_args, data_args, method_args, train_args


def validate(model_args, data_args, method_args, train_args) -> None:
    """Checks across the argument groups (each group checks its own fields when it is built)."""
    if train_args.resume_from_checkpoint not in (None, "latest") and not get_method(model_args.method).trains:
        raise ValueError(f"--resume_from_checkpoint: --method {model_args.method} trains nothing, so there is "
                         "nothing to resume")


def layers_to_transform(capt_args) -> list[int]:
    """`--layers_to_transform` as a list of integers."""
    return parse_comma_list("layers_to_transform", str(capt_args.layers_to_transform))
