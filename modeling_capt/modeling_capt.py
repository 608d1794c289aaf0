"""CAPT models: a [`PromptCLIPModel`] (frozen CLIP, class prompts, optional CoOp context) with Diff-Manner adapters
on chosen vision encoder layers and the Multi-Granularity Discrepancy Expert (MGDE) on the pooled image feature.

This file ships to the Hub as remote code: it imports only the standard library, torch and transformers, and
reaches the other modeling files by relative imports so `save_pretrained` copies them alongside.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from transformers import CLIPModel

from .configuration_capt import CaptAdapterConfig, CaptConfig
from .diff_manner import CaptAdaptedLayer, inject_diff_manner_adapters
from .mgde import CaptMGDE
from .modeling_prompt_clip import (
    PromptCLIPImageClassifierOutput,
    PromptCLIPModel,
    PromptCLIPPreTrainedModel,
    load_image_processor,
)



@dataclass
class CaptImageClassifierOutput(PromptCLIPImageClassifierOutput):
    """Output of [`CaptModel`] and [`CaptForImageClassification`]: a [`PromptCLIPImageClassifierOutput`] whose
    `image_embeds` went through the adapters and MGDE, and whose `aux_loss` is MGDE's load-balancing loss (when the
    model has MGDE and is training)."""


class CaptPreTrainedModel(PromptCLIPPreTrainedModel):
    """Class-level policy shared by every CAPT model."""

    config_class = CaptConfig
    config: CaptConfig
    base_model_prefix = "capt"
    _no_split_modules = ["CLIPEncoderLayer", "CaptAdaptedLayer"]
    _auto_map = {
        "AutoConfig": "configuration_capt.CaptConfig",
        "AutoModel": "modeling_capt.CaptModel",
        "AutoModelForImageClassification": "modeling_capt.CaptForImageClassification",
        "AutoModelForZeroShotImageClassification": "modeling_capt.CaptForZeroShotImageClassification",
    }


class CaptModel(CaptPreTrainedModel, PromptCLIPModel):
    """A [`PromptCLIPModel`] with CAPT's trainable parts: Diff-Manner adapters on the vision encoder layers and the
    MGDE layer on the pooled feature (`config.adapter_config`), besides the optional CoOp context. Everything of CLIP
    itself stays frozen. Without `adapter_config` the model is zero-shot CLIP or CoOp, exactly as the base model.
    """

    output_class = CaptImageClassifierOutput

    def _build_method_modules(self, config: CaptConfig) -> None:
        self.adapted_layer_names: list[str] = []
        self.mgde = None
        adapter = config.adapter
        if adapter is not None:
            if adapter.use_adapters:
                self.adapted_layer_names = inject_diff_manner_adapters(self.clip.vision_model, adapter)
            if adapter.use_mgde:
                self.mgde = CaptMGDE.from_configs(config.clip_config, adapter)

    def trainable_module_names(self) -> list[str]:
        """The CoOp context (if any), each adapted layer's `adapter` (with its running-alpha buffers) and MGDE."""
        names = super().trainable_module_names()
        names += [f"clip.vision_model.{name}.adapter" for name in self.adapted_layer_names]
        if self.mgde is not None:
            names.append("mgde")
        return names

    # ------------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_clip(
        cls,
        clip: CLIPModel | str | os.PathLike,
        class_names: list[str],
        template: str | None = None,
        tokenizer=None,
        image_processor=None,
        **config_overrides,
    ) -> "CaptModel":
        """Build a CAPT model around a CLIP checkpoint (see [`PromptCLIPModel.from_clip`]); `config_overrides` are
        [`CaptConfig`] fields (`use_learnable_context`, `n_ctx`, `adapter_config`, ...). The adapters and MGDE are
        initialised from the CLIP weights."""
        return super().from_clip(clip, class_names, template, tokenizer, image_processor, **config_overrides)

    @classmethod
    def _prepare_config_overrides(cls, overrides: dict) -> dict:
        adapter = overrides.get("adapter_config")
        if isinstance(adapter, CaptAdapterConfig):
            adapter = adapter.to_dict()
        if adapter is not None:
            overrides["adapter_config"] = dict(adapter, base_model_name_or_path=overrides["base_model_name_or_path"])
        return overrides

    def _init_from_clip_weights(self) -> None:
        if self.mgde is not None:
            self.mgde.init_from_clip(self.clip)

    # ------------------------------------------------------------------------------------------------ image side
    def encode_image_hidden(
        self,
        pixel_values: torch.Tensor | None = None,
        alpha: torch.Tensor | None = None,
        hidden_states: torch.Tensor | None = None,
        start_layer: int = 0,
        end_layer: int | None = None,
        cls_only: bool = False,
    ) -> torch.Tensor:
        """[`PromptCLIPModel.encode_image_hidden`] with the adapters' per-sample `alpha` (their running mean when
        omitted). `cls_only=True` lets an adapter on the last layer skip its patch update: only the CLS token is read
        after it."""
        return super().encode_image_hidden(
            pixel_values, hidden_states=hidden_states, start_layer=start_layer, end_layer=end_layer, cls_only=cls_only,
            alpha=alpha,
        )

    def _run_vision_layer(self, index, hidden_states, cls_only=False, alpha=None):
        layer = self._vision_layers()[index]
        if isinstance(layer, CaptAdaptedLayer):
            return layer(hidden_states, None, alpha=alpha, update_patches=not cls_only)
        return layer(hidden_states, None)

    def pool_image_hidden(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The CLS token refined by MGDE (when the model has it), and MGDE's load-balancing loss in training."""
        pooled = hidden_states[:, 0]
        if self.mgde is None:
            return pooled, None
        return self.mgde(pooled)

    def get_image_features(self, pixel_values: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        """Projected (unnormalised) image features `(batch, projection_dim)` through adapters and MGDE."""
        return super().get_image_features(pixel_values, alpha=alpha)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        alpha: torch.Tensor | None = None,
        hidden_states: torch.Tensor | None = None,
        start_layer: int = 0,
        text_hidden_states: torch.Tensor | None = None,
        text_start_layer: int = 0,
        **kwargs,
    ) -> CaptImageClassifierOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Images, as the image processor prepares them.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class indices; a cross-entropy `loss` is returned when given.
            input_ids, attention_mask (`torch.LongTensor` of shape `(num_texts, sequence_length)`, *optional*):
                Score against these texts instead of the class prompts (the zero-shot pipeline's path).
            alpha (`torch.FloatTensor` of shape `(batch_size,)`, *optional*):
                Per-sample adapter weight (CAPT training); the running mean is used when omitted.
            hidden_states, start_layer (*optional*):
                Resume from cached hidden states entering vision layer `start_layer` (frozen-prefix cache).
            text_hidden_states, text_start_layer (*optional*):
                Resume the class prompts from cached hidden states entering text layer `text_start_layer`.
        """
        return self._classify(
            pixel_values, labels, input_ids, attention_mask, hidden_states, start_layer, text_hidden_states,
            text_start_layer, alpha=alpha,
        )

    # ------------------------------------------------------------------------------------------------ CAPT parts
    def init_semantic_experts(self, commonality_centres: torch.Tensor, difference_centres: torch.Tensor) -> None:
        """Anchor MGDE's commonality and difference experts on the k-means centres of the semantic prompt features,
        each `(num_clusters, projection_dim)` (`config.adapter_config["mgde_num_clusters"]` rows)."""
        if self.mgde is None:
            raise ValueError("This model has no MGDE layer (adapter_config.use_mgde is off)")
        device = self.clip.visual_projection.weight.device
        self.mgde.set_centres(commonality_centres.to(device), difference_centres.to(device))

    def update_running_alpha(self, alpha: torch.Tensor) -> None:
        """Fold a batch of training alphas into each adapted layer's running mean (used at inference)."""
        for layer in self._vision_layers():
            if isinstance(layer, CaptAdaptedLayer):
                layer.update_running_alpha(alpha)

    # ------------------------------------------------------------------------------------------------ saving
    def _adapter_export_payload(self) -> dict:
        """The base model's record plus the adapter settings (PEFT-shaped: `peft_type`, `target_modules`, ...)."""
        payload = super()._adapter_export_payload()
        adapter = (self.config.adapter or CaptAdapterConfig(use_mgde=False)).to_dict()
        adapter.pop("base_model_name_or_path")  # the model's own, recorded by the base
        payload.update(adapter, has_adapters=self.config.adapter_config is not None)
        return payload

    @classmethod
    def _config_overrides_from_adapter_export(cls, payload: dict) -> dict:
        has_adapters = payload.pop("has_adapters", True)
        return {"adapter_config": CaptAdapterConfig.from_dict(payload) if has_adapters else None}


class CaptForImageClassification(CaptModel):
    """[`CaptModel`] for the `image-classification` pipeline and training: returns `loss` when `labels` are given.

    The two classes share one set of weights: a checkpoint of either loads into the other.
    """


class CaptForZeroShotImageClassification(CaptForImageClassification):
    """The same model, registered for `AutoModelForZeroShotImageClassification` (the zero-shot pipeline)."""


CaptConfig.register_for_auto_class()
CaptModel.register_for_auto_class("AutoModel")
CaptForImageClassification.register_for_auto_class("AutoModelForImageClassification")
CaptForZeroShotImageClassification.register_for_auto_class("AutoModelForZeroShotImageClassification")

__all__ = [
    "CaptForImageClassification",
    "CaptForZeroShotImageClassification",
    "CaptImageClassifierOutput",
    "CaptModel",
    "CaptPreTrainedModel",
    "load_image_processor",
]
