"""The interface every training method implements, and the run state the trainer hands to it.

The trainer (`trainers/train_capt.py`) runs one pipeline for every method: load the data, evaluate zero-shot CLIP,
let the method prepare what it needs, build its model, train it with the shared Accelerate loop
(`trainers/loop.py`), evaluate it, save it. A method says only what differs:

- `Arguments`: the dataclass of its flags (read by `HfArgumentParser` after `--method` picks the method);
- `check`: build its model configuration from the flags before any data or model is loaded, so a bad value fails
  early (each option is validated once, by the configuration class that owns it);
- `before_evaluation` / `prepare`: work before and after the zero-shot evaluation (CAPT: load its `--bank_path`
  bank, then build the Confusion Bank and the semantic prompts);
- `build_model`: the model to train, around the run's frozen CLIP;
- `begin_training` / `training_step`: one training step's loss and logs, on the `accelerator.prepare`d model;
- `begin_epoch`: work at the start of each epoch, before its first step (VisPrompt: the OT clean/noisy split);
- `generators`: the private random generators a checkpoint must restore;
- `extra_metrics`: what `metrics.json` holds besides accuracy;
- `load_adapter`: the classifier the run's `adapter/` export rebuilds on a plain CLIP.

Adding a method means a model pair in `modeling_capt/`, a module here subclassing `Method`, and one line in the
registry (`trainers/methods/__init__.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from modeling_capt import PromptCLIPModel


@dataclass
class RunContext:
    """What the trainer has loaded for a run, handed to the method's hooks.

    `splits` is `prepare_splits`' result (`train`, `test`, maybe `test_novel`, `train_names`, `novel_names`);
    `train_rows` the training split as an `IndexedImageDataset`; `zeroshot` the frozen zero-shot model, evaluated
    before training; `build(**config_overrides)` builds a classifier of the model class `model_class` around the
    run's CLIP with the run's classes, template, tokenizer and image processor.
    """

    accelerator: Any
    model_args: Any
    data_args: Any
    train_args: Any
    splits: dict
    template: str
    train_rows: Any = None
    tokenizer: Any = None
    image_processor: Any = None
    clip: Any = None
    zeroshot: Any = None
    state: dict = field(default_factory=dict)  # what `prepare` hands to `build_model` / `begin_training`

    @property
    def train_names(self) -> list[str]:
        return self.splits["train_names"]

    def build(self, model_class, **config_overrides):
        return model_class.from_clip(
            self.clip, self.train_names, template=self.template, tokenizer=self.tokenizer,
            image_processor=self.image_processor, base_model_name_or_path=self.model_args.model_name_or_path,
            **config_overrides,
        )


class Method:
    """A training method: zero-shot CLIP, CoOp, CAPT, ... Subclasses set the class attributes and override hooks.

    The default training step is the cross-entropy the model returns for the batch's labels (CoOp's).
    """

    name: ClassVar[str]
    #: The title used in tables and model cards ("CoOp").
    title: ClassVar[str]
    #: The dataclass of the method's flags; an empty dataclass when it has none.
    Arguments: ClassVar[type]
    #: Training flags this method defaults differently (say its paper's optimizer), applied before a config file.
    training_defaults: ClassVar[dict[str, Any]] = {}
    #: Per CoOp benchmark (registry key), method flags its paper sets per dataset: `trainers/run_protocol.py` gives
    #: them to the trainer unless the user's flags set them.
    dataset_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    #: False for a method that trains nothing (zero-shot CLIP).
    trains: ClassVar[bool] = True
    #: True when a class without training images is an error rather than a warning.
    needs_every_training_class: ClassVar[bool] = False
    #: `metrics.json` keys of the method's entry printed under the accuracy table.
    printed_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, args):
        self.args = args

    # ---------------------------------------------------------------------------------------- before any data
    def check(self, model_args) -> None:
        """Build the model configuration the flags ask for and raise on a value it refuses."""

    # ---------------------------------------------------------------------------------------- before training
    def before_evaluation(self, run: RunContext) -> None:
        """Checks and loads that must fail before the zero-shot evaluation spends any time."""

    def prepare(self, run: RunContext) -> None:
        """Work after the zero-shot evaluation and before the model is built (kept in `run.state`)."""

    def build_model(self, run: RunContext):
        """The model to train (or, for a method that trains nothing, to evaluate)."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------- training
    def begin_training(self, model, run: RunContext, prefix_cache=None) -> None:
        """Called once with the `accelerator.prepare`d model, before the first step (and before a resume)."""
        self.model = model
        self.prefix_cache = prefix_cache

    def image_inputs(self, batch) -> dict:
        """The batch's images as model inputs: pixels, or the frozen-prefix cache's hidden states."""
        if self.prefix_cache is not None:
            return self.prefix_cache.model_inputs(batch["indices"], batch["labels"].device)
        return {"pixel_values": batch["pixel_values"]}

    def begin_epoch(self, epoch: int) -> None:
        """Called by the loop at the start of each epoch (0-based `epoch`, also the first one after a resume), before
        its first step; nothing by default. It must not draw from the global random generators: a resumed run
        would then differ from an uninterrupted one."""

    def training_step(self, batch) -> tuple[torch.Tensor, dict]:
        """The loss to back-propagate and the logs of one training batch."""
        return self.model(**self.image_inputs(batch), labels=batch["labels"]).loss, {}

    def generators(self) -> dict[str, torch.Generator]:
        """Private random generators whose state a checkpoint saves and a resume restores."""
        return {}

    # ---------------------------------------------------------------------------------------- after training
    def extra_metrics(self, model, run: RunContext, results: dict) -> dict:
        """Entries added to the method's `metrics.json` entry (`results`: the zero-shot and trained predictions)."""
        return {}

    @classmethod
    def load_adapter(cls, adapter_directory, clip=None):
        """The classifier the run's `adapter/` export rebuilds on a plain CLIP (`clip`, else the export's base model):
        `PromptCLIPModel.from_adapter`, which builds the class the export names."""
        return PromptCLIPModel.from_adapter(adapter_directory, clip=clip)

    @classmethod
    def trained_parts(cls, model_folder: str) -> str:
        """One sentence for the model card: what this method trained on top of the frozen CLIP."""
        return "Nothing is trained."
