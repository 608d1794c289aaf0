"""ANPrompt models: a [`PromptCLIPModel`] with anti-noise prompts in both towers, weak-noise text features, the
noise-resistant visual prototype (NRVPP) and the four logits of the paper (METHODS.md, "ANPrompt").

- Weak-noise features `f_w = f_m + alpha f_n` (per class: main and noise sentences through the frozen text encoder,
  L2-normalised, averaged over the sentences the run kept in `config.class_sentences`) are a buffer, one row per class.
- Noise prompts `P_w` (T, P): k-means centres of the main-sentence features of the training classes, a buffer set by
  the trainer ([`AnpromptModel.set_noise_prompts`]). Anti-noise prompts `P_a = P_c + eps P_w`, `P_c` learnable.
- Per prompted layer `l`: `P_t^l = W_t^l P_a` and `P_v^l = W_v^l P_a`, independent linears, entered through the base
  model's layer hooks: the first prompted layer of a tower inserts the `T` tokens after its first token (the text tower
  then extends its mask and shifts its EOS index), later ones replace them (vision: `beta P_v^l + (1 - beta) prev`).
- NRVPP `f_N`: the mean of the `T` prompt tokens after the last vision layer, through `post_layernorm`, the visual
  projection and a rank-`r` LoRA on it ([`AnpromptLoRA`]).
- Logits `l_A = f_v f_t^T`, `l_R = f_v f_w^T`, `l_W = f_N f_w^T` (and the code's `f_N f_t^T`), at CLIP's logit scale
  (100 for the OpenAI checkpoints); the prediction is `theta l_A + (1 - theta) l_second`.

This file ships to the Hub as remote code: it imports only the standard library, torch and transformers.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel
from transformers.utils import logging

from .configuration_anprompt import AnpromptConfig, AnpromptPromptConfig, check_class_sentences
from .modeling_prompt_clip import (
    PromptCLIPImageClassifierOutput,
    PromptCLIPModel,
    PromptCLIPPreTrainedModel,
    _check_labels,
)


logger = logging.get_logger(__name__)


@dataclass
class AnpromptImageClassifierOutput(PromptCLIPImageClassifierOutput):
    """Output of [`AnpromptModel`]: a [`PromptCLIPImageClassifierOutput`] whose `logits` are the prediction
    (`theta l_A + (1 - theta) l_second`, or `l_A` with `eval_logits="align"`) and whose `loss` is `CE(l_A, labels)`.

    Args:
        logits_align (`torch.FloatTensor` of shape `(batch_size, num_texts)`): `l_A = f_v f_t^T`.
        logits_weak_noise (`torch.FloatTensor` of shape `(batch_size, num_texts)`): `l_R = f_v f_w^T`.
        logits_nrvpp (`torch.FloatTensor` of shape `(batch_size, num_texts)`): `l_W = f_N f_w^T`.
        logits_nrvpp_text (`torch.FloatTensor` of shape `(batch_size, num_texts)`): `f_N f_t^T` (released code).
        nrvpp_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`): L2-normalised `f_N`.
        weak_noise_embeds (`torch.FloatTensor` of shape `(num_texts, projection_dim)`): L2-normalised `f_w`.
    """

    logits_align: torch.FloatTensor | None = None
    logits_weak_noise: torch.FloatTensor | None = None
    logits_nrvpp: torch.FloatTensor | None = None
    logits_nrvpp_text: torch.FloatTensor | None = None
    nrvpp_embeds: torch.FloatTensor | None = None
    weak_noise_embeds: torch.FloatTensor | None = None


class AnpromptLoRA(nn.Module):
    """The low-rank update `(alpha / r) B A x` of a frozen linear map (NRVPP's visual projection), `B` zero-initialised
    so an untrained LoRA adds nothing.

    Why not peft's LoRA: this file ships as remote code and may import only torch and transformers, and peft would
    wrap the projection for every path through it (the CLS feature `f_v` must stay CLIP's projection; only NRVPP's
    pooled prompt tokens get the update). The update is these two matrices; `A` is drawn as peft draws it
    (Kaiming-uniform with `a = sqrt(5)`), and a test compares it with peft's `LoraLayer` output.

    Args:
        in_features (`int`), out_features (`int`): the shape of the frozen linear map.
        rank (`int`): `r`.
        alpha (`float`): the scaling numerator.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaling * F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))


class AnpromptPrompts(nn.Module):
    """The learnable prompts `P_c` (T, P) and the noise prompts `P_w` (a buffer of k-means centres, zero until set);
    `forward(eps)` gives the anti-noise prompts `P_a = P_c + eps P_w`."""

    def __init__(self, num_prompts: int, dim: int):
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(num_prompts, dim))
        nn.init.normal_(self.prompts, std=0.02)
        self.register_buffer("noise_prompts", torch.zeros(num_prompts, dim))

    def forward(self, eps: float) -> torch.Tensor:
        if eps == 0:
            return self.prompts
        return self.prompts + eps * self.noise_prompts.to(self.prompts.dtype)


class AnpromptPreTrainedModel(PromptCLIPPreTrainedModel):
    """Class-level policy shared by every ANPrompt model."""

    config_class = AnpromptConfig
    config: AnpromptConfig
    base_model_prefix = "anprompt"
    # NRVPP reads the prompt tokens after the last vision layer, not only the CLS token
    reads_only_cls_token = False
    _auto_map = {
        "AutoConfig": "configuration_anprompt.AnpromptConfig",
        "AutoModel": "modeling_anprompt.AnpromptModel",
        "AutoModelForImageClassification": "modeling_anprompt.AnpromptForImageClassification",
        "AutoModelForZeroShotImageClassification": "modeling_anprompt.AnpromptForZeroShotImageClassification",
    }


class AnpromptModel(AnpromptPreTrainedModel, PromptCLIPModel):
    """A [`PromptCLIPModel`] with ANPrompt's trainable parts: the prompts `P_c`, the per-layer projections `W_t^l`,
    `W_v^l`, and NRVPP's LoRA. CLIP itself stays frozen; the text prompt is the hand-crafted template."""

    output_class = AnpromptImageClassifierOutput

    def __init__(self, config: AnpromptConfig):
        super().__init__(config)
        for slot, layer in enumerate(self.vision_prompt_layers):
            self.register_layer_hook("vision", layer, functools.partial(self._vision_prompt_hook, slot))
        for slot, layer in enumerate(self.text_prompt_layers):
            self.register_layer_hook("text", layer, functools.partial(self._text_prompt_hook, slot))
        self._warned_template_only = False

    def _build_method_modules(self, config: AnpromptConfig) -> None:
        settings = config.prompts
        clip_config = config.clip_config
        dim = clip_config.projection_dim
        text_width, vision_width = clip_config.text_config.hidden_size, clip_config.vision_config.hidden_size
        self.text_prompt_layers = settings.select_layers(clip_config.text_config.num_hidden_layers)
        self.vision_prompt_layers = settings.select_layers(clip_config.vision_config.num_hidden_layers)
        self.anti_noise_prompts = AnpromptPrompts(settings.num_prompts, dim)
        self.text_prompt_projections = nn.ModuleList(nn.Linear(dim, text_width) for _ in self.text_prompt_layers)
        self.vision_prompt_projections = nn.ModuleList(nn.Linear(dim, vision_width) for _ in self.vision_prompt_layers)
        self.nrvpp_lora = AnpromptLoRA(vision_width, dim, settings.nrvpp_lora_rank, settings.nrvpp_lora_alpha)
        self.register_buffer("weak_noise_features", torch.zeros(len(config.id2label), dim))
        self._settings = settings

    def trainable_module_names(self) -> list[str]:
        """The prompts (with the noise-prompt buffer), the per-layer prompt projections of both towers and NRVPP's
        LoRA."""
        return ["anti_noise_prompts", "text_prompt_projections", "vision_prompt_projections", "nrvpp_lora"]

    @property
    def num_prompts(self) -> int:
        return self._settings.num_prompts

    # ------------------------------------------------------------------------------------------------ prompts
    def anti_noise(self) -> torch.Tensor:
        """`P_a = P_c + eps P_w`, `(T, projection_dim)`."""
        return self.anti_noise_prompts(self._settings.anti_noise_eps)

    def _vision_prompt_hook(self, slot: int, hidden_states: torch.Tensor, state) -> torch.Tensor:
        prompts = self.vision_prompt_projections[slot](self.anti_noise()).to(hidden_states.dtype)
        prompts = prompts.unsqueeze(0).expand(hidden_states.shape[0], -1, -1)
        if state.num_inserted == 0:  # the first prompted layer (or the first one this pass reaches): insert
            return torch.cat([hidden_states[:, :1], prompts, hidden_states[:, 1:]], dim=1)
        count = self.num_prompts
        beta = self._settings.vision_beta
        if beta != 1:
            prompts = beta * prompts + (1 - beta) * hidden_states[:, 1 : 1 + count]
        return torch.cat([hidden_states[:, :1], prompts, hidden_states[:, 1 + count :]], dim=1)

    def _text_prompt_hook(self, slot: int, hidden_states: torch.Tensor, state) -> torch.Tensor:
        prompts = self.text_prompt_projections[slot](self.anti_noise()).to(hidden_states.dtype)
        prompts = prompts.unsqueeze(0).expand(hidden_states.shape[0], -1, -1)
        skip = 1 if state.num_inserted == 0 else 1 + self.num_prompts  # insert, or replace the inserted slots
        return torch.cat([hidden_states[:, :1], prompts, hidden_states[:, skip:]], dim=1)

    @torch.no_grad()
    def set_noise_prompts(self, centres: torch.Tensor) -> None:
        """Set the noise prompts `P_w` (the k-means centres of the main-sentence features), `(T, projection_dim)`."""
        buffer = self.anti_noise_prompts.noise_prompts
        if tuple(centres.shape) != tuple(buffer.shape):
            raise ValueError(f"noise prompts must be {tuple(buffer.shape)}, got {tuple(centres.shape)}")
        buffer.copy_(centres.to(buffer.device, buffer.dtype))
        self.clear_text_cache()

    # ------------------------------------------------------------------------------------------------ weak noise
    @torch.no_grad()
    def encode_sentences(self, sentences: list[str], tokenizer=None, batch_size: int = 256) -> torch.Tensor:
        """L2-normalised frozen CLIP text features of `sentences` (no prompts), `(len(sentences), projection_dim)`."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ValueError("encode_sentences needs a tokenizer")
        device = self.class_input_ids.device
        features = []
        with self.layer_hooks_disabled():
            for start in range(0, len(sentences), batch_size):
                encoded = tokenizer(sentences[start : start + batch_size], padding="max_length", truncation=True,
                                    max_length=self.config.text_length, return_tensors="pt").to(device)
                features.append(F.normalize(self.encode_text(encoded["input_ids"], encoded["attention_mask"]), dim=-1))
        return torch.cat(features).float()

    def weak_noise_from_sentences(self, main: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """`f_w = mean(f_m) + alpha mean(f_n)` from normalised sentence features `(M, P)` and `(N, P)`."""
        return main.mean(0) + self._settings.noise_alpha * noise.mean(0)

    @torch.no_grad()
    def refresh_weak_noise_features(self, tokenizer=None) -> None:
        """Recompute the weak-noise feature of every class from `config.class_sentences`; a class with no sentences
        gets its template sentence as main and noise sentence, with a warning naming it."""
        names = self.config.class_names
        sentences = self.config.class_sentences
        missing = [name for name in names if name not in sentences]
        if missing:
            logger.warning(f"No description sentences for {missing[:10]}{'...' if len(missing) > 10 else ''}: their "
                           "weak-noise features come from the template alone")
        rows = []
        for name in names:
            entry = sentences.get(name) or {"main": [self.config.template.format(name)],
                                            "noise": [self.config.template.format(name)]}
            features = self.encode_sentences(entry["main"] + entry["noise"], tokenizer)
            rows.append(self.weak_noise_from_sentences(features[: len(entry["main"])], features[len(entry["main"]) :]))
        self.weak_noise_features = torch.stack(rows).to(self.weak_noise_features.device, self.weak_noise_features.dtype)

    def set_class_names(self, class_names, tokenizer=None, template=None, class_sentences: dict | None = None) -> None:
        """[`PromptCLIPModel.set_class_names`], and the weak-noise features of the new classes: from
        `class_sentences` (`{name: {"main": [...], "noise": [...]}}`, added to `config.class_sentences`), from the
        sentences the config already holds, or, for a class with none, from the template alone (a warning names it).
        """
        if class_sentences:
            self.config.class_sentences = check_class_sentences({**self.config.class_sentences, **class_sentences})
        super().set_class_names(class_names, tokenizer=tokenizer, template=template)
        self.refresh_weak_noise_features(tokenizer)

    # ------------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_clip(cls, clip: CLIPModel | str | os.PathLike, class_names, template=None, tokenizer=None,
                  image_processor=None, **config_overrides) -> "AnpromptModel":
        """Build an ANPrompt model around a CLIP checkpoint (see [`PromptCLIPModel.from_clip`]); `config_overrides`
        are [`AnpromptConfig`] fields (`prompt_config`, `class_sentences`)."""
        return super().from_clip(clip, class_names, template, tokenizer, image_processor, **config_overrides)

    @classmethod
    def _prepare_config_overrides(cls, overrides: dict) -> dict:
        prompts = overrides.get("prompt_config")
        if isinstance(prompts, AnpromptPromptConfig):
            prompts = prompts.to_dict()
        overrides["prompt_config"] = dict(prompts or AnpromptPromptConfig().to_dict(),
                                          base_model_name_or_path=overrides["base_model_name_or_path"])
        return overrides

    # ------------------------------------------------------------------------------------------------ features
    def _has_vision_prompts(self, hidden_states: torch.Tensor) -> bool:
        return hidden_states.shape[1] == self.clip.vision_model.embeddings.num_positions + self.num_prompts

    def nrvpp_features(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """NRVPP `f_N` (unnormalised) from the last vision hidden states: the mean prompt token through
        `post_layernorm`, the visual projection and the LoRA. Without prompt tokens (hooks disabled), the CLS token's
        feature."""
        tokens = hidden_states[:, 1 : 1 + self.num_prompts] if self._has_vision_prompts(hidden_states) else \
            hidden_states[:, :1]
        pooled = self.clip.vision_model.post_layernorm(tokens.mean(1))
        return self.clip.visual_projection(pooled) + self.nrvpp_lora(pooled)

    # ------------------------------------------------------------------------------------------------ forward
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
        weak_noise_features: torch.Tensor | None = None,
        **kwargs,
    ) -> AnpromptImageClassifierOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Images, as the image processor prepares them.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class indices; `loss = CE(l_A, labels)` is returned when given.
            input_ids, attention_mask (`torch.LongTensor` of shape `(num_texts, sequence_length)`, *optional*):
                Score against these texts instead of the class prompts (the zero-shot pipeline's path); their
                weak-noise features are their own frozen features (the template alone; a warning says so once).
            hidden_states, start_layer, text_hidden_states, text_start_layer (*optional*):
                Resume either tower from its frozen-prefix cache.
            weak_noise_features (`torch.FloatTensor` of shape `(num_classes, projection_dim)`, *optional*):
                Use these `f_w` instead of the buffer (training with `fw_sampling=per_step`).
        """
        return self._classify(pixel_values, labels, input_ids, attention_mask, hidden_states, start_layer,
                              text_hidden_states, text_start_layer, weak_noise_features=weak_noise_features)

    def _classify(self, pixel_values, labels, input_ids, attention_mask, hidden_states, start_layer,
                  text_hidden_states, text_start_layer, weak_noise_features=None):
        hidden = self.encode_image_hidden(pixel_values, hidden_states=hidden_states, start_layer=start_layer)
        image_embeds = F.normalize(self.project_image_hidden(hidden)[0], dim=-1)
        nrvpp_embeds = F.normalize(self.nrvpp_features(hidden), dim=-1)
        if input_ids is not None:
            text_embeds = F.normalize(self.encode_text(input_ids, attention_mask), dim=-1)
            if not self._warned_template_only:
                logger.warning("Scoring given texts: their weak-noise features are their own frozen CLIP features "
                               "(no description sentences)")
                self._warned_template_only = True
            with self.layer_hooks_disabled():
                weak = self.encode_text(input_ids, attention_mask)
        else:
            text_embeds = self.get_class_text_features(text_hidden_states=text_hidden_states,
                                                       text_start_layer=text_start_layer)
            weak = self.weak_noise_features if weak_noise_features is None else weak_noise_features
        weak = F.normalize(weak.to(image_embeds.dtype), dim=-1)
        logits_align = self.compute_logits(image_embeds, text_embeds)
        logits_weak_noise = self.compute_logits(image_embeds, weak)
        logits_nrvpp = self.compute_logits(nrvpp_embeds, weak)
        logits_nrvpp_text = self.compute_logits(nrvpp_embeds, text_embeds)
        settings = self._settings
        second = logits_weak_noise if settings.second_logits == "weak_noise" else logits_nrvpp_text
        if settings.eval_logits == "final":
            logits = settings.theta * logits_align + (1 - settings.theta) * second
        else:
            logits = logits_align
        loss = None
        if labels is not None:
            _check_labels(labels, logits.shape[-1])
            loss = F.cross_entropy(logits_align, labels.to(logits.device))
        return self.output_class(
            loss=loss, logits=logits, logits_per_image=logits, image_embeds=image_embeds, text_embeds=text_embeds,
            logits_align=logits_align, logits_weak_noise=logits_weak_noise, logits_nrvpp=logits_nrvpp,
            logits_nrvpp_text=logits_nrvpp_text, nrvpp_embeds=nrvpp_embeds, weak_noise_embeds=weak,
        )

    # ------------------------------------------------------------------------------------------------ saving
    def _adapter_export_payload(self) -> dict:
        payload = super()._adapter_export_payload()
        prompts = self._settings.to_dict()
        prompts.pop("base_model_name_or_path")
        payload.update(prompt_config=prompts, class_sentences=self.config.class_sentences)
        return payload

    @classmethod
    def _config_overrides_from_adapter_export(cls, payload: dict) -> dict:
        return {"prompt_config": AnpromptPromptConfig.from_dict(payload.pop("prompt_config")),
                "class_sentences": payload.pop("class_sentences")}


class AnpromptForImageClassification(AnpromptModel):
    """[`AnpromptModel`] for the `image-classification` pipeline and training. Shares its weights."""


class AnpromptForZeroShotImageClassification(AnpromptForImageClassification):
    """The same model, registered for `AutoModelForZeroShotImageClassification` (the zero-shot pipeline)."""


AnpromptConfig.register_for_auto_class()
AnpromptModel.register_for_auto_class("AutoModel")
AnpromptForImageClassification.register_for_auto_class("AutoModelForImageClassification")
AnpromptForZeroShotImageClassification.register_for_auto_class("AutoModelForZeroShotImageClassification")

__all__ = [
    "AnpromptForImageClassification",
    "AnpromptForZeroShotImageClassification",
    "AnpromptImageClassifierOutput",
    "AnpromptLoRA",
    "AnpromptModel",
    "AnpromptPreTrainedModel",
    "AnpromptPrompts",
]
