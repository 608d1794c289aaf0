"""Configuration of ANPrompt models (robust prompt tuning with mild semantic noise) on top of `PromptCLIPConfig`.

This file ships to the Hub as remote code: it imports only the standard library, torch and transformers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from transformers import CLIPConfig

from .configuration_prompt_clip import DEFAULT_TEMPLATE, PromptCLIPConfig


ANPROMPT_PEFT_TYPE = "ANPROMPT"

#: Which logits join the alignment logits `l_A` in the prediction: `l_R = f_v f_w^T` (paper) or `f_N f_t^T` (the
#: released code's second branch).
SECOND_LOGITS = ("weak_noise", "nrvpp_text")
#: What the model predicts with at evaluation: `theta l_A + (1 - theta) l_second` or `l_A` alone.
EVAL_LOGITS = ("final", "align")


def default_prompt_layers(num_layers: int) -> list[int]:
    """The layers (0-based) ANPrompt prompts by default: the upper part of the tower from layer `ceil(5 L / 12)`,
    i.e. layers 6-12 (1-based) of a 12-layer ViT-B/16 tower as in the paper, the last layer of a 2-layer one."""
    return list(range(math.ceil(5 * num_layers / 12), num_layers))


@dataclass
class AnpromptPromptConfig:
    """PEFT-shaped settings of ANPrompt's prompts, NRVPP and logits (METHODS.md, "ANPrompt").

    Args:
        num_prompts (`int`, *optional*, defaults to 5):
            `T`, the number of anti-noise prompt tokens (and of k-means noise prompts).
        prompt_layers (`list[int]`, *optional*):
            Encoder layers (0-based, negative counts from the end) that receive prompts, in both towers. `None`
            applies the paper's rule on depth ([`default_prompt_layers`]: layers 6-12 of 12). The first one inserts
            the `T` tokens after the first token; the later ones replace them.
        noise_alpha (`float`, *optional*, defaults to 0.001):
            `alpha` in the weak-noise features `f_w = f_m + alpha * f_n`; 0 switches the text noise off.
        anti_noise_eps (`float`, *optional*, defaults to 0.01):
            `eps` in the anti-noise prompts `P_a = P_c + eps * P_w`; 0 reproduces the released code (no noise prompts).
        vision_beta (`float`, *optional*, defaults to 1.0):
            In later prompted vision layers the slots become `beta * P_v^l + (1 - beta) * previous` (1: replace).
        theta (`float`, *optional*, defaults to 0.7):
            The prediction is `theta * l_A + (1 - theta) * l_second`.
        second_logits (`str`, *optional*, defaults to `"weak_noise"`):
            `"weak_noise"`: `l_R = f_v f_w^T` (paper); `"nrvpp_text"`: `f_N f_t^T` (released code).
        eval_logits (`str`, *optional*, defaults to `"final"`):
            `"final"` predicts with the mixture above, `"align"` with `l_A` alone.
        nrvpp_lora_rank (`int`, *optional*, defaults to 64):
            Rank of the LoRA on the visual projection that NRVPP's pooled prompt tokens go through.
        nrvpp_lora_alpha (`float`, *optional*, defaults to 64.0):
            LoRA scaling numerator (the update is scaled by `alpha / rank`).
        base_model_name_or_path (`str`, *optional*):
            The CLIP the prompts were trained on.
    """

    peft_type: str = field(default=ANPROMPT_PEFT_TYPE, metadata={"help": "Adapter family tag (informational)."})
    task_type: str | None = field(default="IMAGE_CLASSIFICATION", metadata={"help": "PEFT-style task tag."})
    num_prompts: int = field(default=5, metadata={"help": "T: anti-noise prompt tokens and k-means noise prompts."})
    prompt_layers: list[int] | None = field(
        default=None, metadata={"help": "Prompted layers of both towers (0-based); default: layers 6-12 of 12."}
    )
    noise_alpha: float = field(default=0.001, metadata={"help": "alpha in f_w = f_m + alpha f_n (0: no text noise)."})
    anti_noise_eps: float = field(default=0.01, metadata={"help": "eps in P_a = P_c + eps P_w (0: released code)."})
    vision_beta: float = field(default=1.0, metadata={"help": "Later vision layers: beta P_v + (1 - beta) previous."})
    theta: float = field(default=0.7, metadata={"help": "Prediction theta l_A + (1 - theta) l_second."})
    second_logits: str = field(default="weak_noise", metadata={"help": "weak_noise (paper: f_v f_w) or nrvpp_text "
                                                                       "(code: f_N f_t)."})
    eval_logits: str = field(default="final", metadata={"help": "final (theta mixture) or align (l_A alone)."})
    nrvpp_lora_rank: int = field(default=64, metadata={"help": "Rank of NRVPP's LoRA on the visual projection."})
    nrvpp_lora_alpha: float = field(default=64.0, metadata={"help": "NRVPP LoRA scaling numerator (alpha / rank)."})
    base_model_name_or_path: str | None = field(default=None, metadata={"help": "The CLIP these prompts are for."})

    def __post_init__(self):
        for name in ("num_prompts", "nrvpp_lora_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.prompt_layers, int) and not isinstance(self.prompt_layers, bool):
            self.prompt_layers = [self.prompt_layers]
        if self.prompt_layers is not None:
            if not self.prompt_layers or not all(isinstance(i, int) and not isinstance(i, bool)
                                                 for i in self.prompt_layers):
                raise ValueError(f"prompt_layers must be a non-empty list of integers or None, got "
                                 f"{self.prompt_layers!r}")
            self.prompt_layers = list(self.prompt_layers)
        for name in ("noise_alpha", "anti_noise_eps", "nrvpp_lora_alpha"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        for name in ("vision_beta", "theta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if self.second_logits not in SECOND_LOGITS:
            raise ValueError(f"second_logits must be one of {SECOND_LOGITS}, got {self.second_logits!r}")
        if self.eval_logits not in EVAL_LOGITS:
            raise ValueError(f"eval_logits must be one of {EVAL_LOGITS}, got {self.eval_logits!r}")

    def select_layers(self, num_layers: int) -> list[int]:
        """The prompted layers (0-based, sorted, distinct) of a tower of `num_layers` layers."""
        if self.prompt_layers is None:
            chosen = default_prompt_layers(num_layers)
        else:
            chosen = []
            for index in self.prompt_layers:
                if not -num_layers <= index < num_layers:
                    raise ValueError(f"prompt_layers index {index} is out of range for {num_layers} layers")
                chosen.append(index % num_layers)
        chosen = sorted(set(chosen))
        if not chosen:
            raise ValueError(f"prompt_layers selects no layer of {num_layers}")
        return chosen

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AnpromptPromptConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown AnpromptPromptConfig fields: {unknown}")
        return cls(**data)


class AnpromptConfig(PromptCLIPConfig):
    r"""Configuration of an ANPrompt model: a [`PromptCLIPConfig`] (frozen CLIP, template, class names) plus the
    prompt settings ([`AnpromptPromptConfig`]) and the sentences the weak-noise features come from.

    Args:
        clip_config, template, max_text_length, base_model_name_or_path, id2label:
            As in [`PromptCLIPConfig`] (ANPrompt has no CoOp context: the template is its text prompt).
        prompt_config (`dict` or `AnpromptPromptConfig`, *optional*):
            The prompt, NRVPP and logit settings; defaults to `AnpromptPromptConfig()`.
        class_sentences (`dict[str, dict[str, list[str]]]`, *optional*):
            Per class name, the `"main"` and `"noise"` sentences its weak-noise feature is built from (the ones the
            run drew from the description cache). A class missing here (a novel class with no description) gets the
            template alone, with a warning.
        use_learnable_context, n_ctx, ctx_init:
            Kept for the base config's layout; ANPrompt has no CoOp context (`use_learnable_context=True` is refused).

    Example:

    ```python
    >>> from transformers import CLIPConfig
    >>> from modeling_capt import AnpromptConfig, AnpromptForImageClassification
    >>> config = AnpromptConfig(clip_config=CLIPConfig(), id2label={0: "cat", 1: "dog"})
    >>> model = AnpromptForImageClassification(config)
    ```"""

    model_type = "anprompt"

    def __init__(
        self,
        clip_config: dict | CLIPConfig | None = None,
        template: str = DEFAULT_TEMPLATE,
        prompt_config: dict | AnpromptPromptConfig | None = None,
        class_sentences: dict | None = None,
        use_learnable_context: bool = False,
        n_ctx: int = 4,
        ctx_init: str | None = "a photo of a",
        max_text_length: int | None = None,
        base_model_name_or_path: str | None = None,
        **kwargs,
    ):
        if prompt_config is None:
            prompt_config = AnpromptPromptConfig()
        elif isinstance(prompt_config, dict):
            prompt_config = AnpromptPromptConfig.from_dict(prompt_config)
        elif not isinstance(prompt_config, AnpromptPromptConfig):
            raise TypeError(f"prompt_config must be a dict or AnpromptPromptConfig, got {type(prompt_config).__name__}")
        self.prompt_config = prompt_config.to_dict()
        self.class_sentences = check_class_sentences(class_sentences or {})
        if use_learnable_context:
            raise ValueError("ANPrompt prompts the towers' layers; it has no CoOp context (use_learnable_context)")
        super().__init__(
            clip_config=clip_config, template=template, use_learnable_context=False, n_ctx=n_ctx, ctx_init=ctx_init,
            max_text_length=max_text_length, base_model_name_or_path=base_model_name_or_path, **kwargs,
        )

    @property
    def prompts(self) -> AnpromptPromptConfig:
        """The prompt settings as a dataclass."""
        return AnpromptPromptConfig.from_dict(self.prompt_config)


def check_class_sentences(sentences: dict) -> dict:
    if not isinstance(sentences, dict):
        raise TypeError(f"class_sentences must be a dict, got {type(sentences).__name__}")
    for name, entry in sentences.items():
        if not isinstance(entry, dict) or set(entry) != {"main", "noise"}:
            raise ValueError(f"class_sentences[{name!r}] must be {{'main': [...], 'noise': [...]}}, got {entry!r}")
        for kind in ("main", "noise"):
            value = entry[kind]
            if not isinstance(value, list) or not value or not all(isinstance(s, str) and s.strip() for s in value):
                raise ValueError(f"class_sentences[{name!r}][{kind!r}] must be a non-empty list of sentences")
    return {name: {"main": list(e["main"]), "noise": list(e["noise"])} for name, e in sentences.items()}


__all__ = [
    "AnpromptConfig", "AnpromptPromptConfig", "EVAL_LOGITS", "SECOND_LOGITS", "check_class_sentences",
    "default_prompt_layers",
]
