"""CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024) as a baseline: peft's LoRA on the attention projections of both CLIP
towers, trained with the cross-entropy over the class prompts (the base class's training step).

The model is the prompt-CLIP classifier with peft's LoRA layers inside its `CLIPModel` (`get_peft_model` on the
wrapped CLIP, in place). The LoRA matrices are the model's declared trainable parts, so:

- the text tower trains, and the class text features are recomputed, with gradients, in every training step
  (`PromptCLIPModel.get_class_text_features` caches nothing while a text layer trains);
- the frozen-prefix cache covers only what LoRA does not touch: the layers below the first adapted one (with LoRA in
  every layer, the embeddings alone).

A run saves two folders:

- `model/`: the LoRA updates merged into CLIP's weights (peft's `merge_and_unload`, on a copy), saved as a plain
  `PromptCLIPForImageClassification`: it loads with `AutoModel.from_pretrained(..., trust_remote_code=True)` and the
  pipelines without peft, and runs as fast as zero-shot CLIP;
- `adapter/`: peft's own export (`PeftModel.save_pretrained`: `adapter_config.json` + `adapter_model.safetensors`),
  which `PeftModel.from_pretrained(CLIPModel.from_pretrained(base), "adapter")` loads onto the base CLIP, and
  `class_prompts.json` (the class names and the template), with which `load_lora_adapter` rebuilds the classifier.

The defaults are CLIP-LoRA's (its `run_utils.py` and `lora.py`): rank 2, alpha 1, dropout 0.25 on the LoRA input,
the q, k and v projections of every layer of both towers, AdamW at 2e-4 with weight decay 0.01, batches of 32 and a
cosine schedule without warmup. CLIP-LoRA trains for 500 x shots iterations; this trainer counts epochs
(`--num_train_epochs`, 10 by default), so its budget is `500 * shots * 32 / training images` epochs (16000 / classes
at 16 shots), which a run sets itself.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import AutoTokenizer, CLIPConfig, CLIPModel
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from dataset_scripts.atomic_io import write_json_atomic
from modeling_capt import PromptCLIPForImageClassification, load_image_processor
from trainers.flags import config_kwargs, flags_from_dataclasses
from trainers.methods.base import Method, RunContext


# peft is imported where it is used: every run imports the method registry, and importing peft takes about a second
if TYPE_CHECKING:
    from peft import LoraConfig

#: Beside peft's files in `adapter/`: the class names and template the classifier was trained with.
CLASS_PROMPTS_NAME = "class_prompts.json"
#: The key of `config.json` that records the LoRA merged into a saved model's CLIP weights.
MERGED_LORA_KEY = "merged_lora"
TOWERS = {"both": ("vision_model", "text_model"), "vision": ("vision_model",), "text": ("text_model",)}


@dataclass
class ClipLoraConfig:
    """Where CLIP-LoRA's low-rank updates go and their size; each field is a flag of `--method lora`.

    Args:
        lora_rank (`int`, *optional*, defaults to 2):
            Rank `r` of each update `B A`.
        lora_alpha (`float`, *optional*, defaults to 1.0):
            The update is scaled by `lora_alpha / lora_rank`.
        lora_dropout (`float`, *optional*, defaults to 0.25):
            Dropout on the input of the LoRA branch, in training.
        lora_target_modules (`list[str]`, *optional*, defaults to `["q_proj", "k_proj", "v_proj"]`):
            The linear layers of each adapted encoder layer: `q_proj`, `k_proj`, `v_proj`, `out_proj` (attention),
            `fc1`, `fc2` (MLP).
        lora_towers (`str`, *optional*, defaults to `"both"`):
            `vision`, `text` or `both`.
        lora_layers (`list[int]`, *optional*):
            Encoder layer indices to adapt in each tower (negative ones count from the last layer); `None`: all.

    Example:

    ```python
    >>> peft_config = ClipLoraConfig(lora_layers=[-2, -1]).peft_config(CLIPConfig.from_pretrained(clip_id))
    ```
    """

    lora_rank: int = field(default=2, metadata={"help": "Rank r of each LoRA update."})
    lora_alpha: float = field(default=1.0, metadata={"help": "The update is scaled by lora_alpha / lora_rank."})
    lora_dropout: float = field(default=0.25, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj"],
        metadata={"help": "Linear layers of each adapted encoder layer: q_proj, k_proj, v_proj, out_proj, fc1, fc2."},
    )
    lora_towers: str = field(default="both", metadata={"help": "The towers to adapt: vision, text or both."})
    lora_layers: list[int] | None = field(
        default=None, metadata={"help": "Encoder layers to adapt in each tower (negative: from the last); all if unset."}
    )

    def __post_init__(self):
        if not isinstance(self.lora_rank, int) or isinstance(self.lora_rank, bool) or self.lora_rank < 1:
            raise ValueError(f"lora_rank must be a positive integer, got {self.lora_rank!r}")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be positive, got {self.lora_alpha!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.lora_towers not in TOWERS:
            raise ValueError(f"lora_towers must be vision, text or both, got {self.lora_towers!r}")
        if not self.lora_target_modules:
            raise ValueError("lora_target_modules must name at least one layer (e.g. q_proj,k_proj,v_proj)")
        if self.lora_layers is not None and not self.lora_layers:
            raise ValueError("lora_layers must name at least one layer, or be unset (every layer)")

    def target_modules_pattern(self, clip_config: CLIPConfig) -> str:
        """peft's `target_modules` for a CLIP of `clip_config`: a regular expression (full match) of the adapted
        module paths. Raises a `ValueError` naming a target that is no linear layer of CLIP's encoder layers, or a
        layer index out of range for a tower."""
        with torch.device("meta"):  # the layer's structure only, no memory
            layer = CLIPEncoderLayer(clip_config.text_config)
        linear = {name.rsplit(".", 1)[-1]: name for name, module in layer.named_modules()
                  if isinstance(module, torch.nn.Linear)}
        paths = [linear.get(name, name) for name in self.lora_target_modules]
        unknown = [name for name, path in zip(self.lora_target_modules, paths) if path not in linear.values()]
        if unknown:
            raise ValueError(f"--lora_target_modules: {unknown} are not linear layers of CLIP's encoder layers; "
                             f"choose among {sorted(linear)}")
        towers = []
        for tower in TOWERS[self.lora_towers]:
            num_layers = getattr(clip_config, tower.replace("_model", "_config")).num_hidden_layers
            layers = range(num_layers) if self.lora_layers is None else self.lora_layers
            out_of_range = [index for index in layers if not -num_layers <= index < num_layers]
            if out_of_range:
                raise ValueError(f"--lora_layers: {out_of_range} are out of range for the {num_layers} layers of "
                                 f"CLIP's {tower.replace('_model', '')} tower")
            indices = "|".join(str(index) for index in sorted({index % num_layers for index in layers}))
            towers.append(rf"{tower}\.encoder\.layers\.(?:{indices})")
        modules = "|".join(re.escape(path) for path in dict.fromkeys(paths))
        return rf"(?:{'|'.join(towers)})\.(?:{modules})"

    def peft_config(self, clip_config: CLIPConfig) -> LoraConfig:
        """peft's `LoraConfig` of these options on a CLIP of `clip_config`."""
        from peft import LoraConfig

        return LoraConfig(r=self.lora_rank, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=self.target_modules_pattern(clip_config), bias="none")


LoraArguments = flags_from_dataclasses(
    "LoraArguments", [(ClipLoraConfig, None)], doc="The flags of `--method lora`: `ClipLoraConfig`."
)


def _merged_lora_record(peft_config: LoraConfig) -> dict:
    """What a merged checkpoint's `config.json` records of the LoRA in its weights."""
    return {"peft_type": "LORA", "r": peft_config.r, "lora_alpha": peft_config.lora_alpha,
            "lora_dropout": peft_config.lora_dropout, "target_modules": peft_config.target_modules}


class PromptCLIPLoraForImageClassification(PromptCLIPForImageClassification):
    """The model `--method lora` trains: [`PromptCLIPForImageClassification`] with peft's LoRA layers in its CLIP.

    Built with `from_clip(..., lora_config=LoraConfig(...))`. It is never saved as itself: `save_pretrained` writes
    the merged plain classifier ([`~PromptCLIPLoraForImageClassification.merged_model`]) and `save_adapter` peft's
    adapter export, so neither needs this class (nor peft, for the merged model) to load.
    """

    _lora_modules: tuple[str, ...] = ()

    @classmethod
    def from_clip(cls, clip, class_names, *, lora_config: LoraConfig, **kwargs):
        """[`PromptCLIPModel.from_clip`], then `add_lora(lora_config)`."""
        model = super().from_clip(clip, class_names, **kwargs)
        model.add_lora(lora_config)
        return model

    def add_lora(self, lora_config: LoraConfig) -> None:
        """Put peft's LoRA layers into the wrapped CLIP (in place); they become the only trainable parts."""
        from peft import get_peft_model
        from peft.tuners.lora import LoraLayer

        if self._lora_modules:
            raise ValueError("This model has its LoRA layers already")
        self.clip.name_or_path = self.config.base_model_name_or_path or ""  # peft records it as the adapter's base
        peft_clip = get_peft_model(self.clip, lora_config)
        # kept outside the module tree: the state dict keeps CLIP's own keys (clip.*), and `self.clip` is the same
        # CLIPModel that peft's wrapper holds
        self.__dict__["peft_clip"] = peft_clip
        self._lora_modules = tuple(f"clip.{name}.{part}" for name, module in self.clip.named_modules()
                                   if isinstance(module, LoraLayer) for part in ("lora_A", "lora_B"))
        self._freeze_all_but_trainable_parts()
        self.clear_text_cache()

    def trainable_module_names(self) -> list[str]:
        return super().trainable_module_names() + list(self._lora_modules)

    @torch.no_grad()
    def merged_model(self) -> PromptCLIPForImageClassification:
        """A plain [`PromptCLIPForImageClassification`] whose CLIP weights have the LoRA updates merged in (peft's
        `merge_and_unload` on a copy: this model keeps its LoRA layers)."""
        merged_clip = copy.deepcopy(self.peft_clip).merge_and_unload()
        model = PromptCLIPForImageClassification(copy.deepcopy(self.config))
        state = {key: value for key, value in self.state_dict().items() if not key.startswith("clip.")}
        state.update({f"clip.{key}": value for key, value in merged_clip.state_dict().items()})
        model.load_state_dict(state)
        model.tokenizer, model.image_processor = self.tokenizer, self.image_processor
        setattr(model.config, MERGED_LORA_KEY, _merged_lora_record(self.peft_clip.peft_config["default"]))
        return model.to(self.device).eval()

    def save_pretrained(self, save_directory, is_main_process: bool = True, **kwargs):
        """Save the merged model ([`~PromptCLIPLoraForImageClassification.merged_model`]): a plain prompt-CLIP
        checkpoint that loads without peft."""
        self.merged_model().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)

    def save_adapter(self, save_directory: str | os.PathLike) -> None:
        """peft's export of the LoRA weights (`PeftModel.save_pretrained`) and `class_prompts.json`."""
        self.peft_clip.save_pretrained(str(save_directory), save_embedding_layers=False)  # no embedding is adapted
        write_json_atomic(os.path.join(save_directory, CLASS_PROMPTS_NAME),
                          {"class_names": self.config.class_names, "template": self.config.template})


def is_lora_export(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a `--method lora` adapter export (peft's LoRA, with its class prompts)."""
    try:
        with open(os.path.join(directory, "adapter_config.json"), encoding="utf-8") as handle:
            peft_type = json.load(handle).get("peft_type")
    except (OSError, ValueError):
        return False
    return peft_type == "LORA" and os.path.isfile(os.path.join(directory, CLASS_PROMPTS_NAME))


def load_lora_adapter(adapter_directory: str | os.PathLike, clip: str | CLIPModel | None = None, tokenizer=None,
                      image_processor=None) -> PromptCLIPForImageClassification:
    """The classifier a `--method lora` export rebuilds: its LoRA loaded onto the base CLIP (`clip`, or the export's
    `base_model_name_or_path`; a loaded `CLIPModel` is copied, not changed) with `PeftModel.from_pretrained`, merged,
    around the export's class prompts."""
    from peft import LoraConfig, PeftModel

    adapter_directory = str(adapter_directory)
    with open(os.path.join(adapter_directory, CLASS_PROMPTS_NAME), encoding="utf-8") as handle:
        prompts = json.load(handle)
    peft_config = LoraConfig.from_pretrained(adapter_directory)
    source = clip if isinstance(clip, (str, os.PathLike)) else peft_config.base_model_name_or_path
    if clip is None and not source:
        raise ValueError(f"{adapter_directory} names no base_model_name_or_path; pass clip=...")
    base = copy.deepcopy(clip) if isinstance(clip, CLIPModel) else CLIPModel.from_pretrained(source)
    if tokenizer is None or image_processor is None:
        if not source:
            raise ValueError("load_lora_adapter needs tokenizer= and image_processor= with a loaded CLIPModel")
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(source)
        image_processor = image_processor or load_image_processor(source)
    merged_clip = PeftModel.from_pretrained(base, adapter_directory).merge_and_unload()
    model = PromptCLIPForImageClassification.from_clip(
        merged_clip, prompts["class_names"], template=prompts["template"], tokenizer=tokenizer,
        image_processor=image_processor, base_model_name_or_path=str(source) if source else None,
    )
    setattr(model.config, MERGED_LORA_KEY, _merged_lora_record(peft_config))
    return model


class LoraMethod(Method):
    """CLIP-LoRA: trains the LoRA updates with the cross-entropy over the class prompts (the base training step)."""

    name = "lora"
    title = "CLIP-LoRA"
    Arguments = LoraArguments
    # CLIP-LoRA's optimizer: AdamW, lr 2e-4, weight decay 0.01, batch 32, cosine from the first step
    training_defaults = {"optimizer": "adamw", "learning_rate": 2e-4, "weight_decay": 1e-2, "warmup_epochs": 0,
                         "per_device_train_batch_size": 32}

    def options(self) -> ClipLoraConfig:
        return ClipLoraConfig(**config_kwargs(self.args, ClipLoraConfig))

    def check(self, model_args) -> None:
        self.options().target_modules_pattern(CLIPConfig.from_pretrained(model_args.model_name_or_path))

    def build_model(self, run: RunContext):
        return run.build(PromptCLIPLoraForImageClassification, lora_config=self.options().peft_config(run.clip.config))

    @classmethod
    def load_adapter(cls, adapter_directory, clip=None):
        return load_lora_adapter(adapter_directory, clip=clip)

    @classmethod
    def trained_parts(cls, model_folder: str) -> str:
        try:
            with open(os.path.join(model_folder, "config.json"), encoding="utf-8") as handle:
                record = json.load(handle).get(MERGED_LORA_KEY) or {}
        except (OSError, ValueError):
            record = {}
        rank = f" of rank {record['r']}" if "r" in record else ""
        return (f"Low-rank updates{rank} of the projections in CLIP's encoder layers are trained (CLIP-LoRA) and "
                "merged into CLIP's weights here; the run's adapter/ folder holds them as a peft LoRA adapter.")
