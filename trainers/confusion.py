"""What CAPT mines from its Confusion Bank, and its confusion loss and metrics (training-side, not shipped).

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

import torch
import torch.nn.functional as F

from dataset_scripts.bank import CaptConfusionBank


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
    exclude_label: bool = True,
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

    With `exclude_label=False` the paper's literal rule is used instead: the `k` largest `S_i` over every `i != g`,
    which may include `y_j` when the base model misclassified `j` (the confusion InfoNCE then masks the duplicate
    text target, see `confusion_infonce_loss`'s `classes`).

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
        exclude_label (`bool`, *optional*, defaults to `True`):
            Never pick the sample's own label (this package's reading); `False`: the paper's literal ranking over
            every class but `g`.

    Returns:
        `torch.LongTensor` of shape `(B, k)`: distinct classes, none equal to `g`, and (with `exclude_label`) none
        equal to the sample's label.
    """
    k = _effective_k(k, probs.shape[-1])
    labels = labels.to(probs.device).long().reshape(-1)
    g = pseudo_ground_truth(probs) if pseudo_gt else labels
    scores = confusion_scores(probs, confusion_matrix, g, use_statistics=use_statistics, symmetric=symmetric)
    if not exclude_label:
        return torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
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
    exclude_label: bool = True,
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
        exclude_label (`bool`, *optional*, defaults to `True`):
            As in `select_confusion_classes`; a sample's own label picked by the literal rule makes no pair.

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
                probs, bank.confusion_matrix, labels, k_pairs, pseudo_gt, use_statistics, symmetric, exclude_label
            )
        anchors = labels.unsqueeze(-1).expand_as(classes)
        codes = torch.minimum(anchors, classes) * num_classes + torch.maximum(anchors, classes)
        codes = codes[anchors != classes]  # the literal rule may pick the own label: (y, y) is no pair
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
    samples_per_class: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The representative confusing sample of each confusion class (paper Eq. 8, one per class by default).

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
        samples_per_class (`int`, *optional*, defaults to 1):
            `m` representatives per confusion class (paper Figure 9): the `m` most similar members of the pool (a
            pool smaller than `m` repeats its members, most similar first), or `m` independent random members.

    Returns:
        `tuple(torch.LongTensor, torch.FloatTensor)`, both of shape `(B, k * m)`: the representatives' bank rows
        (their training-set indices are `bank.indices[rows]`), class by class (the `m` of `classes[:, 0]` first), and
        their cosine similarity to the query.

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
    if samples_per_class < 1:
        raise ValueError(f"samples_per_class must be at least 1, got {samples_per_class}")
    query = F.normalize(query_embeds.to(device=device, dtype=bank.embeds.dtype), dim=-1)
    batch_size = query.shape[0]
    if samples_per_class > 1:
        if random_samples:
            classes = classes.repeat_interleave(samples_per_class, dim=1)
        else:
            return _retrieve_top_m(query, classes, bank, samples_per_class)

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


def _retrieve_top_m(query: torch.Tensor, classes: torch.Tensor, bank: CaptConfusionBank, m: int):
    """The `m` most similar members of each requested class's pool (class by class, as `_retrieve_per_class`)."""
    batch_size, k = classes.shape
    flat = classes.reshape(-1)
    positions = torch.empty((flat.numel(), m), dtype=torch.long, device=query.device)
    cosine = torch.empty((flat.numel(), m), device=query.device, dtype=query.dtype)
    bounds = bank._pool_ptr.tolist()
    for class_id in torch.unique(flat).tolist():
        pairs = torch.nonzero(flat == class_id).reshape(-1)
        low, high = bounds[class_id], bounds[class_id + 1]
        scores = query[pairs // k] @ bank._pool_embeds[low:high].T  # (askers, |pool_c|)
        best = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :m]
        best = best[:, torch.arange(m, device=best.device) % best.shape[1]]  # a small pool repeats its members
        positions[pairs] = best + low
        cosine[pairs] = scores.gather(1, best)
    return bank._pool_rows[positions].view(batch_size, k * m), cosine.view(batch_size, k * m)


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


def representative_alpha(intensity: torch.Tensor, s: float = 5.0, gamma: float = 0.5) -> torch.Tensor:
    r"""The adapter weight of each representative, `alpha_i = s * c_i ** gamma` (paper Eq. 13 read per sample `i`).

    Args:
        intensity (`torch.FloatTensor` of shape `(B, k)`):
            Confusion intensities of the representatives.
        s (`float`, *optional*, defaults to 5.0), gamma (`float`, *optional*, defaults to 0.5):
            Scale and exponent.

    Returns:
        `torch.FloatTensor` of shape `(B, k)`.
    """
    return s * intensity.pow(gamma)


# ---------------------------------------------------------------------- loss
def confusion_infonce_loss(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    logit_scale: torch.Tensor | float,
    classes: torch.Tensor | None = None,
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
        classes (`torch.LongTensor` of shape `(B, L)`, *optional*):
            The class of each position. When a class occurs at several positions (the paper's literal confusion
            rule picking the sample's own label, or several representatives per class), the other positions of the
            same class are neither targets nor negatives: they are left out of each cross-entropy's denominator (the
            same text cannot be a negative of itself). Without it (or with distinct classes) nothing is masked.

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
    if classes is not None:
        same = classes.unsqueeze(2) == classes.unsqueeze(1)  # (B, L, L), symmetric
        same &= ~torch.eye(length, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(same, float("-inf"))
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


__all__ = [
    "adapter_alpha",
    "break_rate",
    "confusion_infonce_loss",
    "confusion_intensity",
    "confusion_pairs",
    "confusion_scores",
    "confusion_statistics",
    "correction_rate",
    "kmeans",
    "pseudo_ground_truth",
    "representative_alpha",
    "retrieve_representatives",
    "select_confusion_classes",
]
