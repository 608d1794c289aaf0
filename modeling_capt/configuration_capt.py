"""Configuration of CAPT (Confusion-Aware Prompt Tuning) models: the adapter settings on top of `PromptCLIPConfig`.

This file ships to the Hub as remote code: it imports only the standard library, torch and transformers.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from transformers import CLIPConfig

from .configuration_prompt_clip import DEFAULT_TEMPLATE, PromptCLIPConfig


DIFF_MANNER_PEFT_TYPE = "CAPT_DIFF_MANNER"


#: The Diff-Manner adapter's branches (paper Table 10): CLS-to-patch attention, depthwise convolution, or both.
ADAPTER_BRANCHES = ("global", "local", "both")

@dataclass
class CaptAdapterConfig:
    """PEFT-shaped configuration of the Diff-Manner adapters and of the MGDE layer.

    The field names and the on-disk layout (`adapter_config.json` + `adapter_model.safetensors`, with
    `base_model_name_or_path`) follow PEFT, so the export reads like any PEFT adapter. PEFT's `PeftType`
    enum is closed to third-party methods, so this class does not subclass `peft.PeftConfig`.

    Args:
        target_modules (`str` or `list[str]`, *optional*):
            Which vision encoder layers to wrap, named relative to the vision transformer
            (`encoder.layers.<i>`). A string is a regular expression that must match the whole name; a list
            matches names that end with one of its entries. `None` selects every encoder layer, then filtered
            by `layers_to_transform`.
        layers_to_transform (`int` or `list[int]`, *optional*, defaults to `[-2, -1]`):
            Layer indices to adapt among the selected ones. Negative indices count from the last layer, so
            the default adapts the last two layers of any depth. `None` keeps every selected layer.
        adapter_branches (`str`, *optional*, defaults to `"both"`):
            `"global"` (CLS-to-patch attention), `"local"` (depthwise 3x3 convolution on the patch grid) or
            `"both"` (paper Table 10). The last encoder layer's patch tokens are never read (the classifier pools the
            CLS token), so its adapter skips the patch update: there the local branch has no effect, and `"local"`
            with the last layer selected is an error rather than an inert adapter.
        use_adapters (`bool`, *optional*, defaults to `True`):
            Whether the Diff-Manner adapters are added at all. The paper places them in the Sample Confusion Miner, so
            training with `--no_use_sam` builds the model without them (MGDE, if used, stays).
        adapter_num_heads (`int`, *optional*, defaults to 4):
            Heads of the global branch's attention. Must divide the vision hidden size.
        alpha_scale (`float`, *optional*, defaults to 5.0):
            `s` in `alpha = s * c ** gamma` (paper Appendix F).
        alpha_gamma (`float`, *optional*, defaults to 0.5):
            `gamma` in `alpha = s * c ** gamma`.
        use_mgde (`bool`, *optional*, defaults to `True`):
            Whether the Multi-Granularity Discrepancy Expert refines the pooled image feature.
        mgde_top_k (`int`, *optional*, defaults to 2):
            Experts routed per sample (of three: sample, commonality, difference).
        mgde_num_clusters (`int`, *optional*, defaults to 8):
            K-means centres per semantic expert (capped by the number of prompts).
        mgde_router_noise_std (`float`, *optional*, defaults to 1.0):
            Standard deviation of the Gaussian noise added to the router logits in training.
        mgde_expert_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on the expert inputs in training.
        base_model_name_or_path (`str`, *optional*):
            The CLIP checkpoint the adapters were trained on.
    """

    peft_type: str = field(default=DIFF_MANNER_PEFT_TYPE, metadata={"help": "Adapter family tag (informational)."})
    task_type: str | None = field(default="IMAGE_CLASSIFICATION", metadata={"help": "PEFT-style task tag."})
    target_modules: str | list[str] | None = field(
        default=None, metadata={"help": "Regex (full match) or list (suffix match) of vision encoder layer names."}
    )
    layers_to_transform: int | list[int] | None = field(
        default_factory=lambda: [-2, -1], metadata={"help": "Layer indices to adapt; negative counts from the end."}
    )
    adapter_branches: str = field(default="both", metadata={"help": "global, local or both."})
    use_adapters: bool = field(default=True, metadata={"help": "Add the Diff-Manner adapters."})
    adapter_num_heads: int = field(default=4, metadata={"help": "Heads of the global branch attention."})
    alpha_scale: float = field(default=5.0, metadata={"help": "s in alpha = s * c ** gamma."})
    alpha_gamma: float = field(default=0.5, metadata={"help": "gamma in alpha = s * c ** gamma."})
    use_mgde: bool = field(default=True, metadata={"help": "Add the Multi-Granularity Discrepancy Expert."})
    mgde_top_k: int = field(default=2, metadata={"help": "Experts routed per sample."})
    mgde_num_clusters: int = field(default=8, metadata={"help": "K-means centres per semantic expert."})
    mgde_router_noise_std: float = field(default=1.0, metadata={"help": "Router logit noise in training."})
    mgde_expert_dropout: float = field(default=0.1, metadata={"help": "Expert input dropout in training."})
    base_model_name_or_path: str | None = field(default=None, metadata={"help": "The CLIP this adapter is for."})

    def __post_init__(self):
        if self.adapter_branches not in ADAPTER_BRANCHES:
            raise ValueError(f"adapter_branches must be 'global', 'local' or 'both', got {self.adapter_branches!r}")
        if isinstance(self.layers_to_transform, int):
            self.layers_to_transform = [self.layers_to_transform]
        if self.layers_to_transform is not None and not all(isinstance(i, int) for i in self.layers_to_transform):
            raise ValueError(f"layers_to_transform must be integers, got {self.layers_to_transform!r}")
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as err:
                raise ValueError(f"target_modules is not a valid regular expression: {err}") from None
        for name in ("alpha_scale", "alpha_gamma", "mgde_router_noise_std", "mgde_expert_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        for name in ("mgde_top_k", "mgde_num_clusters"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if not 1 <= self.mgde_top_k <= 3:
            raise ValueError(f"mgde_top_k must be between 1 and 3 (three experts), got {self.mgde_top_k!r}")
        if self.mgde_num_clusters < 1:
            raise ValueError(f"mgde_num_clusters must be positive, got {self.mgde_num_clusters!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CaptAdapterConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown CaptAdapterConfig fields: {unknown}")
        return cls(**data)

    def select_layers(self, num_layers: int) -> list[int]:
        """Indices of the encoder layers (of `num_layers`) this config adapts, sorted."""
        names = [f"encoder.layers.{i}" for i in range(num_layers)]
        if self.target_modules is None:
            chosen = list(range(num_layers))
        elif isinstance(self.target_modules, str):
            chosen = [i for i, n in enumerate(names) if re.fullmatch(self.target_modules, n)]
        else:
            chosen = [i for i, n in enumerate(names) if any(n == t or n.endswith("." + t) for t in self.target_modules)]
        if self.layers_to_transform is not None:
            wanted = set()
            for index in self.layers_to_transform:
                if not -num_layers <= index < num_layers:
                    raise ValueError(f"layers_to_transform index {index} is out of range for {num_layers} layers")
                wanted.add(index % num_layers)
            chosen = [i for i in chosen if i in wanted]
        if not chosen:
            raise ValueError(
                f"The adapter config selects no vision encoder layer (target_modules={self.target_modules!r}, "
                f"layers_to_transform={self.layers_to_transform!r}, {num_layers} layers)"
            )
        if self.adapter_branches == "local" and num_layers - 1 in chosen:
            raise ValueError(
                f"adapter_branches='local' on the last encoder layer ({num_layers - 1}) would be inert: nothing reads "
                "that layer's patch tokens, so its patch update is skipped. Adapt earlier layers (e.g. "
                "layers_to_transform=[-3, -2]) or use 'both' / 'global'."
            )
        return sorted(chosen)


class CaptConfig(PromptCLIPConfig):
    r"""Configuration of a CAPT model: a [`PromptCLIPConfig`] (frozen CLIP, class prompts, optional CoOp context) plus
    the Diff-Manner adapters and the MGDE layer.

    Args:
        clip_config (`dict` or `CLIPConfig`, *optional*):
            Configuration of the wrapped CLIP model. Defaults to `CLIPConfig()`.
        template (`str`, *optional*, defaults to `"a photo of a {}."`):
            Hand-crafted prompt template; `{}` is replaced by each class name.
        use_learnable_context (`bool`, *optional*, defaults to `False`):
            CoOp-style learnable text context shared by all classes.
        n_ctx (`int`, *optional*, defaults to 4):
            Number of learnable context tokens. When `ctx_init` is set, it must be the number of tokens `ctx_init`
            tokenises to (building the model raises a `ValueError` naming the right value otherwise).
        ctx_init (`str`, *optional*, defaults to `"a photo of a"`):
            Words whose token embeddings initialise the context; `None` draws them from N(0, 0.02).
        adapter_config (`dict` or `CaptAdapterConfig`, *optional*):
            Diff-Manner adapters and MGDE. `None` means none: the model is zero-shot CLIP or CoOp, exactly as a
            [`PromptCLIPConfig`] with the same other fields.
        max_text_length (`int`, *optional*):
            Length the class prompts are padded to, at most (and by default) the text encoder's maximum positions.
        base_model_name_or_path (`str`, *optional*):
            Hub id or path of the CLIP checkpoint this model was built from.
        id2label (`dict[int, str]`):
            The class names, in label order.

    Example:

    ```python
    >>> from transformers import CLIPConfig
    >>> from modeling_capt import CaptConfig, CaptForImageClassification
    >>> config = CaptConfig(clip_config=CLIPConfig(), id2label={0: "cat", 1: "dog"})
    >>> model = CaptForImageClassification(config)
    ```"""

    model_type = "capt"

    def __init__(
        self,
        clip_config: dict | CLIPConfig | None = None,
        template: str = DEFAULT_TEMPLATE,
        use_learnable_context: bool = False,
        n_ctx: int = 4,
        ctx_init: str | None = "a photo of a",
        adapter_config: dict | CaptAdapterConfig | None = None,
        max_text_length: int | None = None,
        base_model_name_or_path: str | None = None,
        **kwargs,
    ):
        if isinstance(adapter_config, CaptAdapterConfig):
            adapter_config = adapter_config.to_dict()
        elif adapter_config is not None:
            if not isinstance(adapter_config, dict):
                raise TypeError(f"adapter_config must be a dict or CaptAdapterConfig, got {type(adapter_config).__name__}")
            adapter_config = CaptAdapterConfig.from_dict(adapter_config).to_dict()  # validates
        self.adapter_config = adapter_config
        super().__init__(
            clip_config=clip_config,
            template=template,
            use_learnable_context=use_learnable_context,
            n_ctx=n_ctx,
            ctx_init=ctx_init,
            max_text_length=max_text_length,
            base_model_name_or_path=base_model_name_or_path,
            **kwargs,
        )

    @property
    def adapter(self) -> CaptAdapterConfig | None:
        """The adapter settings as a dataclass (`None` when the model has no adapters)."""
        return None if self.adapter_config is None else CaptAdapterConfig.from_dict(self.adapter_config)


__all__ = ["CaptAdapterConfig", "CaptConfig", "DEFAULT_TEMPLATE"]
