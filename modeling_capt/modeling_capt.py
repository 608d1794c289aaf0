"""CAPT models: a frozen `CLIPModel` with class prompts, optional CoOp context, Diff-Manner adapters and MGDE.

This file ships to the Hub as remote code: it imports only the standard library, torch and transformers, and
reaches the other modeling files by relative imports so `save_pretrained` copies them alongside.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, PreTrainedModel
from transformers.utils import ModelOutput, cached_file, logging

from .configuration_capt import CaptAdapterConfig, CaptConfig
from .diff_manner import CaptAdaptedLayer, inject_diff_manner_adapters
from .mgde import CaptMGDE


logger = logging.get_logger(__name__)


def load_image_processor(source, **kwargs):
    """`AutoImageProcessor.from_pretrained(source)`; where this transformers raises `ImportError` for a backend that is
    not installed (some 5.x releases need torchvision for `AutoImageProcessor`, which this package does not), the
    checkpoint's CLIP image processor is loaded through `CLIPImageProcessor`, which falls back to PIL."""
    try:
        return AutoImageProcessor.from_pretrained(source, **kwargs)
    except ImportError as err:
        from transformers import CLIPImageProcessor  # CAPT wraps CLIP: its checkpoints carry a CLIP image processor

        try:
            processor = CLIPImageProcessor.from_pretrained(source, **kwargs)
        except Exception:
            raise err from None
        logger.info(f"Image processor of {source} loaded as CLIPImageProcessor ({type(processor).__name__}): {err}")
        return processor


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def _load_saved_tokenizer(source, clip_config, **kwargs):
    """The tokenizer saved in `source` (`AutoTokenizer`); `OSError` when `source` holds no tokenizer file.

    This transformers' `AutoTokenizer` does not refuse a folder without tokenizer files: it builds an empty tokenizer
    from the config alone, which tokenises every class name to the same unknown tokens."""
    lookup = {k: v for k, v in kwargs.items() if k != "trust_remote_code"}
    found = [
        cached_file(source, name, _raise_exceptions_for_missing_entries=False, **lookup) for name in TOKENIZER_FILES
    ]
    if not any(found):
        raise OSError(f"{source} holds no tokenizer ({' / '.join(TOKENIZER_FILES)})")
    return AutoTokenizer.from_pretrained(source, config=clip_config, **kwargs)


ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


@dataclass
class CaptImageClassifierOutput(ModelOutput):
    """Output of [`CaptModel`] and [`CaptForImageClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Cross-entropy of `logits` against `labels`.
        logits (`torch.FloatTensor` of shape `(batch_size, num_texts)`):
            `logit_scale * cos(image, text)` against the class prompts, or against `input_ids` when given.
        logits_per_image (`torch.FloatTensor` of shape `(batch_size, num_texts)`):
            The same tensor as `logits`, under the name the zero-shot pipeline reads.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            L2-normalised image features (after the adapters and MGDE).
        text_embeds (`torch.FloatTensor` of shape `(num_texts, projection_dim)`):
            L2-normalised text features the logits were computed against.
        aux_loss (`torch.FloatTensor` of shape `()`, *optional*):
            MGDE's load-balancing loss, when the model has MGDE and is training.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None


class CaptPreTrainedModel(PreTrainedModel):
    """Class-level policy shared by every CAPT model."""

    config_class = CaptConfig
    config: CaptConfig
    base_model_prefix = "capt"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    _no_split_modules = ["CLIPEncoderLayer", "CaptAdaptedLayer"]
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        # The wrapped CLIPModel initialises itself (it is a PreTrainedModel), and the CAPT modules initialise
        # themselves in their constructors (zero-initialised adapter outputs, experts copied from CLIP). Re-running a
        # generic init over them would break those guarantees, so only the CoOp context is drawn here.
        if isinstance(module, CaptPromptContext) and module.init_from_tokens is False:
            nn.init.normal_(module.ctx, std=0.02)


class CaptPromptContext(nn.Module):
    """CoOp-style learnable context vectors shared by all classes.

    Args:
        n_ctx (`int`): number of context tokens.
        width (`int`): the text encoder's hidden size.
    """

    def __init__(self, n_ctx: int, width: int):
        super().__init__()
        self.ctx = nn.Parameter(torch.empty(n_ctx, width))
        nn.init.normal_(self.ctx, std=0.02)
        self.init_from_tokens = False

    def inject(self, token_embeds: torch.Tensor) -> torch.Tensor:
        """Replace positions `1 .. n_ctx` (after the start token) of `token_embeds` `(K, L, width)` by the context."""
        n_ctx = self.ctx.shape[0]
        ctx = self.ctx.to(token_embeds.dtype).unsqueeze(0).expand(token_embeds.shape[0], -1, -1)
        return torch.cat([token_embeds[:, :1], ctx, token_embeds[:, 1 + n_ctx :]], dim=1)


class CaptModel(CaptPreTrainedModel):
    """A frozen CLIP that classifies images against cached class-prompt features.

    Trainable parts (all optional): CoOp context (`config.use_learnable_context`), Diff-Manner adapters on the
    vision encoder layers and the MGDE layer on the pooled feature (`config.adapter_config`). Everything of CLIP
    itself stays frozen. Class prompts are stored tokenised (persistent buffers), so a saved model classifies with
    no tokenizer; their text features are computed by the frozen text encoder once and cached.
    """

    def __init__(self, config: CaptConfig):
        super().__init__(config)
        if not config.id2label:
            raise ValueError("CaptConfig.id2label must name the classes (e.g. {0: 'cat', 1: 'dog'})")
        self.clip = CLIPModel._from_config(config.clip_config)
        self.clip.requires_grad_(False)

        num_classes, length = len(config.id2label), config.text_length
        self.register_buffer("class_input_ids", torch.zeros(num_classes, length, dtype=torch.long))
        self.register_buffer("class_attention_mask", torch.zeros(num_classes, length, dtype=torch.long))

        text_width = config.clip_config.text_config.hidden_size
        self.prompt_context = CaptPromptContext(config.n_ctx, text_width) if config.use_learnable_context else None

        self.adapted_layer_names: list[str] = []
        self.mgde = None
        adapter = config.adapter
        if adapter is not None:
            self.adapted_layer_names = inject_diff_manner_adapters(self.clip.vision_model, adapter)
            if adapter.use_mgde:
                self.mgde = CaptMGDE.from_configs(config.clip_config, adapter)

        self.tokenizer = None  # attached by `from_clip` / `set_class_names`; saved by `save_pretrained`
        self.image_processor = None
        self._text_cache: torch.Tensor | None = None
        self._text_cache_autocast: torch.dtype | None = None  # the autocast dtype the cache was computed under
        self.post_init()

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
        """Build a CAPT model around a CLIP checkpoint.

        Args:
            clip (`CLIPModel`, `str` or `os.PathLike`):
                A loaded `CLIPModel`, or a Hub id / local path of a CLIP checkpoint (its tokenizer and image processor
                are loaded from the same place).
            class_names (`list[str]`):
                The classes, in label order.
            template (`str`, *optional*):
                Prompt template with one `{}`; defaults to `"a photo of a {}."`.
            tokenizer, image_processor (*optional*):
                Override the ones loaded from `clip`; a tokenizer is required when `clip` is a loaded model.
            config_overrides:
                Any other [`CaptConfig`] field (`use_learnable_context`, `n_ctx`, `adapter_config`, ...).
        """
        source = None
        if not isinstance(clip, CLIPModel):
            source = str(clip)
            clip = CLIPModel.from_pretrained(source)
            tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(source)
            if image_processor is None:
                try:
                    image_processor = load_image_processor(source)
                except (OSError, ValueError, ImportError) as err:
                    logger.warning(f"No image processor loaded from {source}: {err}")
        if tokenizer is None:
            raise ValueError("from_clip needs a tokenizer when `clip` is a loaded CLIPModel")
        class_names = _check_class_names(class_names)
        if template is not None:
            config_overrides["template"] = template
        config_overrides.setdefault("base_model_name_or_path", source or getattr(clip.config, "_name_or_path", None))
        adapter = config_overrides.get("adapter_config")
        if isinstance(adapter, CaptAdapterConfig):
            adapter = adapter.to_dict()
        if adapter is not None:
            adapter = dict(adapter, base_model_name_or_path=config_overrides["base_model_name_or_path"])
            config_overrides["adapter_config"] = adapter
        config = CaptConfig(
            clip_config=clip.config.to_dict(),
            id2label=dict(enumerate(class_names)),
            label2id={name: i for i, name in enumerate(class_names)},
            **config_overrides,
        )
        model = cls(config)
        model.load_clip_weights(clip.state_dict())
        if model.mgde is not None:
            model.mgde.init_from_clip(model.clip)
        model.tokenizer, model.image_processor = tokenizer, image_processor
        model.set_class_names(class_names, tokenizer=tokenizer)
        if model.prompt_context is not None:
            model._init_context_from_words(tokenizer)
        return model.eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a saved CAPT checkpoint; its tokenizer and image processor are attached when the folder has them, so
        `set_class_names` and `save_pretrained` work without passing them again. CLIP's own weights stay frozen."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        # transformers' loader re-creates every floating parameter with `requires_grad=True`: freeze CLIP's own
        # weights again (the Diff-Manner adapters inside its vision encoder stay trainable).
        model.clip.requires_grad_(False)
        for layer in model._vision_layers():
            if isinstance(layer, CaptAdaptedLayer):
                layer.adapter.requires_grad_(True)
        hub_kwargs = {
            k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only", "subfolder") if k in kwargs
        }
        # the tokenizer is CLIP's: its config names it (the folder's own config.json is CAPT's, unknown to AutoTokenizer)
        load_tokenizer = functools.partial(_load_saved_tokenizer, clip_config=model.config.clip_config)
        for attribute, load in (("tokenizer", load_tokenizer), ("image_processor", load_image_processor)):
            try:  # the checkpoint's own auto_map names only model classes: no remote code is needed here
                setattr(model, attribute, load(pretrained_model_name_or_path, trust_remote_code=False, **hub_kwargs))
            except (OSError, ValueError, TypeError, KeyError) as err:
                logger.info(f"No {attribute} attached from {pretrained_model_name_or_path}: {err}")
            except ImportError as err:  # the folder has one, but this transformers needs a missing backend for it
                logger.warning(f"The {attribute} of {pretrained_model_name_or_path} was not attached (the model "
                               f"loaded; pass one to `set_class_names`/`save_pretrained` yourself): {err}")
        return model

    @torch.no_grad()
    def load_clip_weights(self, clip_state: dict[str, torch.Tensor]) -> None:
        """Copy a plain `CLIPModel` state dict into the wrapped CLIP, whose adapted layers sit under `base_layer`."""
        adapted = {
            f"vision_model.encoder.layers.{i}."
            for i, layer in enumerate(self._vision_layers())
            if isinstance(layer, CaptAdaptedLayer)
        }
        mapped = {}
        for key, value in clip_state.items():
            prefix = next((p for p in adapted if key.startswith(p)), None)
            mapped[key if prefix is None else f"{prefix}base_layer.{key[len(prefix):]}"] = value
        missing, unexpected = self.clip.load_state_dict(mapped, strict=False)
        missing = [key for key in missing if ".adapter." not in key]
        if missing or unexpected:
            raise ValueError(f"The CLIP weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.clear_text_cache()

    def set_class_names(self, class_names: list[str], tokenizer=None, template: str | None = None) -> None:
        """Change the label set (e.g. to the novel classes): re-tokenises the prompts and clears the text cache.

        `config.id2label` / `label2id` follow, so pipelines and saved checkpoints name the new classes.
        """
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ValueError("set_class_names needs a tokenizer (pass tokenizer=AutoTokenizer.from_pretrained(...))")
        class_names = _check_class_names(class_names)
        if template is not None:
            if template.count("{}") != 1:
                raise ValueError(f"template must contain exactly one '{{}}', got {template!r}")
            self.config.template = template
        input_ids, attention_mask = self._tokenize_class_prompts(class_names, tokenizer)
        device = self.class_input_ids.device
        self.class_input_ids = input_ids.to(device)
        self.class_attention_mask = attention_mask.to(device)
        self.config.id2label = dict(enumerate(class_names))
        self.config.label2id = {name: i for i, name in enumerate(class_names)}
        self.tokenizer = tokenizer
        self.clear_text_cache()

    def _context_prefix(self) -> str:
        if self.config.ctx_init:
            return self.config.ctx_init.strip()
        return " ".join(["X"] * self.config.n_ctx)

    def _tokenize_class_prompts(self, class_names: list[str], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.use_learnable_context:
            texts = [f"{self._context_prefix()} {name}." for name in class_names]
        else:
            texts = [self.config.template.format(name) for name in class_names]
        encoded = tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.config.text_length, return_tensors="pt"
        )
        return encoded["input_ids"].long(), encoded["attention_mask"].long()

    @torch.no_grad()
    def _init_context_from_words(self, tokenizer) -> None:
        """Initialise the CoOp context from the embeddings of `config.ctx_init` ("a photo of a")."""
        if not self.config.ctx_init:
            return
        ids = tokenizer(self.config.ctx_init, add_special_tokens=False)["input_ids"]
        if len(ids) != self.config.n_ctx:
            raise ValueError(
                f"ctx_init {self.config.ctx_init!r} is {len(ids)} tokens but n_ctx is {self.config.n_ctx}; "
                f"set n_ctx={len(ids)}"
            )
        embedding = self.clip.text_model.embeddings.token_embedding
        self.prompt_context.ctx.copy_(embedding(torch.tensor(ids, device=embedding.weight.device)))
        self.prompt_context.init_from_tokens = True
        self.clear_text_cache()

    # ------------------------------------------------------------------------------------------------ text side
    def clear_text_cache(self) -> None:
        """Forget the cached class text features (they are recomputed on the next forward)."""
        self._text_cache = None

    def train(self, mode: bool = True):
        if mode != self.training:  # a trainer calls train() every epoch: keep the class features across epochs
            self.clear_text_cache()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self.clear_text_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        # `load_state_dict` (a resumed or best checkpoint) may bring another context, text tower or class prompts
        self.clear_text_cache()
        return super()._load_from_state_dict(*args, **kwargs)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, inject_context=False):
        """Projected (unnormalised) text features `(num_texts, projection_dim)` from the frozen text encoder."""
        handle = None
        if inject_context and self.prompt_context is not None:
            handle = self.clip.text_model.embeddings.token_embedding.register_forward_hook(
                lambda _module, _inputs, output: self.prompt_context.inject(output)
            )
        try:
            return self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        finally:
            if handle is not None:
                handle.remove()

    def get_class_text_features(self, chunk_size: int = 256) -> torch.Tensor:
        """L2-normalised text features of the class prompts, `(num_classes, projection_dim)`.

        Computed once by the frozen text encoder and cached; recomputed only when the class list, the device/dtype,
        the autocast precision, the mode or the weights (`load_state_dict`) change, and in every training step when
        the CoOp context is learnable (its gradient flows).
        """
        if not bool(self.class_attention_mask.any()):
            raise RuntimeError("The class prompts are empty: call set_class_names(class_names, tokenizer) first")
        trainable_context = self.prompt_context is not None and self.training and torch.is_grad_enabled()
        device_type = self.class_input_ids.device.type
        autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        if self._text_cache is not None and self._text_cache_autocast != autocast:
            self._text_cache = None  # computed in another precision (under or outside autocast)
        if self._text_cache is not None and not trainable_context:
            if self._text_cache.is_inference() and not torch.is_inference_mode_enabled():
                # cached under `torch.inference_mode`: autograd could not save it for a backward pass; a normal copy
                self._text_cache = self._text_cache.clone()
            return self._text_cache
        chunks = []
        with torch.set_grad_enabled(trainable_context):
            for start in range(0, self.class_input_ids.shape[0], chunk_size):
                chunks.append(
                    self.encode_text(
                        self.class_input_ids[start : start + chunk_size],
                        self.class_attention_mask[start : start + chunk_size],
                        inject_context=self.prompt_context is not None,
                    )
                )
        features = F.normalize(torch.cat(chunks), dim=-1)
        if not trainable_context:
            self._text_cache, self._text_cache_autocast = features.detach(), autocast
        else:  # the optimizer step that follows changes the context: a cache from before it would be stale
            self._text_cache = None
        return features

    # ------------------------------------------------------------------------------------------------ image side
    def _vision_layers(self) -> nn.ModuleList:
        return self.clip.vision_model.encoder.layers

    def encode_image_hidden(
        self,
        pixel_values: torch.Tensor | None = None,
        alpha: torch.Tensor | None = None,
        hidden_states: torch.Tensor | None = None,
        start_layer: int = 0,
        end_layer: int | None = None,
        cls_only: bool = False,
    ) -> torch.Tensor:
        """Run the vision tower up to the last encoder layer; returns hidden states `(batch, 1 + patches, D)`.

        `hidden_states` with `start_layer > 0` resumes from cached activations of the frozen layers below
        `start_layer` (the frozen-prefix cache); `start_layer == len(layers)` runs no layer. `end_layer` stops before
        that layer (the frozen-prefix cache computes its entries with `end_layer=start_layer`). `cls_only=True` lets
        an adapter on the last layer skip its patch update: only the CLS token is read after it.
        """
        vision = self.clip.vision_model
        if hidden_states is None:
            if pixel_values is None:
                raise ValueError("encode_image_hidden needs pixel_values or hidden_states")
            hidden_states = vision.pre_layrnorm(vision.embeddings(pixel_values))
            start_layer = 0
        layers = self._vision_layers()
        last = len(layers) - 1
        for index in range(start_layer, len(layers) if end_layer is None else end_layer):
            layer = layers[index]
            if isinstance(layer, CaptAdaptedLayer):
                hidden_states = layer(hidden_states, None, alpha=alpha, update_patches=not (cls_only and index == last))
            else:
                hidden_states = layer(hidden_states, None)
        return hidden_states

    def project_image_hidden(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CLS -> MGDE -> post-layernorm -> visual projection. Returns (features, MGDE auxiliary loss or None)."""
        pooled = hidden_states[:, 0]
        aux_loss = None
        if self.mgde is not None:
            pooled, aux_loss = self.mgde(pooled)
        pooled = self.clip.vision_model.post_layernorm(pooled)
        return self.clip.visual_projection(pooled), aux_loss

    def get_image_features(self, pixel_values: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        """Projected (unnormalised) image features `(batch, projection_dim)` through adapters and MGDE."""
        return self.project_image_hidden(self.encode_image_hidden(pixel_values, alpha=alpha, cls_only=True))[0]

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
        """
        hidden = self.encode_image_hidden(
            pixel_values, alpha=alpha, hidden_states=hidden_states, start_layer=start_layer, cls_only=True
        )
        image_features, aux_loss = self.project_image_hidden(hidden)
        image_embeds = F.normalize(image_features, dim=-1)
        if input_ids is not None:
            text_embeds = F.normalize(self.encode_text(input_ids, attention_mask), dim=-1)
        else:
            text_embeds = self.get_class_text_features()
        logit_scale = self.clip.logit_scale.exp()
        logits = logit_scale * image_embeds @ text_embeds.to(image_embeds.dtype).t()

        loss = None
        if labels is not None:
            _check_labels(labels, logits.shape[-1])
            loss = F.cross_entropy(logits, labels.to(logits.device))
        return CaptImageClassifierOutput(
            loss=loss,
            logits=logits,
            logits_per_image=logits,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            aux_loss=aux_loss,
        )

    # ------------------------------------------------------------------------------------------------ parameters
    def trainable_parameter_names(self) -> list[str]:
        """Names of the parameters CAPT trains (context, adapters, MGDE); CLIP's own stay frozen."""
        return [name for name, param in self.named_parameters() if param.requires_grad]

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
    def _merge_auto_map(self) -> None:
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.update(
            {
                "AutoConfig": "configuration_capt.CaptConfig",
                "AutoModel": "modeling_capt.CaptModel",
                "AutoModelForImageClassification": "modeling_capt.CaptForImageClassification",
                "AutoModelForZeroShotImageClassification": "modeling_capt.CaptForZeroShotImageClassification",
            }
        )
        self.config.auto_map = auto_map

    def save_pretrained(self, save_directory, is_main_process: bool = True, **kwargs):
        """Save config (with `auto_map`), safetensors, the modeling files, and the tokenizer and image processor."""
        self._merge_auto_map()
        self.config.architectures = [type(self).__name__]
        super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            for component in (self.tokenizer, self.image_processor):
                if component is not None:
                    component.save_pretrained(save_directory)

    def save_adapter(self, save_directory: str | os.PathLike) -> None:
        """Export only the trained parts in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`.

        The config records `base_model_name_or_path`, the class names and the prompt settings, so
        [`CaptForImageClassification.from_adapter`] rebuilds the same classifier on a plain CLIP checkpoint.
        """
        from safetensors.torch import save_file

        os.makedirs(save_directory, exist_ok=True)
        adapter = self.config.adapter or CaptAdapterConfig(use_mgde=False)
        payload = adapter.to_dict()
        payload.update(
            base_model_name_or_path=self.config.base_model_name_or_path,
            has_adapters=self.config.adapter_config is not None,
            class_names=self.config.class_names,
            template=self.config.template,
            use_learnable_context=self.config.use_learnable_context,
            n_ctx=self.config.n_ctx,
            ctx_init=self.config.ctx_init,
        )
        state = {k: v.detach().contiguous().cpu() for k, v in self.adapter_state_dict().items()}
        _atomic_write(os.path.join(save_directory, ADAPTER_WEIGHTS_NAME), lambda path: save_file(state, path))
        def write_config(path):
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(payload, indent=2, sort_keys=True))

        _atomic_write(os.path.join(save_directory, ADAPTER_CONFIG_NAME), write_config)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor that is not CLIP's own: trained parameters plus their buffers (running alpha, MGDE centres)."""
        return {
            key: value
            for key, value in self.state_dict().items()
            if key.startswith(("prompt_context.", "mgde.")) or ".adapter." in key or ".alpha_" in key
        }

    @classmethod
    def from_adapter(
        cls, adapter_directory: str | os.PathLike, clip: CLIPModel | str | None = None, tokenizer=None, **kwargs
    ) -> "CaptModel":
        """Load an adapter export onto a plain CLIP (`clip`, or the export's `base_model_name_or_path`)."""
        from safetensors.torch import load_file

        with open(os.path.join(adapter_directory, ADAPTER_CONFIG_NAME), encoding="utf-8") as handle:
            payload = json.load(handle)
        class_names = payload.pop("class_names")
        overrides = {k: payload.pop(k) for k in ("template", "use_learnable_context", "n_ctx", "ctx_init")}
        fixed = sorted(k for k in ("use_learnable_context", "n_ctx", "ctx_init") if k in kwargs)
        if fixed:
            raise ValueError(f"{fixed} are set by the adapter export in {adapter_directory}; they cannot be overridden")
        if "template" in kwargs:  # the export's template is a default: another prompt wording is a valid choice
            overrides["template"] = kwargs.pop("template")
        has_adapters = payload.pop("has_adapters", True)
        base = payload.get("base_model_name_or_path")
        if clip is None:
            if not base:
                raise ValueError(f"{adapter_directory} names no base_model_name_or_path; pass clip=...")
            clip = base
        adapter_config = CaptAdapterConfig.from_dict(payload) if has_adapters else None
        model = cls.from_clip(clip, class_names, tokenizer=tokenizer, adapter_config=adapter_config, **overrides, **kwargs)
        state = load_file(os.path.join(adapter_directory, ADAPTER_WEIGHTS_NAME))
        expected = set(model.adapter_state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ValueError(
                f"Adapter weights in {adapter_directory} do not fit this model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        current = model.state_dict()
        reshaped = [f"{k} {tuple(v.shape)} (this model: {tuple(current[k].shape)})" for k, v in sorted(state.items())
                    if v.shape != current[k].shape]
        if reshaped:
            raise ValueError(
                f"Adapter weights in {adapter_directory} were trained on a CLIP of another shape: {reshaped[:3]}"
            )
        model.load_state_dict(state, strict=False)
        model.clear_text_cache()
        return model.eval()


class CaptForImageClassification(CaptModel):
    """[`CaptModel`] for the `image-classification` pipeline and training: returns `loss` when `labels` are given.

    The two classes share one set of weights: a checkpoint of either loads into the other.
    """


class CaptForZeroShotImageClassification(CaptForImageClassification):
    """The same model, registered for `AutoModelForZeroShotImageClassification` (the zero-shot pipeline)."""


def _check_class_names(class_names) -> list[str]:
    if isinstance(class_names, str) or not hasattr(class_names, "__iter__"):
        raise TypeError(f"class_names must be a list of strings, got {type(class_names).__name__}")
    class_names = list(class_names)
    if not class_names:
        raise ValueError("class_names is empty")
    bad = [name for name in class_names if not isinstance(name, str) or not name.strip()]
    if bad:
        raise ValueError(f"class_names must be non-empty strings, got {bad[:3]}")
    duplicates = sorted({name for name in class_names if class_names.count(name) > 1})
    if duplicates:
        raise ValueError(f"class_names has duplicates: {duplicates[:5]}")
    return class_names


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes - 1}] for {num_classes} classes, got values from "
            f"{int(labels.min())} to {int(labels.max())}"
        )


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
    "CaptPromptContext",
]
