"""Frozen-prefix cache: the vision tower's frozen layers run once per training image, not once per epoch.

A model declares how many leading layers of each tower no trainable part or layer hook touches
(`model.frozen_vision_prefix()`, `model.frozen_text_prefix()`): CAPT adapts only the last vision layers
(`--layers_to_transform -2,-1`), CoOp none, a method with layer hooks starts at its first hooked layer. Everything below
that layer is frozen CLIP, so its output for a training image never changes during training: this module computes the
hidden states entering layer `start_layer = model.frozen_vision_prefix()` once, under `torch.inference_mode`, and the
trainer resumes the vision tower from them with `model(hidden_states=..., start_layer=...)`. Every token is kept,
except when no vision layer is touched (`start_layer == num_layers`) and the model reads only the CLS token after the
tower (`model.reads_only_cls_token`): then only the CLS token is kept.

The class text features are cached by the model itself (`PromptCLIPModel.get_class_text_features`). When text layer
hooks make them change during training, [`TextPrefixCache`] keeps the class prompts' hidden states entering the first
hooked text layer, so a training step runs only the text layers from there on.

Entries are keyed by training-set row index (the `indices` of a training batch, which are also the indices of CAPT's
representative samples). They stay in memory below a size threshold, else they are written to disk as safetensors
shards (never pickle) with a JSON description holding a fingerprint of everything they depend on: the frozen
prefix's weights (embeddings, pre-layernorm, layers below `start_layer`) and the vision config's settings (activation,
layer-norm epsilon, ...), the image processor's settings,
`start_layer` and the tokens kept, the training set, and the precision it was computed in (Accelerate's mixed
precision, the device). A disk cache whose fingerprint differs is rebuilt, so a changed backbone, image processor,
adapter or hook placement or few-shot sample never reads stale activations.

Random augmentation would make the frozen activations differ every epoch, and dropout in the frozen layers
(`attention_dropout > 0` in the vision config) every step; the cache then refuses (`mode` given explicitly) or steps
aside (`mode="auto"`).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dataset_scripts.atomic_io import give_usual_permissions, write_json_atomic
from dataset_scripts.data import ImageClassificationCollator, IndexedImageDataset


logger = logging.getLogger(__name__)

MODES = ("auto", "memory", "disk", "off")
CACHE_INFO_NAME = "prefix_cache.json"
SHARD_PATTERN = "prefix-{:05d}.safetensors"
CACHE_FORMAT_VERSION = 1
# `auto` keeps the cache in memory up to this size (per process), and goes to disk above it.
DEFAULT_MEMORY_LIMIT_BYTES = 2 * 1024**3
# Disk shards hold about this many bytes each.
DEFAULT_SHARD_BYTES = 256 * 1024**2


# ------------------------------------------------------------------------------------------------ what is frozen
def _vision_layers(model) -> torch.nn.ModuleList:
    return model.clip.vision_model.encoder.layers


def prefix_start_layer(model) -> int:
    """The first vision layer whose output training can change: `model.frozen_vision_prefix()` (the lowest layer a
    trainable part or a layer hook touches, or `num_layers` if none).

    Raises a `ValueError` when a parameter of the prefix (embeddings, pre-layernorm, layers below it) is trainable
    although the model does not declare it: its activations could then not be cached.
    """
    start_layer = model.frozen_vision_prefix()
    trainable = [name for name, param in _prefix_state(model, start_layer, parameters_only=True) if param.requires_grad]
    if trainable:
        raise ValueError(f"The frozen-prefix cache needs a frozen prefix, but these parameters train: {trainable[:5]}")
    return start_layer


def keeps_only_cls_token(model, start_layer: int) -> bool:
    """Whether cached entries hold only the CLS token: nothing runs after the cached layers and the model pools the
    CLS token alone."""
    return start_layer == len(_vision_layers(model)) and getattr(model, "reads_only_cls_token", True)


def prefix_dropout_modules(model, start_layer: int) -> list[str]:
    """Names of the prefix's modules that drop out in training mode (CLIP's `attention_dropout`, an `nn.Dropout`).

    The uncached training forward runs the frozen layers in training mode, so their activations then differ at every
    step: cached ones (computed once, in eval mode) would change the training.
    """
    vision = model.clip.vision_model
    modules = [("embeddings", vision.embeddings), ("pre_layrnorm", vision.pre_layrnorm)]
    modules += [(f"encoder.layers.{i}", layer) for i, layer in enumerate(_vision_layers(model)[:start_layer])]
    return _dropout_modules(modules)


def _prefix_state(model, start_layer: int, parameters_only: bool = False):
    """`(name, tensor)` of the embeddings, the pre-layernorm and the vision layers below `start_layer`."""
    vision = model.clip.vision_model
    modules = [("embeddings", vision.embeddings), ("pre_layrnorm", vision.pre_layrnorm)]
    modules += [(f"encoder.layers.{i}", layer) for i, layer in enumerate(_vision_layers(model)[:start_layer])]
    for prefix, module in modules:
        items = module.named_parameters() if parameters_only else module.state_dict(keep_vars=True).items()
        for name, tensor in items:
            yield f"{prefix}.{name}", tensor


def prefix_fingerprint(model, start_layer: int, image_processor, dataset=None, accelerator=None,
                       cls_only: bool | None = None) -> str:
    """A SHA-256 of what the cached activations depend on (see the module docstring).

    `accelerator` supplies the autocast the activations are computed under (`mixed_precision`): a cache computed in
    bf16 must not be read by an fp32 run. `cls_only` (default: [`keeps_only_cls_token`]) says which tokens are kept.
    """
    digest = hashlib.sha256()
    if cls_only is None:
        cls_only = keeps_only_cls_token(model, start_layer)
    described = {
        "format": CACHE_FORMAT_VERSION,
        "start_layer": int(start_layer),
        "tokens": "cls" if cls_only else "all",
        "num_layers": len(_vision_layers(model)),
        "image_processor": image_processor.to_dict() if image_processor is not None else None,
        "attn_implementation": getattr(model.config.clip_config.vision_config, "_attn_implementation", None),
        # settings that are no weights but change the layers' outputs: `hidden_act`, `layer_norm_eps`, the heads...
        "vision_config": _vision_settings(model),
        "mixed_precision": str(getattr(accelerator, "mixed_precision", "no")),
        "device": _model_device(model).type,
    }
    if dataset is not None:
        # `datasets` fingerprints every dataset by its source files and the transforms applied (`select`, ...).
        described["dataset"] = {"rows": len(dataset), "fingerprint": getattr(dataset, "_fingerprint", None)}
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    for name, tensor in _prefix_state(model, start_layer):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# Config fields that describe a checkpoint, not how the vision tower computes (weights' dtype is hashed with them).
_DESCRIPTIVE_CONFIG_KEYS = {
    "_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype", "id2label", "label2id",
    "problem_type", "output_hidden_states", "output_attentions", "return_dict", "initializer_range",
    "initializer_factor",
}


def _vision_settings(model) -> dict:
    """The vision tower's config, less the fields that do not change its activations."""
    settings = model.clip.vision_model.config.to_dict()
    return {key: value for key, value in settings.items() if key not in _DESCRIPTIVE_CONFIG_KEYS}


@torch.inference_mode()
def compute_prefix(model, pixel_values: torch.Tensor, start_layer: int, cls_only: bool | None = None) -> torch.Tensor:
    """Hidden states entering vision layer `start_layer`, every token; only the CLS token when `cls_only` (default:
    [`keeps_only_cls_token`], i.e. no layer runs after them and the model pools the CLS token alone)."""
    if cls_only is None:
        cls_only = keeps_only_cls_token(model, start_layer)
    if cls_only and start_layer != len(_vision_layers(model)):
        raise ValueError(f"Only the CLS token cannot be cached when vision layers {start_layer}.. still run")
    hidden = model.encode_image_hidden(pixel_values, end_layer=start_layer)
    if cls_only:
        hidden = hidden[:, :1]  # nothing but the pooled CLS token is read after the last layer
    return hidden.contiguous()


# ------------------------------------------------------------------------------------------------ storage
class _MemoryStore:
    def __init__(self, hidden_states: torch.Tensor):
        self.hidden_states = hidden_states

    def fetch(self, rows: torch.Tensor) -> torch.Tensor:
        return self.hidden_states[rows]


class _DiskStore:
    """Shards of `shard_rows` consecutive rows, read through memory-mapped safetensors handles."""

    def __init__(self, directory: str, info: dict):
        self.shard_rows = int(info["shard_rows"])
        self.handles = [
            safe_open(os.path.join(directory, SHARD_PATTERN.format(shard)), framework="pt")
            for shard in range(int(info["num_shards"]))
        ]

    def fetch(self, rows: torch.Tensor) -> torch.Tensor:
        parts = []
        for row in rows.tolist():
            shard, offset = divmod(row, self.shard_rows)
            parts.append(self.handles[shard].get_slice("hidden_states")[offset : offset + 1])
        return torch.cat(parts)


# ------------------------------------------------------------------------------------------------ the cache
class FrozenPrefixCache:
    """Hidden states entering vision layer `start_layer` for every training row, in memory or on disk.

    Build it with [`FrozenPrefixCache.build`]; then `cache.model_inputs(batch["indices"], device)` gives the keyword
    arguments (`hidden_states`, `start_layer`) that replace `pixel_values` in the model's forward.

    Args:
        store: `_MemoryStore` or `_DiskStore`.
        start_layer (`int`): the vision layer the cached hidden states enter.
        num_rows (`int`): number of training rows.
        fingerprint (`str`): see [`prefix_fingerprint`].
        location (`str`): `"memory"` or the cache folder.
    """

    def __init__(self, store, start_layer: int, num_rows: int, fingerprint: str, location: str):
        self.store = store
        self.start_layer = start_layer
        self.num_rows = num_rows
        self.fingerprint = fingerprint
        self.location = location

    def __len__(self) -> int:
        return self.num_rows

    @property
    def on_disk(self) -> bool:
        return isinstance(self.store, _DiskStore)

    def fetch(self, indices: torch.Tensor) -> torch.Tensor:
        """Cached hidden states of the training rows `indices` (any shape), `(indices.numel(), tokens, D)`, CPU."""
        rows = torch.as_tensor(indices).reshape(-1).long().cpu()
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= self.num_rows):
            raise KeyError(f"The frozen-prefix cache holds rows 0..{self.num_rows - 1}, got {rows.tolist()[:5]}...")
        return self.store.fetch(rows)

    def model_inputs(self, indices: torch.Tensor, device: torch.device | str | None = None) -> dict:
        """`{"hidden_states": ..., "start_layer": ...}` for `model(**inputs, ...)`, on `device`."""
        hidden = self.fetch(indices)
        if device is not None:
            hidden = hidden.to(device, non_blocking=True)
        return {"hidden_states": hidden, "start_layer": self.start_layer}

    # ---------------------------------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        model,
        dataset,
        image_processor,
        mode: str = "auto",
        cache_dir: str | None = None,
        batch_size: int = 64,
        accelerator=None,
        memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        augment: bool = False,
        keep_all_tokens: bool = False,
    ) -> "FrozenPrefixCache | None":
        """Compute (or reuse from disk) the frozen prefix of every row of `dataset`; `None` when the cache is off.

        Args:
            model (`CaptModel`):
                The model to be trained (unwrapped), on its training device. Its prefix must be frozen.
            dataset (`datasets.Dataset` or `IndexedImageDataset`):
                The training rows, in index order.
            image_processor:
                The CLIP image processor the training batches would use.
            mode (`str`, *optional*, defaults to `"auto"`):
                `"memory"`, `"disk"`, `"auto"` (memory up to `memory_limit_bytes`, else disk) or `"off"`.
            cache_dir (`str`, *optional*):
                Folder of the disk cache; needed unless the cache stays in memory.
            batch_size (`int`, *optional*, defaults to 64):
                Images per forward while computing.
            accelerator (`Accelerator`, *optional*):
                Computes under its autocast (so the cached activations are those of the uncached mixed-precision
                forward); with several processes the main one writes the disk cache and the others wait.
            augment (`bool`, *optional*, defaults to `False`):
                Whether training augments its images: then cached activations would be stale. An explicit `mode`
                raises, `"auto"` returns `None` (no cache).
            keep_all_tokens (`bool`, *optional*, defaults to `False`):
                Keep every token even where only the CLS token would be read (see [`keeps_only_cls_token`]).
        """
        if mode not in MODES:
            raise ValueError(f"prefix cache mode must be one of {MODES}, got {mode!r}")
        if mode == "off":
            return None
        if augment:
            if mode == "auto":
                logger.info("frozen-prefix cache off: image augmentation changes the frozen activations every epoch")
                return None
            raise ValueError(f"--prefix_cache {mode} cannot be used with image augmentation (use auto or off)")
        rows = dataset if isinstance(dataset, IndexedImageDataset) else IndexedImageDataset(dataset, "train")
        start_layer = prefix_start_layer(model)
        cls_only = not keep_all_tokens and keeps_only_cls_token(model, start_layer)
        dropout = prefix_dropout_modules(model, start_layer)
        if dropout:
            reason = (f"the frozen layers below vision layer {start_layer} drop out in training ({dropout[0]}: "
                      "attention_dropout > 0), so their activations differ at every step")
            if mode == "auto":
                logger.info("frozen-prefix cache off: %s", reason)
                return None
            raise ValueError(f"--prefix_cache {mode} cannot be used here: {reason} (use auto or off)")
        num_rows = len(rows)
        if num_rows == 0:
            raise ValueError("The frozen-prefix cache needs at least one training row")
        row_shape, dtype = _entry_shape_and_dtype(model, rows, image_processor, start_layer, cls_only, accelerator)
        entry_bytes = _numel(row_shape) * dtype.itemsize
        total_bytes = entry_bytes * num_rows
        if mode == "auto":
            mode = "memory" if total_bytes <= memory_limit_bytes else "disk"
        if mode == "disk" and not cache_dir:
            raise ValueError("The disk frozen-prefix cache needs a folder (--prefix_cache_dir)")
        fingerprint = prefix_fingerprint(model, start_layer, image_processor, rows.dataset, accelerator, cls_only)
        described = (
            f"{num_rows} rows x {tuple(row_shape)} {str(dtype).replace('torch.', '')} = {total_bytes / 2**20:.1f} MiB, "
            f"entering vision layer {start_layer}"
        )
        if mode == "memory":
            hidden = torch.empty((num_rows, *row_shape), dtype=dtype)
            for start, chunk in _compute_batches(model, rows, image_processor, start_layer, cls_only, batch_size,
                                                 accelerator):
                hidden[start : start + chunk.shape[0]] = chunk
            logger.info("frozen-prefix cache in memory: %s", described)
            return cls(_MemoryStore(hidden), start_layer, num_rows, fingerprint, "memory")

        shard_rows = max(1, shard_bytes // entry_bytes)
        is_main = accelerator is None or accelerator.is_main_process
        info = _read_info(cache_dir)
        if is_main and not _disk_cache_valid(cache_dir, info, fingerprint, num_rows):
            if info is not None:
                logger.info("frozen-prefix cache in %s is stale (backbone, image processor, adapted layers or "
                            "training set changed): rebuilding", cache_dir)
            _write_disk_cache(model, rows, image_processor, start_layer, cls_only, batch_size, accelerator, cache_dir,
                              fingerprint, shard_rows, row_shape, dtype)
        elif is_main:
            logger.info("frozen-prefix cache: reusing %s", cache_dir)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        info = _read_info(cache_dir)
        if not _disk_cache_valid(cache_dir, info, fingerprint, num_rows):
            raise RuntimeError(f"The frozen-prefix cache in {cache_dir} does not match this run after building it")
        logger.info("frozen-prefix cache on disk (%s): %s", cache_dir, described)
        return cls(_DiskStore(cache_dir, info), start_layer, num_rows, fingerprint, cache_dir)


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


def _autocast(accelerator):
    return accelerator.autocast() if accelerator is not None else contextlib.nullcontext()


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _entry_shape_and_dtype(model, rows, image_processor, start_layer, cls_only, accelerator):
    pixel_values = rows.pixel_values([0], image_processor).to(_model_device(model))
    was_training = model.training
    model.eval()
    try:
        with _autocast(accelerator):
            entry = compute_prefix(model, pixel_values, start_layer, cls_only)
    finally:
        model.train(was_training)
    return tuple(entry.shape[1:]), entry.dtype


def _compute_batches(model, rows, image_processor, start_layer, cls_only, batch_size, accelerator):
    """Yield `(first_row, hidden_states on CPU)` over the rows in order.

    The loader draws its worker seed from a private generator: building the cache must not consume the global random
    state, or training with the cache would draw different MGDE noise than training without it.
    """
    loader = torch.utils.data.DataLoader(
        rows, batch_size=batch_size, shuffle=False, collate_fn=ImageClassificationCollator(image_processor, "train"),
        generator=torch.Generator(),
    )
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            with _autocast(accelerator):
                hidden = compute_prefix(model, batch["pixel_values"].to(device), start_layer, cls_only)
            yield int(batch["indices"][0]), hidden.cpu()
    finally:
        model.train(was_training)


def _read_info(cache_dir: str | None) -> dict | None:
    path = os.path.join(cache_dir, CACHE_INFO_NAME) if cache_dir else None
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _disk_cache_valid(cache_dir, info, fingerprint, num_rows) -> bool:
    """Whether the cache in `cache_dir` is this run's: its description, and every shard's header.

    The shards are checked too (each names the fingerprint it was computed for, and holds its share of the rows): a
    truncated or unreadable shard, or one another run wrote into the same folder at the same time, reads as stale and
    is rebuilt rather than failing the run or feeding it another run's activations.
    """
    if not isinstance(info, dict) or info.get("format") != CACHE_FORMAT_VERSION:
        return False
    if info.get("fingerprint") != fingerprint or info.get("num_rows") != num_rows:
        return False
    try:
        shard_rows, num_shards = int(info["shard_rows"]), int(info["num_shards"])
        entry_shape = [int(size) for size in info["entry_shape"]]
    except (KeyError, TypeError, ValueError):
        return False
    if shard_rows < 1 or num_shards != -(-num_rows // shard_rows):
        return False
    for shard in range(num_shards):
        rows = min(shard_rows, num_rows - shard * shard_rows)
        try:
            with safe_open(os.path.join(cache_dir, SHARD_PATTERN.format(shard)), framework="pt") as handle:
                if (handle.metadata() or {}).get("fingerprint") != fingerprint:
                    return False
                if list(handle.get_slice("hidden_states").get_shape()) != [rows, *entry_shape]:
                    return False
        except Exception:  # a missing, truncated or foreign file: safetensors raises its own error types
            return False
    return True


def _write_disk_cache(model, rows, image_processor, start_layer, cls_only, batch_size, accelerator, cache_dir,
                      fingerprint, shard_rows, row_shape, dtype):
    """Write the shards into a staging folder, then swap it in: an interrupted build leaves no half cache behind."""
    os.makedirs(cache_dir, exist_ok=True)
    staging = os.path.join(cache_dir, f".staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    metadata = {"fingerprint": fingerprint, "start_layer": str(start_layer)}
    pending, pending_rows, shard = [], 0, 0

    def flush():
        nonlocal pending, pending_rows, shard
        if pending:
            save_file({"hidden_states": torch.cat(pending).contiguous()},
                      os.path.join(staging, SHARD_PATTERN.format(shard)), metadata=metadata)
            pending, pending_rows, shard = [], 0, shard + 1

    try:
        for _, hidden in _compute_batches(model, rows, image_processor, start_layer, cls_only, batch_size,
                                          accelerator):
            while hidden.shape[0]:
                take = min(shard_rows - pending_rows, hidden.shape[0])
                pending.append(hidden[:take])
                pending_rows += take
                hidden = hidden[take:]
                if pending_rows == shard_rows:
                    flush()
        flush()
        info = {
            "format": CACHE_FORMAT_VERSION,
            "fingerprint": fingerprint,
            "start_layer": start_layer,
            "num_rows": len(rows),
            "shard_rows": shard_rows,
            "num_shards": shard,
            "entry_shape": list(row_shape),
            "dtype": str(dtype).replace("torch.", ""),
        }
        # Replace the old cache: its description first (so a crash in between reads as stale), then the shards.
        info_path = os.path.join(cache_dir, CACHE_INFO_NAME)
        if os.path.exists(info_path):
            os.remove(info_path)
        for old in glob.glob(os.path.join(cache_dir, SHARD_PATTERN.replace("{:05d}", "*"))):
            os.remove(old)
        give_usual_permissions(staging)  # safetensors writes 0600 files
        for name in sorted(os.listdir(staging)):
            os.replace(os.path.join(staging, name), os.path.join(cache_dir, name))
        write_json_atomic(info_path, info)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ text side
class TextPrefixCache:
    """Hidden states of the model's class prompts entering text layer `start_layer = model.frozen_text_prefix()`.

    Only useful when text layer hooks (or trainable text layers) make the class text features change during training,
    so that the model recomputes them in every step: the layers below the first hooked one are frozen and see the same
    class prompts every time. With no text hook there is nothing to cache (the model caches the final class features
    itself), and with a CoOp context neither (it enters at the token embeddings): [`TextPrefixCache.build`] returns
    `None` then. `cache.model_inputs(model)` gives the keyword arguments (`text_hidden_states`, `text_start_layer`)
    for `model(...)` or `model.get_class_text_features(...)`.

    Args:
        hidden_states (`torch.Tensor` of shape `(num_classes, text_length, width)`): the cached hidden states.
        start_layer (`int`): the text layer they enter.
        class_input_ids (`torch.LongTensor`): the class prompts they were computed for.
    """

    def __init__(self, hidden_states: torch.Tensor, start_layer: int, class_input_ids: torch.Tensor):
        self.hidden_states = hidden_states
        self.start_layer = start_layer
        self.class_input_ids = class_input_ids

    @classmethod
    def build(cls, model, accelerator=None, chunk_size: int = 256) -> "TextPrefixCache | None":
        """Compute the class prompts' text prefix of `model` (unwrapped, on its device), or `None` when there is
        nothing to cache, or when the frozen text layers drop out in training (their outputs then differ per step)."""
        text = model.clip.text_model
        num_layers = len(text.encoder.layers)
        start_layer = model.frozen_text_prefix()
        if start_layer in (0, num_layers):
            reason = "a learnable context or a hook enters at the first text layer" if start_layer == 0 else (
                "no text layer is hooked or trained (the model caches its class text features itself)")
            logger.info("text prefix cache off: %s", reason)
            return None
        modules = [("embeddings", text.embeddings)]
        modules += [(f"encoder.layers.{i}", layer) for i, layer in enumerate(text.encoder.layers[:start_layer])]
        trainable = [f"{prefix}.{name}" for prefix, module in modules for name, param in module.named_parameters()
                     if param.requires_grad]
        if trainable:
            raise ValueError(f"The text prefix cache needs a frozen prefix, but these parameters train: "
                             f"{trainable[:5]}")
        if _dropout_modules(modules):
            logger.info("text prefix cache off: the frozen text layers below %d drop out in training", start_layer)
            return None
        was_training = model.training
        model.eval()
        chunks = []
        try:
            with torch.no_grad(), _autocast(accelerator):  # no_grad, not inference_mode: training steps read them
                for start in range(0, model.class_input_ids.shape[0], chunk_size):
                    rows = slice(start, start + chunk_size)
                    hidden, _, _ = model.encode_text_hidden(
                        model.class_input_ids[rows], model.class_attention_mask[rows], end_layer=start_layer
                    )
                    chunks.append(hidden)
        finally:
            model.train(was_training)
        hidden_states = torch.cat(chunks)
        logger.info("text prefix cache: %d class prompts x %s entering text layer %d", hidden_states.shape[0],
                    tuple(hidden_states.shape[1:]), start_layer)
        return cls(hidden_states, start_layer, model.class_input_ids.detach().clone())

    def model_inputs(self, model) -> dict:
        """`{"text_hidden_states": ..., "text_start_layer": ...}` for `model`; refuses a model whose class prompts
        changed since the cache was built (`set_class_names`)."""
        if not torch.equal(model.class_input_ids.to(self.class_input_ids.device), self.class_input_ids):
            raise ValueError("The text prefix cache was built for other class prompts: rebuild it after "
                             "set_class_names")
        return {"text_hidden_states": self.hidden_states, "text_start_layer": self.start_layer}


def _dropout_modules(modules) -> list[str]:
    found = []
    for prefix, module in modules:
        for name, sub in module.named_modules(prefix=prefix):
            rate = sub.p if isinstance(sub, torch.nn.Dropout) else getattr(sub, "dropout", None)
            if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
                found.append(name)
    return found


def rows_loader(dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0):
    """A training loader of `{labels, indices}` only (no image decoding), drawn exactly as the trainer's image loader.

    Same length, batch size and seeded sampler as `dataset_scripts.data.make_loader`, so the batches hold the same rows in the
    same order as without the cache.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        _RowLabels(dataset),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=_collate_rows,
        generator=generator if shuffle else None,
    )


class _RowLabels(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.labels = list(dataset["label"])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"label": self.labels[index], "index": int(index)}


def _collate_rows(rows):
    return {
        "labels": torch.tensor([row["label"] for row in rows], dtype=torch.long),
        "indices": torch.tensor([row["index"] for row in rows], dtype=torch.long),
    }


__all__ = [
    "FrozenPrefixCache", "MODES", "TextPrefixCache", "compute_prefix", "keeps_only_cls_token", "prefix_dropout_modules",
    "prefix_fingerprint", "prefix_start_layer", "rows_loader",
]
