"""Configuration of prompt-learning CLIP models: a frozen CLIP, its class prompts and an optional CoOp context.

Every method of this package (zero-shot CLIP, CoOp, CAPT, ...) is configured by [`PromptCLIPConfig`] or a subclass of
it. This file ships to the Hub as remote code: it imports only the standard library, torch and transformers.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers import CLIPConfig, PretrainedConfig


DEFAULT_TEMPLATE = "a photo of a {}."



def check_template(template) -> str:
    """Raise a `ValueError` unless `template` is a prompt template: a string with exactly one `{}` (the class name)."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"template must be a string with exactly one '{{}}' placeholder, got {template!r}")
    return template

@dataclass
class PromptContextConfig:
    """PEFT-style settings of the CoOp learnable text context (validated here, once, for every config that has one).

    Args:
        n_ctx (`int`, *optional*, defaults to 4):
            Number of learnable context tokens, placed right after the start token. When `ctx_init` is set it must be
            the number of tokens `ctx_init` tokenises to (building the model raises a `ValueError` naming the right
            value otherwise: the tokenizer is needed to tell).
        ctx_init (`str`, *optional*, defaults to `"a photo of a"`):
            Words whose token embeddings initialise the context; `None` draws the context from N(0, 0.02).

    Example:

    ```python
    >>> PromptContextConfig(n_ctx=4, ctx_init="a photo of a")
    PromptContextConfig(n_ctx=4, ctx_init='a photo of a')
    ```"""

    n_ctx: int = field(default=4, metadata={"help": "Number of learnable context tokens after the start token."})
    ctx_init: str | None = field(
        default="a photo of a", metadata={"help": "Words initialising the context; None draws it from N(0, 0.02)."}
    )

    def __post_init__(self):
        if not isinstance(self.n_ctx, int) or isinstance(self.n_ctx, bool) or self.n_ctx < 1:
            raise ValueError(f"n_ctx must be a positive integer, got {self.n_ctx!r}")
        if self.ctx_init is not None and (not isinstance(self.ctx_init, str) or not self.ctx_init.strip()):
            raise ValueError(f"ctx_init must be a non-empty string or None, got {self.ctx_init!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PromptCLIPConfig(PretrainedConfig):
    r"""Configuration of a prompt-learning CLIP: a frozen CLIP, its class prompts, and an optional CoOp context.

    Args:
        clip_config (`dict` or `CLIPConfig`, *optional*):
            Configuration of the wrapped CLIP model. Defaults to `CLIPConfig()`.
        template (`str`, *optional*, defaults to `"a photo of a {}."`):
            Hand-crafted prompt template; `{}` is replaced by each class name.
        use_learnable_context (`bool`, *optional*, defaults to `False`):
            CoOp-style learnable text context shared by all classes (replaces the template: the prompts read
            `"<context> <class>."`).
        n_ctx (`int`, *optional*, defaults to 4):
            Number of learnable context tokens (see [`PromptContextConfig`]).
        ctx_init (`str`, *optional*, defaults to `"a photo of a"`):
            Words whose token embeddings initialise the context; `None` draws them from N(0, 0.02).
        max_text_length (`int`, *optional*):
            Length the class prompts are padded to, at most (and by default) the text encoder's maximum positions.
        base_model_name_or_path (`str`, *optional*):
            Hub id or path of the CLIP checkpoint this model was built from.
        id2label (`dict[int, str]`):
            The class names, in label order.

    Example:

    ```python
    >>> from transformers import CLIPConfig
    >>> from modeling_capt import PromptCLIPConfig, PromptCLIPForImageClassification
    >>> config = PromptCLIPConfig(clip_config=CLIPConfig(), id2label={0: "cat", 1: "dog"}, use_learnable_context=True)
    >>> model = PromptCLIPForImageClassification(config)
    ```"""

    model_type = "prompt_clip"

    def __init__(
        self,
        clip_config: dict | CLIPConfig | None = None,
        template: str = DEFAULT_TEMPLATE,
        use_learnable_context: bool = False,
        n_ctx: int = 4,
        ctx_init: str | None = "a photo of a",
        max_text_length: int | None = None,
        base_model_name_or_path: str | None = None,
        **kwargs,
    ):
        if clip_config is None:
            clip_config = CLIPConfig()
        elif isinstance(clip_config, dict):
            clip_config = CLIPConfig(**copy.deepcopy(clip_config))
        elif not isinstance(clip_config, CLIPConfig):
            raise TypeError(f"clip_config must be a dict or a CLIPConfig, got {type(clip_config).__name__}")
        check_template(template)
        if not isinstance(use_learnable_context, bool):
            raise TypeError(f"use_learnable_context must be a bool, got {type(use_learnable_context).__name__}")
        PromptContextConfig(n_ctx=n_ctx, ctx_init=ctx_init)  # validates
        if max_text_length is not None and (not isinstance(max_text_length, int) or max_text_length < 2):
            raise ValueError(f"max_text_length must be an integer >= 2, got {max_text_length!r}")
        positions = clip_config.text_config.max_position_embeddings
        if max_text_length is not None and max_text_length > positions:
            raise ValueError(
                f"max_text_length={max_text_length} exceeds the text encoder's max_position_embeddings ({positions})"
            )

        self.clip_config = clip_config
        self.template = template
        self.use_learnable_context = use_learnable_context
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        self.max_text_length = max_text_length
        self.base_model_name_or_path = base_model_name_or_path
        super().__init__(**kwargs)

    @property
    def prompt_context(self) -> PromptContextConfig | None:
        """The CoOp context settings (`None` when the context is not learnable)."""
        if not self.use_learnable_context:
            return None
        return PromptContextConfig(n_ctx=self.n_ctx, ctx_init=self.ctx_init)

    @property
    def class_names(self) -> list[str]:
        return [self.id2label[i] for i in range(len(self.id2label))]

    @property
    def text_length(self) -> int:
        return self.max_text_length or self.clip_config.text_config.max_position_embeddings

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        if isinstance(self.clip_config, PretrainedConfig):
            output["clip_config"] = self.clip_config.to_dict()
        return output


__all__ = ["DEFAULT_TEMPLATE", "PromptCLIPConfig", "PromptContextConfig", "check_template"]
