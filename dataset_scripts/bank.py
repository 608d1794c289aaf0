"""The Confusion Bank of CAPT: what a base model thought of every training image, and how it is built and checked.

`CaptConfusionBank` holds, per training sample, the base model's class probabilities and its frozen image embedding
(paper Eq. 8), with the off-diagonal confusion matrix and per-class candidate pools derived from them. `build_bank`
runs a base model over the training rows; `check_bank_matches_training_set` refuses a bank of other data. Its
Parquet / Hub form is in `dataset_scripts/confusion_bank.py`; what CAPT mines from it is in `trainers/confusion.py`.
Training-side only: nothing here ships with a model checkpoint.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dataset_scripts.data import make_loader
from dataset_scripts.data_fingerprint import fingerprint_scheme, training_set_fingerprint
from modeling_capt.configuration_capt import DEFAULT_TEMPLATE
from modeling_capt.diff_manner import adapters_disabled


logger = logging.getLogger(__name__)


_BANK_FIELDS = ("indices", "labels", "probs", "embeds")
_FALLBACKS = ("class", "none")


def compute_confusion_matrix(
    labels: torch.Tensor, preds: torch.Tensor, num_classes: int, include_diagonal: bool = False
) -> torch.Tensor:
    r"""Counts of samples of true class `a` predicted as class `b`.

    Args:
        labels (`torch.LongTensor` of shape `(N,)`):
            True classes.
        preds (`torch.LongTensor` of shape `(N,)`):
            Predicted classes.
        num_classes (`int`):
            `K`.
        include_diagonal (`bool`, *optional*, defaults to `False`):
            Keep the correctly classified counts on the diagonal. The Confusion Bank's matrix is off-diagonal.

    Returns:
        `torch.LongTensor` of shape `(K, K)`: `M[a, b]`.
    """
    labels = labels.reshape(-1).long()
    preds = preds.reshape(-1).long()
    flat = torch.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    matrix = flat.view(num_classes, num_classes)
    if not include_diagonal:
        matrix = matrix.clone()
        matrix.fill_diagonal_(0)
    return matrix


def _csr_by_class(rows: torch.Tensor, classes: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort `rows` by class (stable, so by row within a class) and return them with the class offsets `[K + 1]`."""
    order = torch.argsort(classes, stable=True)
    counts = torch.bincount(classes, minlength=num_classes)
    ptr = torch.zeros(num_classes + 1, dtype=torch.long, device=rows.device)
    ptr[1:] = torch.cumsum(counts, 0)
    return rows[order], ptr


class CaptConfusionBank(nn.Module):
    r"""The Confusion Bank of CAPT: what a base model thought of every training sample (METHODS.md section 1).

    A `nn.Module` holding only buffers, so `state_dict` / `load_state_dict` save and restore it and Accelerate can
    checkpoint it with `accelerator.register_for_checkpointing(bank)`. Loading a state dict resizes the buffers to
    the saved shapes and recomputes the derived index; loading a bank of another class list or template into a
    bank that already has one raises a `ValueError`.

    Stored per sample, in rows sorted by dataset index (persistent buffers):

    - `indices` (`torch.LongTensor` of shape `(N,)`): the sample's index in the training set;
    - `labels` (`torch.LongTensor` of shape `(N,)`): its true class `y_j`;
    - `probs` (`torch.FloatTensor` of shape `(N, K)`): the base model's `softmax(logit_scale * cos)` over the `K`
      training classes, `C_j`;
    - `preds` (`torch.LongTensor` of shape `(N,)`): `argmax C_j`;
    - `embeds` (`torch.FloatTensor` of shape `(N, P)`): its L2-normalised frozen image embedding `e_j`.

    Derived once, on construction and on load (non-persistent buffers, moved by `.to()`):

    - `confusion_matrix` (`torch.LongTensor` of shape `(K, K)`): `M[a, b]`, samples of true class `a` predicted
      `b`, diagonal zeroed;
    - the misclassified rows of each class (`misclassified_rows(c)`);
    - the Sample Confusion Miner's candidate pools (`pool_rows(c)`): the misclassified samples whose true label is
      `c`, or, when there are none and `fallback="class"`, every sample of class `c`.

    Args:
        class_names (`Sequence[str]`, *optional*):
            The training classes, in label order.
        template (`str`, *optional*, defaults to `"a photo of a {}."`):
            The prompt template the base model's class text features were built from.
        base_model (`str`, *optional*, defaults to `""`):
            Identity of the base model (a Hub id, a path, or a description such as `"zero-shot openai/clip-..."`).
        fallback (`str`, *optional*, defaults to `"class"`):
            Candidate pool of a class with no misclassified sample: `"class"` (all its samples) or `"none"` (empty;
            retrieving for that class is then an error).
        semantic_prompts (*optional*):
            JSON-like data (dicts, lists, strings, numbers) holding the semantic prompts generated for the
            confusion pairs; kept with the bank, never recomputed per step.
        data_fingerprint (`str`, *optional*):
            Content fingerprint of the training set the bank was built from (its images' bytes and labels, in
            order; `dataset_scripts.data_fingerprint.training_set_fingerprint`), so that a bank of other images with
            the same labels (another few-shot draw) can be told apart. `None`: not recorded (an older bank).

    Build one with `CaptConfusionBank.from_tensors(...)` or `CaptConfusionBank.build(batches, ...)`; an empty
    `CaptConfusionBank()` is a target for `load_state_dict`.
    """

    indices: torch.Tensor
    labels: torch.Tensor
    probs: torch.Tensor
    preds: torch.Tensor
    embeds: torch.Tensor
    confusion_matrix: torch.Tensor

    def __init__(
        self,
        class_names: Sequence[str] = (),
        template: str = DEFAULT_TEMPLATE,
        base_model: str = "",
        fallback: str = "class",
        semantic_prompts: Any = None,
        data_fingerprint: str | None = None,
    ):
        super().__init__()
        if fallback not in _FALLBACKS:
            raise ValueError(f"fallback must be one of {_FALLBACKS}, got {fallback!r}")
        self.class_names = [str(name) for name in class_names]
        self.template = template
        self.base_model = base_model
        self.fallback = fallback
        self.semantic_prompts = semantic_prompts
        self.data_fingerprint = data_fingerprint
        num_classes = len(self.class_names)
        self.register_buffer("indices", torch.zeros(0, dtype=torch.long))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("probs", torch.zeros(0, num_classes))
        self.register_buffer("preds", torch.zeros(0, dtype=torch.long))
        self.register_buffer("embeds", torch.zeros(0, 0))
        self._build_index()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tensors(
        cls,
        indices: torch.Tensor,
        labels: torch.Tensor,
        probs: torch.Tensor,
        embeds: torch.Tensor,
        class_names: Sequence[str],
        template: str = DEFAULT_TEMPLATE,
        base_model: str = "",
        fallback: str = "class",
        semantic_prompts: Any = None,
        normalize_embeds: bool = True,
        data_fingerprint: str | None = None,
    ) -> "CaptConfusionBank":
        r"""Build a bank from whole tensors.

        Args:
            indices (`torch.LongTensor` of shape `(N,)`):
                Training-set index of each sample; must be unique.
            labels (`torch.LongTensor` of shape `(N,)`):
                True classes, in `[0, K)`.
            probs (`torch.FloatTensor` of shape `(N, K)`):
                The base model's class probabilities (rows sum to 1; logits are rejected).
            embeds (`torch.FloatTensor` of shape `(N, P)`):
                Frozen image embeddings.
            class_names (`Sequence[str]`):
                The `K` training classes, in label order.
            template (`str`, *optional*, defaults to `"a photo of a {}."`):
                The base model's prompt template.
            base_model (`str`, *optional*, defaults to `""`):
                Identity of the base model.
            fallback (`str`, *optional*, defaults to `"class"`):
                See the class docstring.
            semantic_prompts (*optional*):
                See the class docstring.
            normalize_embeds (`bool`, *optional*, defaults to `True`):
                L2-normalise `embeds`. Pass `False` only for embeddings that already are (a saved bank), which keeps
                a save/load round trip bit-exact.
            data_fingerprint (`str`, *optional*):
                See the class docstring.

        Returns:
            `CaptConfusionBank` with rows sorted by `indices`.
        """
        indices = torch.as_tensor(indices).detach().reshape(-1).long().cpu()
        labels = torch.as_tensor(labels).detach().reshape(-1).long().cpu()
        probs = torch.as_tensor(probs).detach().float().cpu()
        embeds = torch.as_tensor(embeds).detach().float().cpu()
        num_classes = len(class_names)
        num_samples = indices.shape[0]
        if num_samples == 0:
            raise ValueError("A Confusion Bank needs at least one sample")
        if labels.shape != (num_samples,) or probs.dim() != 2 or probs.shape[0] != num_samples:
            raise ValueError(
                f"indices, labels and probs disagree on the number of samples: {tuple(indices.shape)}, "
                f"{tuple(labels.shape)}, {tuple(probs.shape)}"
            )
        if embeds.dim() != 2 or embeds.shape[0] != num_samples:
            raise ValueError(f"embeds must have shape (N={num_samples}, P), got {tuple(embeds.shape)}")
        if probs.shape[1] != num_classes:
            raise ValueError(f"probs has {probs.shape[1]} classes but {num_classes} class names were given")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
        if torch.unique(indices).numel() != num_samples:
            raise ValueError("indices must be unique: a training sample was recorded twice")
        for name, values in (("probs", probs), ("embeds", embeds)):  # NaN passes every comparison below
            bad_rows = (~torch.isfinite(values)).any(-1).nonzero().flatten()
            if bad_rows.numel():
                raise ValueError(
                    f"{name} holds non-finite values (NaN or inf) in {bad_rows.numel()} of {num_samples} rows (training-"
                    f"set indices {indices[bad_rows[:5]].tolist()}): the base model's outputs or the saved bank are "
                    "broken; rebuild the bank"
                )
        if (probs < 0).any() or not torch.allclose(probs.sum(-1), torch.ones(num_samples), atol=1e-2):
            raise ValueError("probs must be probability vectors (softmax of logit_scale * cos), not logits")
        if normalize_embeds:
            embeds = F.normalize(embeds, dim=-1)

        bank = cls(class_names, template=template, base_model=base_model, fallback=fallback,
                   data_fingerprint=data_fingerprint)
        bank.semantic_prompts = semantic_prompts
        order = torch.argsort(indices)
        bank.indices = indices[order]
        bank.labels = labels[order]
        bank.probs = probs[order].contiguous()
        bank.preds = bank.probs.argmax(-1)
        bank.embeds = embeds[order].contiguous()
        bank._build_index()
        return bank

    @classmethod
    def build(
        cls,
        batches: Iterable[Mapping[str, torch.Tensor] | Sequence[torch.Tensor]],
        class_names: Sequence[str],
        template: str = DEFAULT_TEMPLATE,
        base_model: str = "",
        fallback: str = "class",
        data_fingerprint: str | None = None,
    ) -> "CaptConfusionBank":
        r"""Build a bank from a stream of batches (the base model's outputs over the training set).

        Each batch is moved to the CPU as it arrives and the chunks are concatenated once at the end, so memory is
        the bank's own size plus one batch; nothing loops over single samples.

        Args:
            batches (`Iterable`):
                Dicts with keys `indices`, `labels`, `probs`, `embeds`, or tuples in that order; shapes `(b,)`,
                `(b,)`, `(b, K)`, `(b, P)`.
            class_names (`Sequence[str]`):
                The `K` training classes, in label order.
            template (`str`, *optional*, defaults to `"a photo of a {}."`):
                The base model's prompt template.
            base_model (`str`, *optional*, defaults to `""`):
                Identity of the base model.
            fallback (`str`, *optional*, defaults to `"class"`):
                See the class docstring.
            data_fingerprint (`str`, *optional*):
                See the class docstring.

        Returns:
            `CaptConfusionBank`.
        """
        chunks: dict[str, list[torch.Tensor]] = {name: [] for name in _BANK_FIELDS}
        for batch in batches:
            if isinstance(batch, Mapping):
                missing = [name for name in _BANK_FIELDS if name not in batch]
                if missing:
                    raise ValueError(f"A bank batch lacks the keys {missing} (expected {list(_BANK_FIELDS)})")
                values = [batch[name] for name in _BANK_FIELDS]
            else:
                values = list(batch)
                if len(values) != len(_BANK_FIELDS):
                    raise ValueError(f"A bank batch tuple must hold {list(_BANK_FIELDS)}, got {len(values)} items")
            for name, value in zip(_BANK_FIELDS, values):
                tensor = torch.as_tensor(value).detach()
                tensor = tensor.float() if name in ("probs", "embeds") else tensor.long()
                chunks[name].append(tensor.cpu())
        if not chunks["indices"]:
            raise ValueError("No batch to build the Confusion Bank from")
        tensors = {name: torch.cat(parts) for name, parts in chunks.items()}
        return cls.from_tensors(
            **tensors, class_names=class_names, template=template, base_model=base_model, fallback=fallback,
            data_fingerprint=data_fingerprint,
        )

    # ------------------------------------------------------------------ derived index
    def _build_index(self) -> None:
        num_classes = len(self.class_names)
        device = self.labels.device
        self.register_buffer(
            "confusion_matrix", compute_confusion_matrix(self.labels, self.preds, num_classes), persistent=False
        )
        misclassified = self.preds != self.labels
        rows = torch.arange(len(self), device=device)
        mis_rows, mis_ptr = _csr_by_class(rows[misclassified], self.labels[misclassified], num_classes)
        self.register_buffer("_misclassified_rows", mis_rows, persistent=False)
        self.register_buffer("_misclassified_ptr", mis_ptr, persistent=False)

        in_pool = misclassified.clone()
        if self.fallback == "class":
            in_pool |= (mis_ptr[1:] - mis_ptr[:-1])[self.labels] == 0  # classes with no misclassified sample
        pool_rows, pool_ptr = _csr_by_class(rows[in_pool], self.labels[in_pool], num_classes)
        self.register_buffer("_pool_rows", pool_rows, persistent=False)
        self.register_buffer("_pool_ptr", pool_ptr, persistent=False)
        self.register_buffer("_pool_classes", self.labels[pool_rows], persistent=False)
        self.register_buffer("_pool_embeds", self.embeds[pool_rows], persistent=False)

        sorted_indices, order = torch.sort(self.indices)
        self.register_buffer("_sorted_indices", sorted_indices, persistent=False)
        self.register_buffer("_sorted_rows", order, persistent=False)

        if len(self) > 0 and mis_rows.numel() == 0:
            warnings.warn(
                "The Confusion Bank has no misclassified sample: confusion scores reduce to the base model's "
                "probabilities and the candidate pools fall back as `fallback` says.",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ accessors
    def __len__(self) -> int:
        return self.indices.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def embed_dim(self) -> int:
        return self.embeds.shape[1]

    @property
    def num_misclassified(self) -> int:
        return self._misclassified_rows.numel()

    def misclassified_rows(self, class_id: int) -> torch.Tensor:
        """Bank rows of the misclassified samples whose true label is `class_id`."""
        return self._misclassified_rows[self._misclassified_ptr[class_id] : self._misclassified_ptr[class_id + 1]]

    def pool_rows(self, class_id: int) -> torch.Tensor:
        """Bank rows of the Sample Confusion Miner's candidate pool for `class_id` (may be empty)."""
        return self._pool_rows[self._pool_ptr[class_id] : self._pool_ptr[class_id + 1]]

    @property
    def pool_sizes(self) -> torch.Tensor:
        """`torch.LongTensor` of shape `(K,)`: size of each class's candidate pool."""
        return self._pool_ptr[1:] - self._pool_ptr[:-1]

    def rows_for(self, indices: torch.Tensor) -> torch.Tensor:
        r"""Bank rows of the given training-set indices.

        Args:
            indices (`torch.LongTensor` of any shape):
                Training-set indices (the `indices` the bank was built with).

        Returns:
            `torch.LongTensor` of the same shape. Raises `KeyError` for an index the bank does not hold.
        """
        indices = torch.as_tensor(indices, device=self._sorted_indices.device).long()
        flat = indices.reshape(-1)
        pos = torch.searchsorted(self._sorted_indices, flat).clamp_max(max(len(self) - 1, 0))
        found = self._sorted_indices[pos] == flat if len(self) else torch.zeros_like(flat, dtype=torch.bool)
        if not bool(found.all()):
            missing = flat[~found][:5].tolist()
            raise KeyError(f"The Confusion Bank holds no sample with training-set index {missing}")
        return self._sorted_rows[pos].reshape(indices.shape)

    def check_compatible(self, class_names: Sequence[str], template: str | None = None) -> None:
        r"""Raise a `ValueError` naming the first difference between this bank and a label set / template.

        Args:
            class_names (`Sequence[str]`):
                The class list the bank is to be used with, in label order.
            template (`str`, *optional*):
                The prompt template; not checked when `None`.
        """
        class_names = [str(name) for name in class_names]
        for position, (ours, theirs) in enumerate(zip(self.class_names, class_names)):
            if ours != theirs:
                raise ValueError(
                    f"The Confusion Bank does not match the class list: class {position} is {ours!r} in the bank "
                    f"but {theirs!r} here"
                )
        if len(self.class_names) != len(class_names):
            raise ValueError(
                f"The Confusion Bank does not match the class list: the bank has {len(self.class_names)} classes, "
                f"the class list {len(class_names)}"
            )
        if template is not None and template != self.template:
            raise ValueError(
                f"The Confusion Bank does not match the template: {self.template!r} in the bank, {template!r} here"
            )

    # ------------------------------------------------------------------ state dict
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "template": self.template,
            "base_model": self.base_model,
            "fallback": self.fallback,
            "semantic_prompts": self.semantic_prompts,
            "data_fingerprint": self.data_fingerprint,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.class_names = list(state["class_names"])
        self.template = state["template"]
        self.base_model = state["base_model"]
        self.fallback = state.get("fallback", "class")
        self.semantic_prompts = state.get("semantic_prompts")
        self.data_fingerprint = state.get("data_fingerprint")

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        extra = state_dict.get(prefix + "_extra_state")
        if extra is not None and self.class_names:
            self.check_compatible(extra["class_names"], extra["template"])
        for name in _BANK_FIELDS + ("preds",):
            incoming = state_dict.get(prefix + name)
            current = self._buffers[name]
            if incoming is not None and incoming.shape != current.shape:
                self._buffers[name] = torch.empty(incoming.shape, dtype=current.dtype, device=current.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._build_index()

    def extra_repr(self) -> str:
        return (
            f"num_samples={len(self)}, num_classes={self.num_classes}, embed_dim={self.embed_dim}, "
            f"num_misclassified={self.num_misclassified}, fallback={self.fallback!r}, base_model={self.base_model!r}"
        )


def top_confused_pairs(
    confusion_matrix: torch.Tensor, class_names: Sequence[str], k: int = 5
) -> list[tuple[str, str, int]]:
    r"""The `k` most frequent confusions (off-diagonal cells with a non-zero count).

    Args:
        confusion_matrix (`torch.LongTensor` of shape `(K, K)`):
            `M[a, b]`, samples of true class `a` predicted `b`; the diagonal is ignored.
        class_names (`Sequence[str]`):
            The `K` class names.
        k (`int`, *optional*, defaults to 5):
            Number of pairs.

    Returns:
        `list` of `(true class name, predicted class name, count)`, most frequent first, ties by `(a, b)`.
    """
    matrix = confusion_matrix.detach().cpu().long().clone()
    matrix.fill_diagonal_(0)
    num_classes = matrix.shape[0]
    flat = matrix.reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices
    order = order[flat[order] > 0][:k]
    return [(class_names[i // num_classes], class_names[i % num_classes], int(flat[i])) for i in order.tolist()]


def frozen_image_embeds(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """CLIP's own L2-normalised image embedding (the frozen encoder `E_I` of paper Eq. 8): the vision tower with the
    Diff-Manner adapters disabled, no MGDE, then CLIP's post-layernorm and visual projection."""
    with adapters_disabled(model.clip.vision_model):
        hidden = model.encode_image_hidden(pixel_values, cls_only=True)
    pooled = model.clip.vision_model.post_layernorm(hidden[:, 0])
    return F.normalize(model.clip.visual_projection(pooled).float(), dim=-1)


@torch.inference_mode()
def build_bank(base_model, train_rows, image_processor, batch_size, class_names, template, base_model_id,
               data_fingerprint=None, loader=None):
    """Run the base model over the training set, batch by batch, and keep what CAPT mines from.

    `data_fingerprint` (`training_set_fingerprint(train_rows.dataset)`) is recorded in the bank, so that a run
    loading it with `--bank_path` can check the bank describes its own training images.

    `probs` are the base model's own (`C_j`); `embeds` are always the frozen CLIP embedding `e_j` (METHODS.md CAPT 1,
    paper Eq. 8): for a zero-shot or CoOp base model that is its own image embedding, for a CAPT checkpoint (whose
    adapters and MGDE move the image features) it is computed with the adapters off and without MGDE.

    `loader` (batches with `pixel_values`, `indices`, `labels`) defaults to `make_loader` over `train_rows.dataset`.
    """
    base_model.eval()
    if loader is None:
        loader = make_loader(train_rows.dataset, image_processor, batch_size, False, 0, "train")
    device = next(base_model.parameters()).device
    # a model whose trainable parts move the image features (CAPT's adapters and MGDE); zero-shot CLIP and CoOp
    # (context on the text side) give CLIP's own image embedding
    adapted = bool(getattr(base_model, "adapted_layer_names", None)) or getattr(base_model, "mgde", None) is not None

    def batches():
        for batch in tqdm(loader, desc="confusion bank", leave=False):
            pixel_values = batch["pixel_values"].to(device)
            out = base_model(pixel_values=pixel_values)
            embeds = frozen_image_embeds(base_model, pixel_values) if adapted else out.image_embeds.float()
            yield {
                "indices": batch["indices"],
                "labels": batch["labels"],
                "probs": out.logits.float().softmax(-1),
                "embeds": embeds,
            }

    return CaptConfusionBank.build(batches(), class_names, template=template, base_model=base_model_id,
                                   data_fingerprint=data_fingerprint)


def check_bank_matches_training_set(bank: CaptConfusionBank, train_labels, class_names, train_dataset=None) -> None:
    """Raise a `ValueError` unless the bank describes this training set sample by sample: one row per training-set
    index `0..N-1`, with the training set's label and, when `train_dataset` is given, built from the same images.

    A bank of other data (another dataset, split or class subset of the same size) would otherwise be used silently:
    its rows would be looked up for the wrong images, and a sample's own label could then reach its confusion
    classes and its own row the retrieval (the Sample Confusion Miner relies on the bank's labels being the batch's).
    A bank of another few-shot draw (another `--seed`, same `--shots` and classes) has the same size and labels in
    the same order: only the images tell it apart, through the content fingerprint the bank records
    (`dataset_scripts.data_fingerprint.training_set_fingerprint`), which is compared with `train_dataset`'s. A bank
    that records none (saved by an older version) cannot be checked: a warning says so.
    """
    labels = torch.as_tensor(list(train_labels), dtype=torch.long)
    remedy = "Build the bank from the same data, --shots, --seed and --subsample_classes as the run."
    if len(bank) != len(labels):
        raise ValueError(f"The confusion bank holds {len(bank)} samples but the training set has {len(labels)}")
    if not torch.equal(bank.indices.cpu(), torch.arange(len(labels))):
        raise ValueError(
            f"The confusion bank's training-set indices {bank.indices[:5].tolist()}... are not those of this training "
            f"set (0..{len(labels) - 1})"
        )
    differ = torch.nonzero(bank.labels.cpu() != labels).reshape(-1)
    if differ.numel():
        i = int(differ[0])
        raise ValueError(
            f"The confusion bank does not describe this training set: training sample {i} is a "
            f"{class_names[int(labels[i])]!r} here but a {class_names[int(bank.labels[i])]!r} in the bank "
            f"({differ.numel()} of {len(labels)} labels differ). {remedy}"
        )
    if train_dataset is None:
        return
    recorded = bank.data_fingerprint
    if recorded is None:
        logger.warning(
            "The confusion bank records no training-set fingerprint (it was saved by an older version): it cannot be "
            "checked to describe this training set's images, only its size and labels. A bank of another few-shot "
            "draw (another --seed) would pass. Rebuild it to have it checked."
        )
        return
    actual = training_set_fingerprint(train_dataset)
    if fingerprint_scheme(recorded) != fingerprint_scheme(actual):
        logger.warning(
            "The confusion bank's training-set fingerprint %r is of another scheme than this version's (%s): it "
            "cannot be checked to describe this training set's images, only its size and labels.",
            recorded, fingerprint_scheme(actual),
        )
        return
    if recorded != actual:
        raise ValueError(
            f"The confusion bank was built from other images than this training set: its {len(bank)} labels match, "
            f"but its training-set fingerprint ({recorded}) is not this training set's ({actual}), so bank row j "
            f"describes another image than training sample j (say another few-shot draw: another --seed). {remedy}"
        )


__all__ = [
    "CaptConfusionBank",
    "build_bank",
    "check_bank_matches_training_set",
    "compute_confusion_matrix",
    "frozen_image_embeds",
    "top_confused_pairs",
]
