"""Prompt-learning CLIP: a frozen `CLIPModel` that classifies images against class prompts, optionally with a CoOp
learnable text context. Zero-shot CLIP and CoOp are this model; other methods (CAPT, ...) subclass it.

What the base model offers its subclasses:

- class prompts stored tokenised (persistent buffers) and their text features cached;
- both towers run layer by layer by the model itself, with per-layer hooks ([`PromptCLIPModel.register_layer_hook`])
  that may replace or insert tokens before a layer;
- text features for one shared context or for a per-image context (`get_class_text_features(context=...)`);
- trainable parts declared by module path ([`PromptCLIPModel.trainable_module_names`]): what trains, what the adapter
  export holds, and how many leading layers of each tower stay frozen ([`PromptCLIPModel.frozen_vision_prefix`]).

This file ships to the Hub as remote code: it imports only the standard library, torch and transformers, and nothing
of the methods built on it, so a checkpoint of these classes carries only this file and its configuration.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, PreTrainedModel
from transformers.utils import ModelOutput, cached_file, logging

from .configuration_prompt_clip import PromptCLIPConfig, check_template


logger = logging.get_logger(__name__)

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PROMPT_CLIP_PEFT_TYPE = "PROMPT_CLIP"
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
TOWERS = ("vision", "text")


def load_image_processor(source, **kwargs):
    """`AutoImageProcessor.from_pretrained(source)`; where this transformers raises `ImportError` for a backend that is
    not installed (some 5.x releases need torchvision for `AutoImageProcessor`, which this package does not), the
    checkpoint's CLIP image processor is loaded through `CLIPImageProcessor`, which falls back to PIL."""
    try:
        return AutoImageProcessor.from_pretrained(source, **kwargs)
    except ImportError as err:
        from transformers import CLIPImageProcessor  # these models wrap CLIP: checkpoints carry a CLIP image processor

        try:
            processor = CLIPImageProcessor.from_pretrained(source, **kwargs)
        except Exception:
            raise err from None
        logger.info(f"Image processor of {source} loaded as CLIPImageProcessor ({type(processor).__name__}): {err}")
        return processor


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


@dataclass
class PromptCLIPImageClassifierOutput(ModelOutput):
    """Output of [`PromptCLIPModel`] and its heads.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Cross-entropy of `logits` against `labels`.
        logits (`torch.FloatTensor` of shape `(batch_size, num_texts)`):
            `logit_scale * cos(image, text)` against the class prompts, or against `input_ids` when given.
        logits_per_image (`torch.FloatTensor` of shape `(batch_size, num_texts)`):
            The same tensor as `logits`, under the name the zero-shot pipeline reads.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            L2-normalised image features.
        text_embeds (`torch.FloatTensor` of shape `(num_texts, projection_dim)` or `(batch_size, num_texts,
        projection_dim)`):
            L2-normalised text features the logits were computed against: shared by every image, or one set per image
            (image-conditioned prompts).
        aux_loss (`torch.FloatTensor` of shape `()`, *optional*):
            A method's auxiliary training loss (CAPT: MGDE's load-balancing loss), when it has one and is training.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None


@dataclass
class PromptCLIPLayerState:
    r"""What a layer hook (see [`PromptCLIPModel.register_layer_hook`]) is told about the sequence it receives.

    Args:
        tower (`str`):
            `"vision"` or `"text"`.
        layer_index (`int`):
            The encoder layer about to run (0-based).
        num_layers (`int`):
            Number of encoder layers in the tower.
        num_inserted (`int`):
            Tokens inserted so far by hooks of earlier layers (and earlier hooks of this layer) in this pass. They sit
            at positions `1 .. num_inserted`, right after the first token (CLS / start of text), so a hook of a later
            layer that replaces them reads `hidden_states[:, 1 : 1 + state.num_inserted]`.
        attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Text tower: the padding mask of the current sequence (inserted tokens included, as ones); `None` when no
            token is padding. Always `None` for the vision tower.
        eos_index (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Text tower: where each sequence's end-of-text token (the pooled one) currently is. `None` for vision.
    """

    tower: str
    layer_index: int
    num_layers: int
    num_inserted: int = 0
    attention_mask: torch.Tensor | None = None
    eos_index: torch.Tensor | None = None


def replace_context_tokens(token_embeds: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Replace positions `1 .. n_ctx` (after the start token) of `token_embeds` `(N, L, width)` by `context`, which is
    `(n_ctx, width)` (one context for every sequence) or `(N, n_ctx, width)` (one per sequence)."""
    n_ctx = context.shape[-2]
    context = context.to(token_embeds.dtype)
    if context.dim() == 2:
        context = context.unsqueeze(0).expand(token_embeds.shape[0], -1, -1)
    return torch.cat([token_embeds[:, :1], context, token_embeds[:, 1 + n_ctx :]], dim=1)


class PromptCLIPContext(nn.Module):
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
        return replace_context_tokens(token_embeds, self.ctx)


class PromptCLIPPreTrainedModel(PreTrainedModel):
    """Class-level policy shared by every prompt-learning CLIP model."""

    config_class = PromptCLIPConfig
    config: PromptCLIPConfig
    base_model_prefix = "prompt_clip"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    _no_split_modules = ["CLIPEncoderLayer"]
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    # Whether only the CLS token of the last vision layer's output is read (pooling). Then the last layer may skip work
    # on the other tokens, and a frozen-prefix cache of an untouched vision tower keeps only the CLS token. A method
    # that reads every vision token (e.g. image-conditioned prompts) sets it to False.
    reads_only_cls_token = True
    # The auto classes a checkpoint of this family registers (see `save_pretrained`), as `file.Class`.
    _auto_map = {
        "AutoConfig": "configuration_prompt_clip.PromptCLIPConfig",
        "AutoModel": "modeling_prompt_clip.PromptCLIPModel",
        "AutoModelForImageClassification": "modeling_prompt_clip.PromptCLIPForImageClassification",
        "AutoModelForZeroShotImageClassification": "modeling_prompt_clip.PromptCLIPForZeroShotImageClassification",
    }

    @torch.no_grad()
    def _init_weights(self, module):
        # The wrapped CLIPModel initialises itself (it is a PreTrainedModel), and the method modules initialise
        # themselves in their constructors (e.g. CAPT's zero-initialised adapter outputs, experts copied from CLIP).
        # Re-running a generic init over them would break those guarantees, so only the CoOp context is drawn here.
        if isinstance(module, PromptCLIPContext) and module.init_from_tokens is False:
            nn.init.normal_(module.ctx, std=0.02)


class PromptCLIPModel(PromptCLIPPreTrainedModel):
    """A frozen CLIP that classifies images against cached class-prompt features: zero-shot CLIP, or CoOp with
    `config.use_learnable_context`.

    Everything of CLIP itself stays frozen; the trainable parts are the modules named by
    [`~PromptCLIPModel.trainable_module_names`] (here the CoOp context, when there is one). Class prompts are stored
    tokenised (persistent buffers), so a saved model classifies with no tokenizer; their text features are computed by
    the frozen text encoder once and cached.

    Subclasses (other methods) add their modules in [`~PromptCLIPModel._build_method_modules`], which runs before
    `post_init()` so that parameters are created (and random numbers drawn) in a fixed order, and extend
    `trainable_module_names`.
    """

    output_class = PromptCLIPImageClassifierOutput

    def __init__(self, config: PromptCLIPConfig):
        super().__init__(config)
        if not config.id2label:
            raise ValueError(f"{type(config).__name__}.id2label must name the classes (e.g. {{0: 'cat', 1: 'dog'}})")
        self.clip = CLIPModel._from_config(config.clip_config)
        self.clip.requires_grad_(False)

        num_classes, length = len(config.id2label), config.text_length
        self.register_buffer("class_input_ids", torch.zeros(num_classes, length, dtype=torch.long))
        self.register_buffer("class_attention_mask", torch.zeros(num_classes, length, dtype=torch.long))

        text_width = config.clip_config.text_config.hidden_size
        self.prompt_context = PromptCLIPContext(config.n_ctx, text_width) if config.use_learnable_context else None

        self._build_method_modules(config)

        self._layer_hooks: dict[str, dict[int, OrderedDict]] = {tower: {} for tower in TOWERS}
        self._layer_hooks_enabled = True
        self.tokenizer = None  # attached by `from_clip` / `set_class_names`; saved by `save_pretrained`
        self.image_processor = None
        self._text_cache: torch.Tensor | None = None
        self._text_cache_key = None  # (autocast dtype, active text hooks) the cache was computed under
        self._freeze_all_but_trainable_parts()
        self.post_init()

    def _build_method_modules(self, config: PromptCLIPConfig) -> None:
        """Add a method's own modules (CAPT: adapters and MGDE). Runs after CLIP, the class prompts and the CoOp
        context are built, and before `post_init()`. The base model has none."""

    # ------------------------------------------------------------------------------------------------ trainable parts
    def trainable_module_names(self) -> list[str]:
        """Module paths (as in `named_modules()`) of the parts this model trains; everything else is frozen.

        Every parameter under these paths trains, and their whole state (parameters and buffers) is what
        [`~PromptCLIPModel.adapter_state_dict`] exports. Subclasses extend the list."""
        return ["prompt_context"] if self.prompt_context is not None else []

    def _in_trainable_parts(self, key: str) -> bool:
        return any(key == path or key.startswith(path + ".") for path in self.trainable_module_names())

    def _freeze_all_but_trainable_parts(self) -> None:
        self.requires_grad_(False)
        for path in self.trainable_module_names():
            self.get_submodule(path).requires_grad_(True)

    def trainable_parameter_names(self) -> list[str]:
        """Names of the parameters of the declared trainable parts, in `named_parameters()` order."""
        return [name for name, _ in self.named_parameters() if self._in_trainable_parts(name)]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The state of the declared trainable parts (parameters and their buffers), in `state_dict()` order."""
        return {key: value for key, value in self.state_dict().items() if self._in_trainable_parts(key)}

    # ------------------------------------------------------------------------------------------------ layer hooks
    def _tower_layers(self, tower: str) -> nn.ModuleList:
        if tower == "vision":
            return self.clip.vision_model.encoder.layers
        if tower == "text":
            return self.clip.text_model.encoder.layers
        raise ValueError(f"tower must be one of {TOWERS}, got {tower!r}")

    def register_layer_hook(
        self, tower: str, layer_index: int, hook: Callable[[torch.Tensor, PromptCLIPLayerState], torch.Tensor | None]
    ) -> RemovableHandle:
        r"""Run `hook(hidden_states, state)` before encoder layer `layer_index` of `tower` in every pass of that tower.

        The hook receives the hidden states entering the layer, `(batch_size, sequence_length, width)`, and a
        [`PromptCLIPLayerState`]; it returns the hidden states the layer should receive (or `None` to keep them). It
        may replace tokens (same length) or insert tokens: a longer output means `n` tokens were inserted at positions
        `1 .. n`, right after the first token (the CLS token, or the start-of-text token). For the text tower the
        model then extends the padding mask with `n` attended positions there, rebuilds the causal mask for the new
        length and shifts the end-of-text pooling index by `n`; inserted tokens get no position embedding. Removing
        tokens is refused. Hooks of one layer run in registration order; hooks are not saved with the model.

        The hooked layer and the layers after it are not part of the tower's frozen prefix
        ([`~PromptCLIPModel.frozen_vision_prefix`]), and text features are recomputed in training steps while a text
        hook is registered.

        Args:
            tower (`str`): `"vision"` or `"text"`.
            layer_index (`int`): the layer the hook runs before; negative values count from the last layer.
            hook (`Callable`): `hook(hidden_states, state) -> hidden_states | None`.

        Returns:
            `torch.utils.hooks.RemovableHandle`: `handle.remove()` (or leaving `with handle:`) unregisters the hook.

        Example:

        ```python
        >>> handle = model.register_layer_hook("text", 1, lambda hidden, state: torch.cat(
        ...     [hidden[:, :1], prompts.expand(hidden.shape[0], -1, -1), hidden[:, 1:]], dim=1))
        >>> features = model.get_class_text_features()  # the prompts enter text layer 1
        >>> handle.remove()
        ```
        """
        num_layers = len(self._tower_layers(tower))
        if not isinstance(layer_index, int) or isinstance(layer_index, bool):
            raise TypeError(f"layer_index must be an integer, got {layer_index!r}")
        if not -num_layers <= layer_index < num_layers:
            raise ValueError(f"layer_index {layer_index} is out of range for the {num_layers} {tower} layers")
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {type(hook).__name__}")
        hooks = self._layer_hooks[tower].setdefault(layer_index % num_layers, OrderedDict())
        handle = RemovableHandle(hooks)
        hooks[handle.id] = hook
        return handle

    @contextlib.contextmanager
    def layer_hooks_disabled(self) -> Iterator[None]:
        """Run both towers without their layer hooks inside the block (e.g. frozen CLIP features for a loss)."""
        previous = self._layer_hooks_enabled
        self._layer_hooks_enabled = False
        try:
            yield
        finally:
            self._layer_hooks_enabled = previous

    def _hooked_layers(self, tower: str) -> list[int]:
        return sorted(index for index, hooks in self._layer_hooks[tower].items() if hooks)

    def _active_text_hooks(self) -> tuple:
        """A key of the text hooks that would run now (for the text-feature cache)."""
        if not self._layer_hooks_enabled:
            return ()
        hooks = self._layer_hooks["text"]
        return tuple((index, hook_id) for index in self._hooked_layers("text") for hook_id in hooks[index])

    def _run_layer_hooks(self, tower: str, index: int, hidden_states: torch.Tensor, state: PromptCLIPLayerState):
        hooks = self._layer_hooks[tower].get(index) if self._layer_hooks_enabled else None
        if not hooks:
            return hidden_states
        state.layer_index = index
        for hook in list(hooks.values()):
            output = hook(hidden_states, state)
            if output is None:
                continue
            batch_size, _, width = hidden_states.shape
            if output.dim() != 3 or output.shape[0] != batch_size or output.shape[2] != width:
                raise ValueError(
                    f"A {tower} layer-{index} hook returned shape {tuple(output.shape)} for hidden states of shape "
                    f"{tuple(hidden_states.shape)}: it may change the sequence length only"
                )
            inserted = output.shape[1] - hidden_states.shape[1]
            if inserted < 0:
                raise ValueError(f"A {tower} layer-{index} hook removed {-inserted} tokens; hooks may only insert")
            if inserted:
                state.num_inserted += inserted
                if state.attention_mask is not None:
                    mask = state.attention_mask
                    ones = mask.new_ones(mask.shape[0], inserted)
                    state.attention_mask = torch.cat([mask[:, :1], ones, mask[:, 1:]], dim=1)
                if state.eos_index is not None:
                    state.eos_index = state.eos_index + inserted
            hidden_states = output
        return hidden_states

    # ------------------------------------------------------------------------------------------------ frozen prefixes
    def frozen_vision_prefix(self) -> int:
        """Number of leading vision encoder layers that no trainable part or layer hook touches.

        Their output for an image never changes during training, so the hidden states entering layer
        `frozen_vision_prefix()` can be computed once per image and passed back as `forward(hidden_states=...,
        start_layer=...)`. Equals the number of layers when nothing touches the tower."""
        return self._frozen_prefix("vision")

    def frozen_text_prefix(self) -> int:
        """Number of leading text encoder layers that no trainable part or layer hook touches (0 with a CoOp context,
        which enters at the token embeddings; the number of layers when nothing touches the tower). The hidden
        states of the class prompts entering that layer can be computed once per class set."""
        return self._frozen_prefix("text")

    def _frozen_prefix(self, tower: str) -> int:
        num_layers = len(self._tower_layers(tower))
        touched = list(self._hooked_layers(tower))
        for path in self.trainable_module_names():
            index = _tower_layer_of(path, tower)
            if index is not None:
                touched.append(index)
        if tower == "text" and self.prompt_context is not None:
            touched.append(0)  # the context replaces token embeddings
        return min(touched, default=num_layers)

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
    ) -> "PromptCLIPModel":
        """Build a model around a CLIP checkpoint.

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
                Any other field of this model's config class (`use_learnable_context`, `n_ctx`, ...).
        """
        fields = set(inspect.signature(cls.config_class.__init__).parameters) - {"self", "kwargs", "clip_config"}
        unknown = sorted(set(config_overrides) - fields)
        if unknown:
            raise TypeError(f"{cls.__name__}.from_clip got {unknown}, which are no {cls.config_class.__name__} fields")
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
        config = cls.config_class(
            clip_config=clip.config.to_dict(),
            id2label=dict(enumerate(class_names)),
            label2id={name: i for i, name in enumerate(class_names)},
            **cls._prepare_config_overrides(config_overrides),
        )
        model = cls(config)
        model.load_clip_weights(clip.state_dict())
        model._init_from_clip_weights()
        model.tokenizer, model.image_processor = tokenizer, image_processor
        model.set_class_names(class_names, tokenizer=tokenizer)
        if model.prompt_context is not None:
            model._init_context_from_words(tokenizer)
        return model.eval()

    @classmethod
    def _prepare_config_overrides(cls, overrides: dict) -> dict:
        """`from_clip`'s config fields, completed (`base_model_name_or_path` is set) before the config is built."""
        return overrides

    def _init_from_clip_weights(self) -> None:
        """Initialise method modules from the CLIP weights just loaded (`from_clip`); the base model has none."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a saved checkpoint; its tokenizer and image processor are attached when the folder has them, so
        `set_class_names` and `save_pretrained` work without passing them again. Only the declared trainable parts
        train."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        # transformers' loader re-creates every floating parameter with `requires_grad=True`
        model._freeze_all_but_trainable_parts()
        hub_kwargs = {
            k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only", "subfolder") if k in kwargs
        }
        # the tokenizer is CLIP's: its config names it (the folder's own config.json is this model's, unknown to
        # AutoTokenizer)
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
        """Copy a plain `CLIPModel` state dict into the wrapped CLIP. Layers a method wrapped PEFT-style (a module
        with a `base_layer`, e.g. CAPT's adapted layers) receive the plain layer's weights under `base_layer`."""
        wrapped = [
            f"{name}." for name, module in self.clip.named_modules()
            if name and isinstance(getattr(module, "base_layer", None), nn.Module)
        ]
        mapped = {}
        for key, value in clip_state.items():
            prefix = next((p for p in wrapped if key.startswith(p)), None)
            mapped[key if prefix is None else f"{prefix}base_layer.{key[len(prefix):]}"] = value
        missing, unexpected = self.clip.load_state_dict(mapped, strict=False)
        missing = [key for key in missing if not self._in_trainable_parts(f"clip.{key}")]
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
            self.config.template = check_template(template)
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
        input_ids = encoded["input_ids"].long()
        _check_distinct_prompts(class_names, input_ids, self.config.text_length)
        return input_ids, encoded["attention_mask"].long()

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

    def _eos_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Position of each sequence's pooled end-of-text token, as `CLIPTextModel` finds it."""
        ids = input_ids.to(torch.int)
        if self.clip.text_model.eos_token_id == 2:  # configs from before transformers PR #24773: the highest id
            return ids.argmax(dim=-1)
        return (ids == self.clip.text_model.eos_token_id).int().argmax(dim=-1)

    def _text_attention_mask(self, padding_mask: torch.Tensor | None, hidden_states: torch.Tensor):
        """The causal + padding mask in the form the text tower's attention implementation takes, as
        `CLIPTextModel` builds it: SDPA gets a boolean 4D mask, or none (its `is_causal` path) when nothing is
        padding; eager attention an additive float 4D mask; flash attention the 2D padding mask."""
        implementation = self.clip.text_model.config._attn_implementation or "eager"
        if padding_mask is not None and not torch.compiler.is_compiling() and bool(padding_mask.all()):
            padding_mask = None
        if "flash" in implementation:
            return padding_mask
        if padding_mask is None and implementation == "sdpa" and not torch.compiler.is_compiling():
            return None
        batch_size, length = hidden_states.shape[:2]
        allowed = torch.ones(length, length, dtype=torch.bool, device=hidden_states.device).tril()
        allowed = allowed.expand(batch_size, 1, length, length)
        if padding_mask is not None:
            allowed = allowed & padding_mask.to(device=hidden_states.device, dtype=torch.bool)[:, None, None, :]
        if implementation == "eager":
            blocked = torch.finfo(hidden_states.dtype).min
            return torch.zeros(allowed.shape, dtype=hidden_states.dtype, device=hidden_states.device).masked_fill(
                ~allowed, blocked
            )
        return allowed

    def embed_text_tokens(self, input_ids: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings `(N, L, width)` of `input_ids` (no position embeddings), with `context` `(n_ctx, width)` or
        `(N, n_ctx, width)` in positions `1 .. n_ctx` when given."""
        token_embeds = self.clip.text_model.embeddings.token_embedding(input_ids)
        return token_embeds if context is None else replace_context_tokens(token_embeds, context)

    def encode_text_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        hidden_states: torch.Tensor | None = None,
        start_layer: int = 0,
        end_layer: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Run the text tower layer by layer, with its layer hooks.

        Args:
            input_ids, attention_mask (`torch.LongTensor` of shape `(N, L)`):
                The tokenised texts: they give the padding mask and the end-of-text positions.
            inputs_embeds (`torch.FloatTensor` of shape `(N, L, width)`, *optional*):
                Token embeddings to use instead of looking `input_ids` up (e.g. with a context injected, see
                [`~PromptCLIPModel.embed_text_tokens`]); position embeddings are added here.
            hidden_states, start_layer (*optional*):
                Resume from hidden states entering text layer `start_layer` (a frozen-prefix cache); they must not
                carry tokens inserted by hooks.
            end_layer (`int`, *optional*):
                Stop before that layer (to compute such a prefix).

        Returns:
            `(hidden_states, attention_mask, eos_index)`: the hidden states after the last layer run, `(N, L', width)`
            (`L' = L` plus the tokens hooks inserted), the padding mask of that sequence (`None` if nothing is padding)
            and where the pooled end-of-text tokens are, `(N,)`.
        """
        text = self.clip.text_model
        if hidden_states is None:
            if inputs_embeds is None:
                inputs_embeds = text.embeddings.token_embedding(input_ids)
            hidden_states = text.embeddings(inputs_embeds=inputs_embeds)
            start_layer = 0
        layers = self._tower_layers("text")
        state = PromptCLIPLayerState(
            "text", start_layer, len(layers), attention_mask=attention_mask, eos_index=self._eos_index(input_ids)
        )
        mask, mask_length = None, None
        for index in range(start_layer, len(layers) if end_layer is None else end_layer):
            hidden_states = self._run_layer_hooks("text", index, hidden_states, state)
            if mask_length != hidden_states.shape[1]:  # first layer, or tokens were inserted
                mask = self._text_attention_mask(state.attention_mask, hidden_states)
                mask_length = hidden_states.shape[1]
            hidden_states = layers[index](hidden_states, mask, is_causal=True)
        return hidden_states, state.attention_mask, state.eos_index

    def project_text_hidden(self, hidden_states: torch.Tensor, eos_index: torch.Tensor) -> torch.Tensor:
        """Final layer norm, end-of-text pooling and text projection: `(N, L, width)` -> `(N, projection_dim)`."""
        hidden_states = self.clip.text_model.final_layer_norm(hidden_states)
        rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
        pooled = hidden_states[rows, eos_index.to(hidden_states.device)]
        return self.clip.text_projection(pooled)

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        inject_context: bool = False,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Projected (unnormalised) text features `(num_texts, projection_dim)` from the text encoder (with its layer
        hooks). `inject_context=True` puts the CoOp context in positions `1 .. n_ctx`; `context` puts another one
        there (`(n_ctx, width)`, or one per text `(num_texts, n_ctx, width)`)."""
        if context is None and inject_context and self.prompt_context is not None:
            context = self.prompt_context.ctx
        inputs_embeds = None if context is None else self.embed_text_tokens(input_ids, context)
        hidden_states, _, eos_index = self.encode_text_hidden(input_ids, attention_mask, inputs_embeds=inputs_embeds)
        return self.project_text_hidden(hidden_states, eos_index)

    def _text_features_train(self) -> bool:
        """Whether a training step can change the class text features (then they are recomputed with gradients)."""
        if self.prompt_context is not None or self._active_text_hooks():
            return True
        return any(path == "clip" or path.startswith(("clip.text_model", "clip.text_projection"))
                   for path in self.trainable_module_names())

    def get_class_text_features(
        self,
        chunk_size: int = 256,
        context: torch.Tensor | None = None,
        text_hidden_states: torch.Tensor | None = None,
        text_start_layer: int = 0,
    ) -> torch.Tensor:
        """L2-normalised text features of the class prompts: `(num_classes, projection_dim)`, or
        `(batch_size, num_classes, projection_dim)` with a per-image `context`.

        Shared features are computed once by the text encoder and cached; recomputed only when the class list, the
        device/dtype, the autocast precision, the mode, the text hooks or the weights (`load_state_dict`) change, and
        in every training step when something on the text side trains (the CoOp context, a text hook or a text
        layer: its gradient flows).

        Args:
            chunk_size (`int`, *optional*, defaults to 256):
                Most sequences per text-encoder call.
            context (`torch.FloatTensor` of shape `(batch_size, n_ctx, width)`, *optional*):
                One context per image, put in the context slots of every class prompt (`use_learnable_context`
                prompts): `batch_size x num_classes` sequences, run `chunk_size // batch_size` classes at a time (at
                least one), never cached.
            text_hidden_states, text_start_layer (*optional*):
                The class prompts' hidden states entering text layer `text_start_layer` (at most
                `frozen_text_prefix()`), from a text prefix cache: the layers below are not run again.
        """
        if not bool(self.class_attention_mask.any()):
            raise RuntimeError("The class prompts are empty: call set_class_names(class_names, tokenizer) first")
        if text_hidden_states is not None:
            if context is not None:
                raise ValueError("A per-image context enters at the token embeddings: it cannot resume from cached "
                                 "text hidden states")
            if text_start_layer > self.frozen_text_prefix():
                raise ValueError(f"text_start_layer={text_start_layer} skips text layers that hooks or trainable parts "
                                 f"touch (frozen text prefix: {self.frozen_text_prefix()})")
        if context is not None:
            return self._per_image_class_text_features(context, chunk_size)
        trainable_text = self.training and torch.is_grad_enabled() and self._text_features_train()
        device_type = self.class_input_ids.device.type
        autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        key = (autocast, self._active_text_hooks())
        if self._text_cache is not None and self._text_cache_key != key:
            self._text_cache = None  # computed in another precision (under or outside autocast), or with other hooks
        if self._text_cache is not None and not trainable_text:
            if self._text_cache.is_inference() and not torch.is_inference_mode_enabled():
                # cached under `torch.inference_mode`: autograd could not save it for a backward pass; a normal copy
                self._text_cache = self._text_cache.clone()
            return self._text_cache
        chunks = []
        with torch.set_grad_enabled(trainable_text):
            for start in range(0, self.class_input_ids.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                input_ids, attention_mask = self.class_input_ids[rows], self.class_attention_mask[rows]
                if text_hidden_states is not None:
                    hidden, _, eos_index = self.encode_text_hidden(
                        input_ids, attention_mask, hidden_states=text_hidden_states[rows].to(input_ids.device),
                        start_layer=text_start_layer,
                    )
                    chunks.append(self.project_text_hidden(hidden, eos_index))
                else:
                    chunks.append(self.encode_text(input_ids, attention_mask, inject_context=True))
        features = F.normalize(torch.cat(chunks), dim=-1)
        if not trainable_text:
            self._text_cache, self._text_cache_key = features.detach(), key
        else:  # the optimizer step that follows changes the text side: a cache from before it would be stale
            self._text_cache = None
        return features

    def _per_image_class_text_features(self, context: torch.Tensor, chunk_size: int) -> torch.Tensor:
        if not self.config.use_learnable_context:
            raise ValueError("A per-image context needs class prompts with context slots (use_learnable_context=True)")
        width = self.config.clip_config.text_config.hidden_size
        if context.dim() != 3 or context.shape[1:] != (self.config.n_ctx, width):
            raise ValueError(
                f"context must be (batch_size, n_ctx={self.config.n_ctx}, width={width}), got {tuple(context.shape)}"
            )
        batch_size, num_classes = context.shape[0], self.class_input_ids.shape[0]
        classes_per_chunk = max(1, chunk_size // batch_size)
        chunks = []
        for start in range(0, num_classes, classes_per_chunk):
            input_ids = self.class_input_ids[start : start + classes_per_chunk]
            attention_mask = self.class_attention_mask[start : start + classes_per_chunk]
            num_chunk = input_ids.shape[0]
            # rows are image-major: row b * num_chunk + k is image b's prompt of class start + k
            row_ids = input_ids.unsqueeze(0).expand(batch_size, -1, -1).reshape(batch_size * num_chunk, -1)
            row_mask = attention_mask.unsqueeze(0).expand(batch_size, -1, -1).reshape(batch_size * num_chunk, -1)
            row_context = context.unsqueeze(1).expand(-1, num_chunk, -1, -1).reshape(batch_size * num_chunk, -1, width)
            features = self.encode_text(row_ids, row_mask, context=row_context)
            chunks.append(features.view(batch_size, num_chunk, -1))
        return F.normalize(torch.cat(chunks, dim=1), dim=-1)

    # ------------------------------------------------------------------------------------------------ image side
    def _vision_layers(self) -> nn.ModuleList:
        return self._tower_layers("vision")

    def encode_image_hidden(
        self,
        pixel_values: torch.Tensor | None = None,
        hidden_states: torch.Tensor | None = None,
        start_layer: int = 0,
        end_layer: int | None = None,
        cls_only: bool = False,
        **layer_kwargs,
    ) -> torch.Tensor:
        """Run the vision tower layer by layer, with its layer hooks; returns hidden states `(batch, tokens, D)`.

        `hidden_states` with `start_layer > 0` resumes from cached activations of the frozen layers below
        `start_layer` (the frozen-prefix cache); `start_layer == len(layers)` runs no layer. `end_layer` stops before
        that layer (the frozen-prefix cache computes its entries with `end_layer=start_layer`). `cls_only=True` tells
        the last layer that only the CLS token is read after it. `layer_kwargs` go to
        [`~PromptCLIPModel._run_vision_layer`] (CAPT: the adapters' `alpha`).
        """
        vision = self.clip.vision_model
        if hidden_states is None:
            if pixel_values is None:
                raise ValueError("encode_image_hidden needs pixel_values or hidden_states")
            hidden_states = vision.pre_layrnorm(vision.embeddings(pixel_values))
            start_layer = 0
        layers = self._vision_layers()
        last = len(layers) - 1
        state = PromptCLIPLayerState("vision", start_layer, len(layers))
        for index in range(start_layer, len(layers) if end_layer is None else end_layer):
            hidden_states = self._run_layer_hooks("vision", index, hidden_states, state)
            hidden_states = self._run_vision_layer(index, hidden_states, cls_only=cls_only and index == last,
                                                   **layer_kwargs)
        return hidden_states

    def _run_vision_layer(self, index: int, hidden_states: torch.Tensor, cls_only: bool = False, **layer_kwargs):
        """Vision encoder layer `index` on `hidden_states`; `cls_only`: only the CLS token of its output is read."""
        return self._vision_layers()[index](hidden_states, None)

    def pool_image_hidden(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pooled feature of the last vision hidden states (the CLS token), before `post_layernorm`, and a
        method's auxiliary loss (`None` here)."""
        return hidden_states[:, 0], None

    def project_image_hidden(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pool -> post-layernorm -> visual projection. Returns (features, auxiliary loss or None)."""
        pooled, aux_loss = self.pool_image_hidden(hidden_states)
        pooled = self.clip.vision_model.post_layernorm(pooled)
        return self.clip.visual_projection(pooled), aux_loss

    def get_image_features(self, pixel_values: torch.Tensor, **layer_kwargs) -> torch.Tensor:
        """Projected (unnormalised) image features `(batch, projection_dim)`."""
        hidden_states = self.encode_image_hidden(pixel_values, cls_only=self.reads_only_cls_token, **layer_kwargs)
        return self.project_image_hidden(hidden_states)[0]

    # ------------------------------------------------------------------------------------------------ forward
    def text_embeds_for_images(
        self,
        image_hidden_states: torch.Tensor,
        text_hidden_states: torch.Tensor | None = None,
        text_start_layer: int = 0,
    ) -> torch.Tensor:
        """The L2-normalised class text features the images are scored against: `(num_classes, projection_dim)`
        shared by every image, or `(batch_size, num_classes, projection_dim)` per image. Methods with
        image-conditioned prompts override this (with `get_class_text_features(context=...)`)."""
        return self.get_class_text_features(text_hidden_states=text_hidden_states, text_start_layer=text_start_layer)

    def compute_logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """`logit_scale * cos`: `(B, P)` against `(K, P)` or per image `(B, K, P)` -> `(B, K)`."""
        logit_scale = self.clip.logit_scale.exp()
        text_embeds = text_embeds.to(image_embeds.dtype)
        if text_embeds.dim() == 3:
            return torch.einsum("bd,bkd->bk", logit_scale * image_embeds, text_embeds)
        return logit_scale * image_embeds @ text_embeds.t()

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
    ) -> PromptCLIPImageClassifierOutput:
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
                Resume the class prompts from cached hidden states entering text layer `text_start_layer`.
        """
        return self._classify(
            pixel_values, labels, input_ids, attention_mask, hidden_states, start_layer, text_hidden_states,
            text_start_layer,
        )

    def _classify(
        self, pixel_values, labels, input_ids, attention_mask, hidden_states, start_layer, text_hidden_states,
        text_start_layer, **layer_kwargs,
    ):
        hidden = self.encode_image_hidden(
            pixel_values, hidden_states=hidden_states, start_layer=start_layer, cls_only=self.reads_only_cls_token,
            **layer_kwargs,
        )
        image_features, aux_loss = self.project_image_hidden(hidden)
        image_embeds = F.normalize(image_features, dim=-1)
        if input_ids is not None:
            text_embeds = F.normalize(self.encode_text(input_ids, attention_mask), dim=-1)
        else:
            text_embeds = self.text_embeds_for_images(hidden, text_hidden_states, text_start_layer)
        logits = self.compute_logits(image_embeds, text_embeds)

        loss = None
        if labels is not None:
            _check_labels(labels, logits.shape[-1])
            loss = F.cross_entropy(logits, labels.to(logits.device))
        return self.output_class(
            loss=loss,
            logits=logits,
            logits_per_image=logits,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            aux_loss=aux_loss,
        )

    # ------------------------------------------------------------------------------------------------ saving
    def _merge_auto_map(self) -> None:
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.update(self._auto_map)
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

    def _adapter_export_payload(self) -> dict:
        """What `adapter_config.json` records: the class, the CLIP it is for, the classes and the prompt settings."""
        return {
            "peft_type": PROMPT_CLIP_PEFT_TYPE,
            "task_type": "IMAGE_CLASSIFICATION",
            "base_model_name_or_path": self.config.base_model_name_or_path,
            "model_class": type(self).__name__,
            "class_names": self.config.class_names,
            "template": self.config.template,
            "use_learnable_context": self.config.use_learnable_context,
            "n_ctx": self.config.n_ctx,
            "ctx_init": self.config.ctx_init,
        }

    def save_adapter(self, save_directory: str | os.PathLike) -> None:
        """Export only the trained parts in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`.

        The config records the model class, `base_model_name_or_path`, the class names and the prompt settings, so
        `from_adapter` rebuilds the same classifier on a plain CLIP checkpoint.
        """
        from safetensors.torch import save_file

        os.makedirs(save_directory, exist_ok=True)
        payload = self._adapter_export_payload()
        state = {k: v.detach().contiguous().cpu() for k, v in self.adapter_state_dict().items()}
        _atomic_write(os.path.join(save_directory, ADAPTER_WEIGHTS_NAME), lambda path: save_file(state, path))

        def write_config(path):
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(payload, indent=2, sort_keys=True))

        _atomic_write(os.path.join(save_directory, ADAPTER_CONFIG_NAME), write_config)

    @classmethod
    def _config_overrides_from_adapter_export(cls, payload: dict) -> dict:
        """Config fields for `from_clip` from what remains of an export's config once the common fields are read."""
        unknown = sorted(set(payload) - {"peft_type", "task_type", "base_model_name_or_path"})
        if unknown:
            raise ValueError(f"Unknown fields in a {cls.__name__} adapter export: {unknown}")
        return {}

    @classmethod
    def _export_class(cls, name: str | None, adapter_directory) -> type:
        """The class an export of `name` loads as: `cls` when it is that class or a subclass (a head sharing its
        weights), else the class of that name among the loaded models of this family."""
        if name is None or any(klass.__name__ == name for klass in cls.__mro__):
            return cls
        pending = [PromptCLIPPreTrainedModel]
        while pending:
            klass = pending.pop()
            if klass.__name__ == name:
                return klass
            pending.extend(klass.__subclasses__())
        raise ValueError(f"{adapter_directory} is an export of {name}, which is not loaded (import the module that "
                         "defines it)")

    @classmethod
    def from_adapter(
        cls, adapter_directory: str | os.PathLike, clip: CLIPModel | str | None = None, tokenizer=None, **kwargs
    ) -> "PromptCLIPModel":
        """Load an adapter export onto a plain CLIP (`clip`, or the export's `base_model_name_or_path`), as the model
        class that wrote it (or `cls`, when `cls` is that class or a subclass of it)."""
        from safetensors.torch import load_file

        with open(os.path.join(adapter_directory, ADAPTER_CONFIG_NAME), encoding="utf-8") as handle:
            payload = json.load(handle)
        target = cls._export_class(payload.pop("model_class", None), adapter_directory)
        class_names = payload.pop("class_names")
        overrides = {k: payload.pop(k) for k in ("template", "use_learnable_context", "n_ctx", "ctx_init")}
        fixed = sorted(k for k in ("use_learnable_context", "n_ctx", "ctx_init") if k in kwargs)
        if fixed:
            raise ValueError(f"{fixed} are set by the adapter export in {adapter_directory}; they cannot be overridden")
        if "template" in kwargs:  # the export's template is a default: another prompt wording is a valid choice
            overrides["template"] = kwargs.pop("template")
        base = payload.get("base_model_name_or_path")
        if clip is None:
            if not base:
                raise ValueError(f"{adapter_directory} names no base_model_name_or_path; pass clip=...")
            clip = base
        overrides.update(target._config_overrides_from_adapter_export(payload))
        model = target.from_clip(clip, class_names, tokenizer=tokenizer, **overrides, **kwargs)
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


class PromptCLIPForImageClassification(PromptCLIPModel):
    """[`PromptCLIPModel`] for the `image-classification` pipeline and training: returns `loss` when `labels` are
    given. The two classes share one set of weights: a checkpoint of either loads into the other."""


class PromptCLIPForZeroShotImageClassification(PromptCLIPForImageClassification):
    """The same model, registered for `AutoModelForZeroShotImageClassification` (the zero-shot pipeline)."""


def _tower_layer_of(path: str, tower: str) -> int | None:
    """The first layer of `tower` a module at `path` changes: its encoder layer, 0 for the embeddings, the
    pre-layernorm or the whole tower, `None` for a module outside the tower or after its layers."""
    root = {"vision": "clip.vision_model", "text": "clip.text_model"}[tower]
    if path in ("clip", root, f"{root}.encoder", f"{root}.encoder.layers"):
        return 0
    if not path.startswith(root + "."):
        return None
    rest = path[len(root) + 1 :]
    match = re.match(r"encoder\.layers\.(\d+)(\.|$)", rest)
    if match:
        return int(match.group(1))
    if rest.split(".")[0] in ("embeddings", "pre_layrnorm"):
        return 0
    return None


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


def _check_distinct_prompts(class_names: list[str], input_ids: torch.Tensor, text_length: int) -> None:
    """Refuse classes whose prompts tokenise identically: their text features are equal, so the model cannot tell
    them apart and silently scores chance between them. Names that differ only in case (CLIP's tokenizer lower-cases)
    or only past the text context (`text_length` tokens, the rest truncated) do this."""
    first_of: dict[tuple, str] = {}
    pairs = []
    for name, ids in zip(class_names, input_ids.tolist()):
        earlier = first_of.setdefault(tuple(ids), name)
        if earlier is not name:
            pairs.append((earlier, name))
    if pairs:
        listed = "; ".join(f"{a!r} and {b!r}" for a, b in pairs[:5])
        more = f" (and {len(pairs) - 5} more pairs)" if len(pairs) > 5 else ""
        raise ValueError(
            f"class names whose prompts tokenise identically, so the model cannot tell them apart: {listed}{more}. "
            f"They are equal after the tokenizer's lower-casing, or differ only past the {text_length}-token text "
            "context; rename them so they differ early, in more than case."
        )


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


PromptCLIPConfig.register_for_auto_class()
PromptCLIPModel.register_for_auto_class("AutoModel")
PromptCLIPForImageClassification.register_for_auto_class("AutoModelForImageClassification")
PromptCLIPForZeroShotImageClassification.register_for_auto_class("AutoModelForZeroShotImageClassification")

__all__ = [
    "PromptCLIPContext",
    "PromptCLIPForImageClassification",
    "PromptCLIPForZeroShotImageClassification",
    "PromptCLIPImageClassifierOutput",
    "PromptCLIPLayerState",
    "PromptCLIPModel",
    "PromptCLIPPreTrainedModel",
    "replace_context_tokens",
    "load_image_processor",
]
