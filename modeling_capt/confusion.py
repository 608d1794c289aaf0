"""Confusion Bank, Semantic and Sample Confusion Miners, the confusion loss and the confusion metrics of CAPT.

This file ships to the Hub as remote code: it imports only the standard library, torch and transformers.

How the pieces meet in a training step (bank built once, before training, from a base model):

```python
>>> rows = bank.rows_for(batch["index"])  # dataset indices -> bank rows
>>> classes = select_confusion_classes(bank.probs[rows], bank.confusion_matrix, batch["labels"], k=5)  # SEM
>>> rep_rows, cos = retrieve_representatives(bank.embeds[rows], classes, bank)  # SAM, one matmul
>>> alpha = adapter_alpha(confusion_intensity(cos), s=5.0, gamma=0.5)  # per-sample adapter weight
>>> rep_dataset_indices = bank.indices[rep_rows]  # the images to load and encode with the adapted encoder
```

The query of the retrieval is the sample's own frozen embedding `e_j` (stored in the bank), as in paper Eq. 8, where
the similarity is taken with the frozen image encoder `E_I`; no extra forward pass is needed to retrieve.

Readings of the paper's gaps (METHODS.md sections 1-3, 6, 8), each chosen once here:

- **Own label excluded.** A sample's confusion classes never contain its own label `y_j`; otherwise the
  confusion InfoNCE would hold the text feature of `y_j` twice (duplicate targets) and the Sample Confusion Miner
  would retrieve samples of `y_j` itself. When the base model misclassified `j` (`g != y_j`), `g` is the class
  `j` was actually confused into, so it is the first confusion class; the rest are ranked by `S_i` over
  `i not in {g, y_j}` (see `select_confusion_classes`).
- **Too few classes.** `k` larger than `K - 1` (the classes other than `y_j`) is clamped to `K - 1` with a
  warning, so the same config runs on small label sets.
- **Candidate pools.** The candidate pool of class `c` is the bank's misclassified samples whose true label is
  `c`; when there is none, `fallback="class"` (default) uses every bank sample of class `c`, `fallback="none"`
  leaves the pool empty. Retrieval raises a `ValueError` only when a requested class has an empty pool.
- **Semantic confusion pairs** for prompt generation are unordered `(a, b)`, `a < b`: the pairs `(y_j, c)` over
  the training set, where commonality and difference read the same in both directions.
- **Rates.** `correction_rate` is NaN when the base model got nothing wrong, `break_rate` NaN when it got
  nothing right: the rate is undefined there, and NaN keeps the return type a float.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_capt import DEFAULT_TEMPLATE


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


# ---------------------------------------------------------------------- Semantic Confusion Miner
def _effective_k(k: int, num_classes: int) -> int:
    if k < 0:
        raise ValueError(f"The number of confusion classes must be non-negative, got {k}")
    if k > num_classes - 1:
        warnings.warn(
            f"k_pairs={k} is more than the {num_classes - 1} classes a sample can be confused with; using "
            f"{num_classes - 1}.",
            stacklevel=3,
        )
        return max(num_classes - 1, 0)
    return k


def pseudo_ground_truth(probs: torch.Tensor) -> torch.Tensor:
    r"""The pseudo-ground-truth of paper Eq. 6: the base model's prediction.

    Args:
        probs (`torch.FloatTensor` of shape `(B, K)`):
            Class probabilities `C_j`.

    Returns:
        `torch.LongTensor` of shape `(B,)`: `g = argmax_i C_j[i]`.
    """
    return probs.argmax(-1)


def confusion_statistics(confusion_matrix: torch.Tensor, g: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    r"""Confusion statistics of each sample's pseudo-ground-truth (paper Eq. 7's `n_i`).

    Args:
        confusion_matrix (`torch.LongTensor` of shape `(K, K)`):
            The bank's off-diagonal `M[a, b]`.
        g (`torch.LongTensor` of shape `(B,)`):
            Pseudo-ground-truth of each sample.
        symmetric (`bool`, *optional*, defaults to `False`):
            Count confusions in both directions, `M[i, g] + M[g, i]`.

    Returns:
        `torch.FloatTensor` of shape `(B, K)`: `n_i = M[i, g]`, the number of bank samples of class `i`
        misclassified into `g` (zero at `i = g`).
    """
    matrix = confusion_matrix.float()
    counts = matrix[:, g].T
    if symmetric:
        counts = counts + matrix[g, :]
    return counts


def confusion_scores(
    probs: torch.Tensor,
    confusion_matrix: torch.Tensor,
    g: torch.Tensor,
    use_statistics: bool = True,
    symmetric: bool = False,
) -> torch.Tensor:
    r"""Confusion score of paper Eq. 7.

    `S_i = (1 + n_i / sum_i n_i) * C[i]`, or `S_i = C[i]` when `sum_i n_i = 0` (the pseudo-ground-truth never
    received a misclassified sample) or when `use_statistics=False` (paper Table 6); `S_g = -inf`.

    Args:
        probs (`torch.FloatTensor` of shape `(B, K)`):
            The base model's class probabilities `C`.
        confusion_matrix (`torch.LongTensor` of shape `(K, K)`):
            The bank's off-diagonal `M[a, b]`.
        g (`torch.LongTensor` of shape `(B,)`):
            Pseudo-ground-truth (or label) of each sample.
        use_statistics (`bool`, *optional*, defaults to `True`):
            Weight the probabilities by the confusion statistics.
        symmetric (`bool`, *optional*, defaults to `False`):
            Symmetric statistics, see `confusion_statistics`.

    Returns:
        `torch.FloatTensor` of shape `(B, K)`.
    """
    scores = probs.float()
    if use_statistics:
        counts = confusion_statistics(confusion_matrix.to(probs.device), g, symmetric=symmetric)
        total = counts.sum(-1, keepdim=True)
        scores = (1 + counts / total.clamp_min(1)) * scores  # total = 0 means counts = 0: S = C
    scores = scores.clone()
    scores.scatter_(1, g.reshape(-1, 1), float("-inf"))
    return scores


def select_confusion_classes(
    probs: torch.Tensor,
    confusion_matrix: torch.Tensor,
    labels: torch.Tensor,
    k: int = 5,
    pseudo_gt: bool = True,
    use_statistics: bool = True,
    symmetric: bool = False,
) -> torch.Tensor:
    r"""Each sample's `k` confusion classes: the Semantic Confusion Miner (METHODS.md section 2).

    The paper ranks `S_i` over `i != g` and leaves the sample's own label in the ranking. This implementation
    excludes the own label `y_j`, which the loss and the retrieval need: the confusion InfoNCE contrasts `t_{y_j}`
    with the text features of the confusion classes (a repeat of `y_j` is a duplicate target), and the candidate
    pool of `y_j` would hold the sample's own class. The rule:

    - `g = argmax C_j` (`pseudo_gt=True`, paper Table 7) or `g = y_j` (`pseudo_gt=False`);
    - when `g != y_j` (the base model misclassified `j`), `g` is the first confusion class: it is the class `j` was
      actually confused into; the remaining `k - 1` are the largest `S_i` over `i not in {g, y_j}`;
    - when `g == y_j`, the `k` largest `S_i` over `i != y_j`.

    Ties are broken by the lower class index. `k` larger than `K - 1` is clamped to `K - 1` with a warning.

    Args:
        probs (`torch.FloatTensor` of shape `(B, K)`):
            The base model's class probabilities of the samples (`bank.probs[rows]`).
        confusion_matrix (`torch.LongTensor` of shape `(K, K)`):
            The bank's off-diagonal `M[a, b]`.
        labels (`torch.LongTensor` of shape `(B,)`):
            True classes `y_j`.
        k (`int`, *optional*, defaults to 5):
            Confusion classes per sample (`k_pairs`).
        pseudo_gt (`bool`, *optional*, defaults to `True`):
            Use the base model's prediction as `g`; `False` uses the label.
        use_statistics (`bool`, *optional*, defaults to `True`):
            Rank by the confusion score `S`; `False` ranks by `C` alone.
        symmetric (`bool`, *optional*, defaults to `False`):
            Symmetric confusion statistics.

    Returns:
        `torch.LongTensor` of shape `(B, k)`: distinct classes, none equal to the sample's label.
    """
    k = _effective_k(k, probs.shape[-1])
    labels = labels.to(probs.device).long().reshape(-1)
    g = pseudo_ground_truth(probs) if pseudo_gt else labels
    scores = confusion_scores(probs, confusion_matrix, g, use_statistics=use_statistics, symmetric=symmetric)
    scores.scatter_(1, labels.reshape(-1, 1), float("-inf"))
    ranked = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
    if k == 0:
        return ranked
    misclassified = (g != labels).unsqueeze(-1)
    shifted = torch.cat([g.unsqueeze(-1), ranked[:, : k - 1]], dim=-1)
    return torch.where(misclassified, shifted, ranked)


def confusion_pairs(
    bank: CaptConfusionBank,
    k_pairs: int = 5,
    pseudo_gt: bool = True,
    use_statistics: bool = True,
    symmetric: bool = False,
    return_counts: bool = False,
    chunk_size: int = 4096,
) -> list[tuple[int, int]] | list[tuple[int, int, int]]:
    r"""The semantic confusion pairs that occur over the training set, for the semantic prompt generator.

    Every bank sample `j` contributes the pairs `(y_j, c)` for its confusion classes `c`
    (`select_confusion_classes`). Pairs are unordered, written `(a, b)` with `a < b`: one commonality prompt and
    one difference prompt serve both directions.

    Args:
        bank (`CaptConfusionBank`):
            The Confusion Bank.
        k_pairs (`int`, *optional*, defaults to 5):
            Confusion classes per sample.
        pseudo_gt (`bool`, *optional*, defaults to `True`), use_statistics (`bool`, *optional*, defaults to `True`),
        symmetric (`bool`, *optional*, defaults to `False`):
            As in `select_confusion_classes`.
        return_counts (`bool`, *optional*, defaults to `False`):
            Return `(a, b, count)` triples instead of `(a, b)` pairs.
        chunk_size (`int`, *optional*, defaults to 4096):
            Samples scored at once (bounds memory to `chunk_size * K`).

    Returns:
        `list` of class-index pairs `(a, b)` (or `(a, b, count)`), most frequent first, ties by `(a, b)`.
    """
    num_classes = bank.num_classes
    k_pairs = _effective_k(k_pairs, num_classes)
    counts = torch.zeros(num_classes * num_classes, dtype=torch.long)
    for start in range(0, len(bank), chunk_size):
        probs = bank.probs[start : start + chunk_size]
        labels = bank.labels[start : start + chunk_size]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the clamp warned above
            classes = select_confusion_classes(
                probs, bank.confusion_matrix, labels, k_pairs, pseudo_gt, use_statistics, symmetric
            )
        anchors = labels.unsqueeze(-1).expand_as(classes)
        codes = torch.minimum(anchors, classes) * num_classes + torch.maximum(anchors, classes)
        counts += torch.bincount(codes.reshape(-1).cpu(), minlength=num_classes * num_classes)
    codes = torch.nonzero(counts).reshape(-1)  # ascending, so the stable sort breaks ties by (a, b)
    order = torch.sort(counts[codes], descending=True, stable=True).indices
    codes = codes[order]
    firsts, seconds = (codes // num_classes).tolist(), (codes % num_classes).tolist()
    if return_counts:
        return list(zip(firsts, seconds, counts[codes].tolist()))
    return list(zip(firsts, seconds))


# ---------------------------------------------------------------------- Sample Confusion Miner
def retrieve_representatives(
    query_embeds: torch.Tensor,
    confusion_classes: torch.Tensor,
    bank: CaptConfusionBank,
    random_samples: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The representative confusing sample of each confusion class (paper Eq. 8, one per class).

    `r_c = argmax_u cos(e_j, e_u)` over class `c`'s candidate pool; ties go to the lowest bank row. Small pools
    (`B * pool <= DENSE_RETRIEVAL_MAX_SCORES`): one matmul of the queries against all pooled embeddings (`B x pool`),
    a per-class `scatter_reduce` (`amax`, then `amin` over the positions reaching it) and a gather, with no Python
    loop. Large pools: one matmul per requested class against that class's contiguous pool slice and an `argmax`, so
    the work is that of the requested classes only and memory `O(max_c askers_c * |pool_c|)`. Both give the same rows.

    Args:
        query_embeds (`torch.FloatTensor` of shape `(B, P)`):
            The samples' frozen image embeddings (`bank.embeds[rows]`); normalised here.
        confusion_classes (`torch.LongTensor` of shape `(B, k)`):
            Classes to retrieve a representative of (`select_confusion_classes`).
        bank (`CaptConfusionBank`):
            The Confusion Bank.
        random_samples (`bool`, *optional*, defaults to `False`):
            Pick a uniformly random member of each pool instead (paper Table 8).
        generator (`torch.Generator`, *optional*):
            Random source of `random_samples`, on any device: the draws are made on the generator's device and then
            moved to the bank's, so one CPU generator gives the same picks whichever device the bank is on.

    Returns:
        `tuple(torch.LongTensor, torch.FloatTensor)`, both of shape `(B, k)`: the representatives' bank rows (their
        training-set indices are `bank.indices[rows]`) and their cosine similarity to the query.

    Raises:
        `ValueError` when a requested class has an empty candidate pool: the class has no bank sample at all, or it
        has no misclassified sample and the bank's `fallback` is `"none"`.
    """
    device = bank.embeds.device
    classes = confusion_classes.to(device).long()
    pool_sizes = bank.pool_sizes
    if classes.numel() and bool((pool_sizes[classes] == 0).any()):
        empty = sorted(set(classes[pool_sizes[classes] == 0].tolist()))
        names = [bank.class_names[c] for c in empty[:5]]
        raise ValueError(
            f"No candidate in the Confusion Bank for the classes {empty[:5]} {names}: they have no bank sample"
            + (" (fallback='none' and no misclassified sample)" if bank.fallback == "none" else "")
        )
    query = F.normalize(query_embeds.to(device=device, dtype=bank.embeds.dtype), dim=-1)
    batch_size = query.shape[0]

    if random_samples:
        draw_device = generator.device if generator is not None else device
        uniform = torch.rand(classes.shape, generator=generator, device=draw_device).to(device)
        offsets = (uniform * pool_sizes[classes]).long().clamp_max(pool_sizes[classes] - 1)
        positions = bank._pool_ptr[classes] + offsets
        cosine = (query.unsqueeze(1) * bank._pool_embeds[positions]).sum(-1)
        return bank._pool_rows[positions], cosine

    if not uses_dense_retrieval(batch_size, bank._pool_embeds.shape[0]):
        return _retrieve_per_class(query, classes, bank)
    return _retrieve_dense(query, classes, bank)


def uses_dense_retrieval(batch_size: int, pool_size: int) -> bool:
    """Whether `retrieve_representatives` scores `batch_size` queries against a candidate pool of `pool_size` with one
    dense `B x pool` matrix (else class by class)."""
    return batch_size * pool_size <= DENSE_RETRIEVAL_MAX_SCORES


# Above this many query x pool scores, retrieval scores each requested class's pool slice only (no `B x pool` pass).
DENSE_RETRIEVAL_MAX_SCORES = 1 << 18  # the measured CPU crossover (benchmarks/bench_bank.py)


def _retrieve_dense(query: torch.Tensor, classes: torch.Tensor, bank: CaptConfusionBank):
    """Representatives from one `(B, pool)` score matrix and per-class `scatter_reduce` (fast for small pools)."""
    batch_size, device = query.shape[0], query.device
    sims = query @ bank._pool_embeds.T  # (B, pool)
    pool_classes = bank._pool_classes.unsqueeze(0).expand(batch_size, -1)
    best = torch.full((batch_size, bank.num_classes), float("-inf"), device=device, dtype=sims.dtype)
    best = best.scatter_reduce(1, pool_classes, sims, reduce="amax")
    pool_size = sims.shape[1]
    candidates = torch.arange(pool_size, device=device).expand(batch_size, -1)
    candidates = torch.where(sims == best.gather(1, pool_classes), candidates, pool_size)
    first = torch.full((batch_size, bank.num_classes), pool_size, device=device, dtype=torch.long)
    first = first.scatter_reduce(1, pool_classes, candidates, reduce="amin")
    positions = first.gather(1, classes)
    return bank._pool_rows[positions], sims.gather(1, positions)


def _retrieve_per_class(query: torch.Tensor, classes: torch.Tensor, bank: CaptConfusionBank):
    """Representatives from each requested class's contiguous pool slice (for large pools).

    The pool is stored grouped by class (`_pool_ptr`), so class `c`'s candidates are a view; the samples asking for
    `c` are scored against it with one matmul and `argmax` picks the first maximum (the lowest pool position, as the
    dense path). Work is `sum_c (askers of c) * |pool_c|` instead of `B * pool`, with no `B x pool` temporaries.
    """
    k = classes.shape[1]
    flat = classes.reshape(-1)
    order = torch.argsort(flat, stable=True)
    unique, counts = torch.unique_consecutive(flat[order], return_counts=True)
    positions = torch.empty_like(flat)
    cosine = torch.empty(flat.shape, device=query.device, dtype=query.dtype)
    bounds = bank._pool_ptr.tolist()
    start = 0
    for class_id, count in zip(unique.tolist(), counts.tolist()):
        pairs = order[start : start + count]
        start += count
        low, high = bounds[class_id], bounds[class_id + 1]
        scores = query[pairs // k] @ bank._pool_embeds[low:high].T  # (askers, |pool_c|)
        best = scores.argmax(dim=1)
        positions[pairs] = best + low
        cosine[pairs] = scores.gather(1, best.unsqueeze(1)).squeeze(1)
    positions = positions.view_as(classes)
    return bank._pool_rows[positions], cosine.view_as(classes)


def confusion_intensity(cosine: torch.Tensor) -> torch.Tensor:
    r"""Confusion intensity `s_c = max(cos, 0)` of each representative (paper Appendix F).

    Args:
        cosine (`torch.FloatTensor` of shape `(B, k)`):
            Cosine similarity of each representative to its query.

    Returns:
        `torch.FloatTensor` of shape `(B, k)`.
    """
    return cosine.clamp_min(0)


def adapter_alpha(intensity: torch.Tensor, s: float = 5.0, gamma: float = 0.5) -> torch.Tensor:
    r"""The per-sample Diff-Manner adapter weight `alpha_j = s * mean_c(s_c) ** gamma` (paper Eq. 13).

    Args:
        intensity (`torch.FloatTensor` of shape `(B, k)`):
            Confusion intensities.
        s (`float`, *optional*, defaults to 5.0):
            Scale.
        gamma (`float`, *optional*, defaults to 0.5):
            Exponent.

    Returns:
        `torch.FloatTensor` of shape `(B,)` (zeros when `k = 0`: no confusion to adapt to).
    """
    if intensity.shape[-1] == 0:
        return intensity.new_zeros(intensity.shape[:-1])
    return s * intensity.mean(-1).pow(gamma)


# ---------------------------------------------------------------------- loss
def confusion_infonce_loss(
    image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    r"""Confusion loss of paper Eqs. 3-5: a symmetric InfoNCE within each sample's confusion group.

    For sample `j`, the `L = k + 1` image features `{f(x_j), f(r_c1), ..., f(r_ck)}` and the text features of their
    classes `{t_y, t_c1, ..., t_ck}` form an `L x L` similarity matrix with the matching pairs on the diagonal.
    As Eq. 3 writes it, the loss is the sum of the two directions (image-to-text and text-to-image
    cross-entropies), each averaged over the `L` positions, then averaged over the samples; it is twice CLIP's
    halved symmetric loss, a factor `lambda_confuse` absorbs.

    Args:
        image_feats (`torch.FloatTensor` of shape `(B, L, P)`):
            Image features; L2-normalised here.
        text_feats (`torch.FloatTensor` of shape `(B, L, P)`):
            Text features of the matching classes; L2-normalised here.
        logit_scale (`torch.Tensor` or `float`):
            `1 / tau`, the multiplier itself (CLIP's `logit_scale.exp()`, 100 for the released models).

    Returns:
        `torch.FloatTensor` scalar.
    """
    if image_feats.shape != text_feats.shape or image_feats.dim() != 3:
        raise ValueError(
            f"image_feats and text_feats must both have shape (B, L, P), got {tuple(image_feats.shape)} and "
            f"{tuple(text_feats.shape)}"
        )
    batch_size, length, _ = image_feats.shape
    image_feats = F.normalize(image_feats, dim=-1)
    text_feats = F.normalize(text_feats, dim=-1)
    logits = logit_scale * image_feats @ text_feats.transpose(1, 2)  # (B, L, L): image i vs text i'
    targets = torch.arange(length, device=logits.device).repeat(batch_size)
    image_to_text = F.cross_entropy(logits.reshape(batch_size * length, length), targets)
    text_to_image = F.cross_entropy(logits.transpose(1, 2).reshape(batch_size * length, length), targets)
    return image_to_text + text_to_image


# ---------------------------------------------------------------------- k-means
def kmeans(x: torch.Tensor, k: int, iters: int = 50, seed: int = 0) -> torch.Tensor:
    r"""Lloyd's k-means with k-means++ initialisation, in torch (initialises the MGDE semantic experts).

    Deterministic for a given `seed` (a private `torch.Generator`). An emptied cluster keeps its previous centre.

    Args:
        x (`torch.FloatTensor` of shape `(N, D)`):
            Points.
        k (`int`):
            Number of centres; capped at `N`.
        iters (`int`, *optional*, defaults to 50):
            Maximum Lloyd iterations (stops earlier once the assignment is stable).
        seed (`int`, *optional*, defaults to 0):
            Seed of the initialisation.

    Returns:
        `torch.FloatTensor` of shape `(min(k, N), D)`, in `x`'s dtype.
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty (N, D) tensor, got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"kmeans needs k >= 1, got {k}")
    points = x.detach().float()
    num_points = points.shape[0]
    k = min(k, num_points)
    generator = torch.Generator(device=points.device).manual_seed(seed)

    chosen = [int(torch.randint(num_points, (1,), generator=generator, device=points.device))]
    nearest = torch.cdist(points, points[chosen[0]].unsqueeze(0)).squeeze(1).pow(2)
    for _ in range(1, k):
        if float(nearest.sum()) > 0:
            index = int(torch.multinomial(nearest, 1, generator=generator))
        else:  # every point sits on a centre (duplicates): take the first unused point
            taken = set(chosen)
            index = next(i for i in range(num_points) if i not in taken)
        chosen.append(index)
        nearest = torch.minimum(nearest, torch.cdist(points, points[index].unsqueeze(0)).squeeze(1).pow(2))
    centres = points[chosen].clone()

    assignment = None
    for _ in range(iters):
        new_assignment = torch.cdist(points, centres).argmin(-1)
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        sizes = torch.bincount(assignment, minlength=k).unsqueeze(-1)
        centres = torch.where(sizes > 0, sums / sizes.clamp_min(1), centres)
    return centres.to(x.dtype)


# ---------------------------------------------------------------------- metrics
def correction_rate(base_preds: torch.Tensor, new_preds: torch.Tensor, labels: torch.Tensor) -> float:
    r"""Share of the samples the base model got wrong that the new model gets right (paper Fig. 4).

    Args:
        base_preds (`torch.LongTensor` of shape `(N,)`), new_preds (`torch.LongTensor` of shape `(N,)`),
        labels (`torch.LongTensor` of shape `(N,)`):
            Predictions of the base and the new model, and the true classes.

    Returns:
        `float` in `[0, 1]`, or NaN when the base model got no sample wrong (the rate is undefined).
    """
    wrong_before = base_preds != labels
    if not bool(wrong_before.any()):
        return math.nan
    return float((new_preds[wrong_before] == labels[wrong_before]).float().mean())


def break_rate(base_preds: torch.Tensor, new_preds: torch.Tensor, labels: torch.Tensor) -> float:
    r"""Share of the samples the base model got right that the new model gets wrong.

    Args:
        base_preds (`torch.LongTensor` of shape `(N,)`), new_preds (`torch.LongTensor` of shape `(N,)`),
        labels (`torch.LongTensor` of shape `(N,)`):
            Predictions of the base and the new model, and the true classes.

    Returns:
        `float` in `[0, 1]`, or NaN when the base model got no sample right.
    """
    right_before = base_preds == labels
    if not bool(right_before.any()):
        return math.nan
    return float((new_preds[right_before] != labels[right_before]).float().mean())


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


__all__ = [
    "CaptConfusionBank",
    "adapter_alpha",
    "break_rate",
    "compute_confusion_matrix",
    "confusion_infonce_loss",
    "confusion_intensity",
    "confusion_pairs",
    "confusion_scores",
    "confusion_statistics",
    "correction_rate",
    "kmeans",
    "pseudo_ground_truth",
    "retrieve_representatives",
    "select_confusion_classes",
    "top_confused_pairs",
]
