"""VisPrompt models: a CoOp context that each image conditions (cross-attention of the context tokens over the frozen
image tokens, a FiLM gate and an FFN), read through the frozen text encoder once per image and class.

Readings of the paper (seed 002) follow `METHODS.md` ("VisPrompt"); where this file departs from it, it says so:

- without FiLM (`use_film=False`) the attention output is added, gated: `C' = C + g A` (`film_update` applies to
  FiLM's `C_bar` only), so that an untrained model with a zero attention output is exactly CoOp;
- the FFN's output layer starts at zero, so the untrained FFN is the identity on `C'`.

This file ships to the Hub as remote code: it imports only the standard library, torch and transformers, and
reaches the other modeling files by relative imports so `save_pretrained` copies them alongside.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import CLIPModel

from .configuration_visprompt import VisPromptConfig, VisPromptGuidanceConfig
from .modeling_prompt_clip import (
    PromptCLIPImageClassifierOutput,
    PromptCLIPModel,
    PromptCLIPPreTrainedModel,
    load_image_processor,
)


@dataclass
class VisPromptImageClassifierOutput(PromptCLIPImageClassifierOutput):
    r"""Output of [`VisPromptModel`]: a [`PromptCLIPImageClassifierOutput`] whose `text_embeds` are per image
    `(batch_size, num_classes, projection_dim)` when the image guides the context, plus

    Args:
        gate (`torch.FloatTensor` of shape `(batch_size,)`, *optional*):
            The mean FiLM gate value of each image over its context tokens (`None` without image guidance).
    """

    gate: torch.FloatTensor | None = None


class VisPromptImageGuidance(nn.Module):
    """Image-conditioned context: `A = MHA(LN_ctx(C), LN_img(W_img I))`, then FiLM with a gate, then a residual FFN.

    Args:
        guidance (`VisPromptGuidanceConfig`): the options.
        text_width (`int`): the context's width (the text encoder's hidden size).
        image_width (`int`): the width of the image evidence (the joint projection size).
    """

    def __init__(self, guidance: VisPromptGuidanceConfig, text_width: int, image_width: int):
        super().__init__()
        if text_width % guidance.num_attention_heads:
            raise ValueError(f"num_attention_heads={guidance.num_attention_heads} must divide the text width "
                             f"({text_width})")
        self.guidance = guidance
        self.image_projection = nn.Linear(image_width, text_width)
        self.image_norm = nn.LayerNorm(text_width)
        self.context_norm = nn.LayerNorm(text_width)
        self.attention = nn.MultiheadAttention(text_width, guidance.num_attention_heads,
                                               dropout=guidance.attention_dropout, batch_first=True)
        if guidance.use_film:
            self.film_gamma = nn.Linear(text_width, text_width)
            self.film_beta = nn.Linear(text_width, text_width)
        self.gate = nn.Linear(text_width, 1) if guidance.use_gate else None
        if guidance.use_ffn:
            hidden = guidance.ffn_dim or 4 * text_width
            self.ffn_norm = nn.LayerNorm(text_width)
            self.ffn = nn.Sequential(nn.Linear(text_width, hidden), nn.GELU(), nn.Dropout(guidance.ffn_dropout),
                                     nn.Linear(hidden, text_width), nn.Dropout(guidance.ffn_dropout))
            nn.init.zeros_(self.ffn[3].weight)  # untrained, the FFN adds nothing: C_hat = C'
            nn.init.zeros_(self.ffn[3].bias)

    def forward(self, context: torch.Tensor, image_evidence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`context` `(n_ctx, width)`, `image_evidence` `(batch, tokens, image_width)` -> the per-image context
        `(batch, n_ctx, width)` and each image's mean gate `(batch,)`."""
        batch_size = image_evidence.shape[0]
        keys = self.image_norm(self.image_projection(image_evidence.to(self.image_projection.weight.dtype)))
        context = context.to(keys.dtype).unsqueeze(0).expand(batch_size, -1, -1)
        normed = self.context_norm(context)
        attended, _ = self.attention(normed, keys, keys, need_weights=False)
        source = attended if self.guidance.film_mode == "tokenwise" else attended.mean(dim=1, keepdim=True)
        gate = torch.sigmoid(self.gate(source)) if self.gate is not None else source.new_ones(*source.shape[:2], 1)
        if self.guidance.use_film:
            modulated = (1 + self.film_gamma(source)) * normed + self.film_beta(source)
            if self.guidance.film_update == "interp":
                updated = context + gate * (modulated - context)
            else:
                updated = context + gate * modulated
        else:
            updated = context + gate * attended
        if self.guidance.use_ffn:
            updated = updated + self.ffn(self.ffn_norm(updated))
        return updated, gate.mean(dim=(1, 2))


class VisPromptPreTrainedModel(PromptCLIPPreTrainedModel):
    """Class-level policy shared by every VisPrompt model."""

    config_class = VisPromptConfig
    config: VisPromptConfig
    base_model_prefix = "visprompt"
    _auto_map = {
        "AutoConfig": "configuration_visprompt.VisPromptConfig",
        "AutoModel": "modeling_visprompt.VisPromptModel",
        "AutoModelForImageClassification": "modeling_visprompt.VisPromptForImageClassification",
        "AutoModelForZeroShotImageClassification": "modeling_visprompt.VisPromptForZeroShotImageClassification",
    }


class VisPromptModel(VisPromptPreTrainedModel, PromptCLIPModel):
    """A [`PromptCLIPModel`] whose CoOp context each image conditions ([`VisPromptImageGuidance`]): every image gets
    its own class prompts `[SOS] C_hat_b [class] . [EOS]`, read by the frozen text encoder (`B x K` sequences, in
    chunks of `guidance.text_chunk_size`). The same forward serves training and inference (no label needed).
    Without image guidance (`guidance.image_guidance=False`) it is CoOp with a 16-token context.
    """

    output_class = VisPromptImageClassifierOutput

    def _build_method_modules(self, config: VisPromptConfig) -> None:
        guidance = config.guidance
        self.image_guidance = None
        if guidance.image_guidance:
            self.image_guidance = VisPromptImageGuidance(
                guidance, config.clip_config.text_config.hidden_size, config.clip_config.projection_dim
            )
        # the context reads every final vision token: a prefix cache must keep them all
        self.reads_only_cls_token = not (guidance.image_guidance and guidance.image_tokens == "tokens")
        self._last_gate = None

    def trainable_module_names(self) -> list[str]:
        """The context and, with image guidance, the attention, FiLM, gate and FFN."""
        names = super().trainable_module_names()
        return names + (["image_guidance"] if self.image_guidance is not None else [])

    @classmethod
    def from_clip(
        cls,
        clip: CLIPModel | str | os.PathLike,
        class_names: list[str],
        template: str | None = None,
        tokenizer=None,
        image_processor=None,
        **config_overrides,
    ) -> "VisPromptModel":
        """Build a VisPrompt model around a CLIP checkpoint (see [`PromptCLIPModel.from_clip`]); `config_overrides`
        are [`VisPromptConfig`] fields (`n_ctx`, `ctx_init`, `guidance_config`, ...)."""
        return super().from_clip(clip, class_names, template, tokenizer, image_processor, **config_overrides)

    @classmethod
    def _prepare_config_overrides(cls, overrides: dict) -> dict:
        guidance = overrides.get("guidance_config")
        if isinstance(guidance, VisPromptGuidanceConfig):
            overrides["guidance_config"] = guidance.to_dict()
        return overrides

    # ------------------------------------------------------------------------------------------------ the context
    def image_evidence(self, image_hidden_states: torch.Tensor) -> torch.Tensor:
        """What the context attends to, `(batch, tokens, projection_dim)`: every final vision token through
        `post_layernorm` and the visual projection, or (`image_tokens="global"`) the pooled feature alone."""
        if self.config.guidance.image_tokens == "global":
            return self.project_image_hidden(image_hidden_states)[0].unsqueeze(1)
        vision = self.clip.vision_model
        return self.clip.visual_projection(vision.post_layernorm(image_hidden_states))

    def image_context(self, image_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-image context `(batch, n_ctx, width)` and mean gate `(batch,)` from the last vision hidden
        states."""
        return self.image_guidance(self.prompt_context.ctx, self.image_evidence(image_hidden_states))

    def guided_class_text_features(self, context: torch.Tensor) -> torch.Tensor:
        """`(batch, num_classes, projection_dim)` L2-normalised features of each image's class prompts, `text_chunk_size`
        sequences per text-encoder call; in training each chunk is recomputed in the backward pass
        (`checkpoint_text_chunks`), so memory does not grow with the number of classes."""
        guidance = self.config.guidance
        batch_size, n_ctx, width = context.shape
        num_classes = self.class_input_ids.shape[0]
        classes_per_chunk = max(1, guidance.text_chunk_size // batch_size)
        recompute = guidance.checkpoint_text_chunks and torch.is_grad_enabled() and context.requires_grad
        chunks = []
        for start in range(0, num_classes, classes_per_chunk):
            input_ids = self.class_input_ids[start : start + classes_per_chunk]
            attention_mask = self.class_attention_mask[start : start + classes_per_chunk]
            num_chunk = input_ids.shape[0]
            # rows are image-major: row b * num_chunk + k is image b's prompt of class start + k
            row_ids = input_ids.unsqueeze(0).expand(batch_size, -1, -1).reshape(batch_size * num_chunk, -1)
            row_mask = attention_mask.unsqueeze(0).expand(batch_size, -1, -1).reshape(batch_size * num_chunk, -1)

            def encode(chunk_context, row_ids=row_ids, row_mask=row_mask, num_chunk=num_chunk):
                rows = chunk_context.unsqueeze(1).expand(-1, num_chunk, -1, -1).reshape(-1, n_ctx, width)
                return self.encode_text(row_ids, row_mask, context=rows).view(batch_size, num_chunk, -1)

            chunks.append(checkpoint(encode, context, use_reentrant=False) if recompute else encode(context))
        return F.normalize(torch.cat(chunks, dim=1), dim=-1)

    def text_embeds_for_images(
        self,
        image_hidden_states: torch.Tensor,
        text_hidden_states: torch.Tensor | None = None,
        text_start_layer: int = 0,
    ) -> torch.Tensor:
        """Per-image class text features `(batch, num_classes, projection_dim)` from the image-conditioned context
        (the shared CoOp features without image guidance)."""
        self._last_gate = None
        if self.image_guidance is None:
            return super().text_embeds_for_images(image_hidden_states, text_hidden_states, text_start_layer)
        context, self._last_gate = self.image_context(image_hidden_states)
        return self.guided_class_text_features(context)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        hidden_states: torch.Tensor | None = None,
        start_layer: int = 0,
        text_hidden_states: torch.Tensor | None = None,
        text_start_layer: int = 0,
        **kwargs,
    ) -> VisPromptImageClassifierOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Images, as the image processor prepares them.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class indices; a cross-entropy `loss` is returned when given.
            input_ids, attention_mask (`torch.LongTensor` of shape `(num_texts, sequence_length)`, *optional*):
                Score against these texts instead of the class prompts (the zero-shot pipeline's path).
            hidden_states, start_layer (*optional*):
                Resume from cached hidden states entering vision layer `start_layer` (frozen-prefix cache).
            text_hidden_states, text_start_layer (*optional*):
                Without image guidance only: resume the class prompts from cached text hidden states.
        """
        self._last_gate = None
        output = self._classify(
            pixel_values, labels, input_ids, attention_mask, hidden_states, start_layer, text_hidden_states,
            text_start_layer,
        )
        if self._last_gate is not None:
            output["gate"] = self._last_gate
        self._last_gate = None
        return output

    # ------------------------------------------------------------------------------------------------ saving
    def _adapter_export_payload(self) -> dict:
        payload = super()._adapter_export_payload()
        payload["guidance_config"] = self.config.guidance.to_dict()
        return payload

    @classmethod
    def _config_overrides_from_adapter_export(cls, payload: dict) -> dict:
        guidance = VisPromptGuidanceConfig.from_dict(payload.pop("guidance_config"))
        return {"guidance_config": guidance, **super()._config_overrides_from_adapter_export(payload)}


class VisPromptForImageClassification(VisPromptModel):
    """[`VisPromptModel`] for the `image-classification` pipeline and training: returns `loss` when `labels` are
    given. The two classes share one set of weights: a checkpoint of either loads into the other."""


class VisPromptForZeroShotImageClassification(VisPromptForImageClassification):
    """The same model, registered for `AutoModelForZeroShotImageClassification` (the zero-shot pipeline)."""


VisPromptConfig.register_for_auto_class()
VisPromptModel.register_for_auto_class("AutoModel")
VisPromptForImageClassification.register_for_auto_class("AutoModelForImageClassification")
VisPromptForZeroShotImageClassification.register_for_auto_class("AutoModelForZeroShotImageClassification")

__all__ = [
    "VisPromptForImageClassification",
    "VisPromptForZeroShotImageClassification",
    "VisPromptImageClassifierOutput",
    "VisPromptImageGuidance",
    "VisPromptModel",
    "VisPromptPreTrainedModel",
    "load_image_processor",
]
