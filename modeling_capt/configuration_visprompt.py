"""Configuration of VisPrompt models: image-conditioned CoOp context (cross-attention, FiLM gate, FFN) on top of
`PromptCLIPConfig`.

This file ships to the Hub as remote code: it imports only the standard library, torch and transformers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from transformers import CLIPConfig

from .configuration_prompt_clip import DEFAULT_TEMPLATE, PromptCLIPConfig, PromptContextConfig


#: What the context attends to: every final vision token, or the pooled image feature only.
IMAGE_TOKENS = ("tokens", "global")
#: FiLM parameters per context token, or one set per image (from the mean attention output).
FILM_MODES = ("tokenwise", "global")
#: How the modulated context enters: `C + g (C_bar - C)` (interp) or `C + g C_bar` (add).
FILM_UPDATES = ("interp", "add")


@dataclass
class VisPromptContextConfig(PromptContextConfig):
    """[`PromptContextConfig`] with VisPrompt's defaults: M = 16 context tokens drawn from N(0, 0.02).

    Args:
        n_ctx (`int`, *optional*, defaults to 16):
            Number of learnable context tokens.
        ctx_init (`str`, *optional*):
            Words initialising the context; `None` (default) draws it from N(0, 0.02).
    """

    n_ctx: int = field(default=16, metadata={"help": "Number of learnable context tokens (the paper's M = 16)."})
    ctx_init: str | None = field(
        default=None, metadata={"help": "Words initialising the context; None (default) draws it from N(0, 0.02)."}
    )


@dataclass
class VisPromptGuidanceConfig:
    """PEFT-style settings of VisPrompt's image guidance of the context (validated here, once).

    Args:
        image_guidance (`bool`, *optional*, defaults to `True`):
            Condition the context on the image. `False` is plain CoOp's shared context (with VisPrompt's training and
            `noisy_loss="mae"`, that is NLPrompt).
        image_tokens (`str`, *optional*, defaults to `"tokens"`):
            The image evidence: `"tokens"` (every final vision token through `post_layernorm` and the visual
            projection) or `"global"` (the pooled image feature only, the released snapshot's behaviour).
        num_attention_heads (`int`, *optional*, defaults to 8):
            Heads of the context-over-image cross-attention; must divide the text width.
        attention_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on the cross-attention weights.
        use_film (`bool`, *optional*, defaults to `True`):
            Modulate the context with FiLM (`(1 + gamma) LN(C) + beta`); `False` adds the attention output instead
            (`C_bar = A`, the "image guidance without FiLM" ablation).
        film_mode (`str`, *optional*, defaults to `"tokenwise"`):
            `"tokenwise"` (gamma, beta and the gate per context token) or `"global"` (one set per image, from the
            mean of the attention output over the context tokens).
        film_update (`str`, *optional*, defaults to `"interp"`):
            `"interp"`: `C' = C + g (C_bar - C)`; `"add"`: `C' = C + g C_bar`.
        use_gate (`bool`, *optional*, defaults to `True`):
            Learn the gate `g = sigmoid(w A + b)`; `False` fixes `g = 1` (the "FiLM without gate" ablation).
        use_ffn (`bool`, *optional*, defaults to `True`):
            Refine the context with a residual FFN (`C_hat = C' + FFN(LN(C'))`). Its output layer starts at zero.
        ffn_dim (`int`, *optional*):
            The FFN's hidden size; defaults to 4 x the text width (2048 for ViT-B/16's 512).
        ffn_dropout (`float`, *optional*, defaults to 0.1):
            Dropout inside the FFN.
        text_chunk_size (`int`, *optional*, defaults to 256):
            Most text-encoder sequences per call: a batch of `B` images runs `text_chunk_size // B` classes at a time.
        checkpoint_text_chunks (`bool`, *optional*, defaults to `True`):
            Recompute each chunk's text-encoder activations in the backward pass (activation checkpointing), so a
            training step's memory is bounded by one chunk, not by `B x K` sequences.

    Example:

    ```python
    >>> VisPromptGuidanceConfig(image_tokens="global", use_gate=False).film_mode
    'tokenwise'
    ```"""

    image_guidance: bool = field(default=True, metadata={"help": "Condition the context on the image (False: CoOp)."})
    image_tokens: str = field(default="tokens", metadata={"help": "tokens (all vision tokens) or global (pooled)."})
    num_attention_heads: int = field(default=8, metadata={"help": "Heads of the context-over-image attention."})
    attention_dropout: float = field(default=0.1, metadata={"help": "Dropout on the cross-attention weights."})
    use_film: bool = field(default=True, metadata={"help": "FiLM-modulate the context (False: add the attention)."})
    film_mode: str = field(default="tokenwise", metadata={"help": "tokenwise or global FiLM parameters."})
    film_update: str = field(default="interp", metadata={"help": "interp: C + g(C_bar - C); add: C + g C_bar."})
    use_gate: bool = field(default=True, metadata={"help": "Learn the gate g (False: g = 1)."})
    use_ffn: bool = field(default=True, metadata={"help": "Residual FFN on the modulated context."})
    ffn_dim: int | None = field(default=None, metadata={"help": "FFN hidden size (default: 4 x text width)."})
    ffn_dropout: float = field(default=0.1, metadata={"help": "Dropout inside the FFN."})
    text_chunk_size: int = field(default=256, metadata={"help": "Most text-encoder sequences per call."})
    checkpoint_text_chunks: bool = field(
        default=True, metadata={"help": "Recompute text-encoder chunks in backward (bounded memory)."}
    )

    def __post_init__(self):
        for name in ("image_guidance", "use_film", "use_gate", "use_ffn", "checkpoint_text_chunks"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name, choices in (("image_tokens", IMAGE_TOKENS), ("film_mode", FILM_MODES),
                              ("film_update", FILM_UPDATES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("num_attention_heads", "text_chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.ffn_dim is not None and (not isinstance(self.ffn_dim, int) or isinstance(self.ffn_dim, bool)
                                         or self.ffn_dim < 1):
            raise ValueError(f"ffn_dim must be a positive integer or None, got {self.ffn_dim!r}")
        for name in ("attention_dropout", "ffn_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VisPromptGuidanceConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown VisPromptGuidanceConfig fields: {unknown}")
        return cls(**data)


class VisPromptConfig(PromptCLIPConfig):
    r"""Configuration of a VisPrompt model: a [`PromptCLIPConfig`] with a learnable context (always on) that each image
    conditions through cross-attention, a FiLM gate and an FFN ([`VisPromptGuidanceConfig`]).

    Args:
        clip_config (`dict` or `CLIPConfig`, *optional*):
            Configuration of the wrapped CLIP model. Defaults to `CLIPConfig()`.
        template (`str`, *optional*, defaults to `"a photo of a {}."`):
            Kept for the zero-shot pipeline's texts; the class prompts read `"<context> <class>."`.
        n_ctx (`int`, *optional*, defaults to 16):
            Number of context tokens (the paper's M = 16).
        ctx_init (`str`, *optional*):
            Words initialising the context; `None` (default) draws it from N(0, 0.02), as the paper does.
        guidance_config (`dict` or `VisPromptGuidanceConfig`, *optional*):
            The image guidance settings; defaults to `VisPromptGuidanceConfig()`.
        max_text_length (`int`, *optional*):
            Length the class prompts are padded to, at most (and by default) the text encoder's maximum positions.
        base_model_name_or_path (`str`, *optional*):
            Hub id or path of the CLIP checkpoint this model was built from.
        id2label (`dict[int, str]`):
            The class names, in label order.

    Example:

    ```python
    >>> from transformers import CLIPConfig
    >>> from modeling_capt import VisPromptConfig, VisPromptForImageClassification
    >>> config = VisPromptConfig(clip_config=CLIPConfig(), id2label={0: "cat", 1: "dog"})
    >>> model = VisPromptForImageClassification(config)
    ```"""

    model_type = "visprompt"

    def __init__(
        self,
        clip_config: dict | CLIPConfig | None = None,
        template: str = DEFAULT_TEMPLATE,
        use_learnable_context: bool = True,
        n_ctx: int = 16,
        ctx_init: str | None = None,
        guidance_config: dict | VisPromptGuidanceConfig | None = None,
        max_text_length: int | None = None,
        base_model_name_or_path: str | None = None,
        **kwargs,
    ):
        if use_learnable_context is not True:
            raise ValueError("VisPrompt conditions a learnable context: use_learnable_context must be True")
        if guidance_config is None:
            guidance_config = VisPromptGuidanceConfig()
        elif isinstance(guidance_config, dict):
            guidance_config = VisPromptGuidanceConfig.from_dict(guidance_config)
        elif not isinstance(guidance_config, VisPromptGuidanceConfig):
            raise TypeError(f"guidance_config must be a dict or VisPromptGuidanceConfig, got "
                            f"{type(guidance_config).__name__}")
        self.guidance_config = guidance_config.to_dict()
        super().__init__(
            clip_config=clip_config,
            template=template,
            use_learnable_context=True,
            n_ctx=n_ctx,
            ctx_init=ctx_init,
            max_text_length=max_text_length,
            base_model_name_or_path=base_model_name_or_path,
            **kwargs,
        )

    @property
    def guidance(self) -> VisPromptGuidanceConfig:
        """The image guidance settings as a dataclass."""
        return VisPromptGuidanceConfig.from_dict(self.guidance_config)


__all__ = ["FILM_MODES", "FILM_UPDATES", "IMAGE_TOKENS", "VisPromptConfig", "VisPromptContextConfig", "VisPromptGuidanceConfig"]
