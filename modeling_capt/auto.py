"""Load a checkpoint saved by any model class of this package, as that class, without remote code.

`AutoModel.from_pretrained(..., trust_remote_code=True)` does the same from the checkpoint's own copy of the modeling
files; `load_pretrained` uses this installed package's classes instead (no code from the checkpoint runs). Not
reached by any model class, so it never ships inside a checkpoint.
"""

from __future__ import annotations

import json
import os

from transformers.utils import cached_file

from .modeling_anprompt import AnpromptForImageClassification, AnpromptForZeroShotImageClassification, AnpromptModel
from .modeling_capt import CaptForImageClassification, CaptForZeroShotImageClassification, CaptModel
from .modeling_prompt_clip import (
    PromptCLIPForImageClassification,
    PromptCLIPForZeroShotImageClassification,
    PromptCLIPModel,
    PromptCLIPPreTrainedModel,
)
from .modeling_visprompt import (
    VisPromptForImageClassification,
    VisPromptForZeroShotImageClassification,
    VisPromptModel,
)


#: The model types of this package's configs.
MODEL_TYPES = ("prompt_clip", "capt", "visprompt", "anprompt")

_CLASSES = {cls.__name__: cls for cls in (
    PromptCLIPModel, PromptCLIPForImageClassification, PromptCLIPForZeroShotImageClassification,
    CaptModel, CaptForImageClassification, CaptForZeroShotImageClassification,
    VisPromptModel, VisPromptForImageClassification, VisPromptForZeroShotImageClassification,
    AnpromptModel, AnpromptForImageClassification, AnpromptForZeroShotImageClassification,
)}


def is_package_checkpoint(config: dict) -> bool:
    """Whether a `config.json` (as a dict) is one of this package's models (else, say, a plain CLIP)."""
    return config.get("model_type") in MODEL_TYPES


def checkpoint_class(pretrained_model_name_or_path, **kwargs) -> type[PromptCLIPPreTrainedModel]:
    """The class that saved the checkpoint (`config.json` `architectures`); a `ValueError` for another model."""
    path = cached_file(pretrained_model_name_or_path, "config.json", **kwargs)
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    if not is_package_checkpoint(config):
        raise ValueError(f"{pretrained_model_name_or_path} is a {config.get('model_type')!r} checkpoint, not a model "
                         f"of this package ({' / '.join(MODEL_TYPES)})")
    names = config.get("architectures") or []
    if not names or names[0] not in _CLASSES:
        defaults = {"capt": CaptForImageClassification, "visprompt": VisPromptForImageClassification,
                    "anprompt": AnpromptForImageClassification}
        return defaults.get(config["model_type"], PromptCLIPForImageClassification)
    return _CLASSES[names[0]]


def load_pretrained(pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> PromptCLIPPreTrainedModel:
    """`from_pretrained` of the class that saved the checkpoint (its tokenizer and image processor attached)."""
    hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only", "subfolder")
                  if k in kwargs}
    return checkpoint_class(pretrained_model_name_or_path, **hub_kwargs).from_pretrained(
        pretrained_model_name_or_path, **kwargs)


__all__ = ["MODEL_TYPES", "checkpoint_class", "is_package_checkpoint", "load_pretrained"]
