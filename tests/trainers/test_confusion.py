"""trainers/confusion.py: the Semantic and Sample Confusion Miners, the confusion loss, k-means and the rates."""

import math

import pytest
import torch

from dataset_scripts.bank import CaptConfusionBank
from fixtures_bank import MATRIX, PROBS, one_hot_probs, random_bank, random_queries, small_bank
from trainers.confusion import (
    adapter_alpha,
    break_rate,
    confusion_infonce_loss,
    confusion_intensity,
    confusion_pairs,
    confusion_scores,
    confusion_statistics,
    correction_rate,
    kmeans,
    pseudo_ground_truth,
    retrieve_representatives,
    select_confusion_classes,
)


# ------------------------------------------------------------------ Semantic Confusion Miner
def test_confusion_scores_by_hand():
    g = pseudo_ground_truth(PROBS)
    assert g.tolist() == [1, 3, 0]
    assert confusion_statistics(MATRIX, g).tolist() == [[2, 0, 4, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    scores = confusion_scores(PROBS, MATRIX, g)
    # Hand computation of S_i = (1 + n_i / sum n) * C_i:
    # row 0, g=1, n=[2,0,4,0], sum 6: S = [(1+2/6)*0.1, -inf, (1+4/6)*0.2, 0.1] = [0.133333, -inf, 0.333333, 0.1]
    # row 1, g=3, n=[0,1,2,0], sum 3: S = [0.25, (1+1/3)*0.05, (1+2/3)*0.3, -inf] = [0.25, 0.066667, 0.5, -inf]
    # row 2, g=0, n=0 (empty column): S = C = [-inf, 0.1, 0.15, 0.05]
    inf = float("inf")
    expected = torch.tensor(
        [[0.133333, -inf, 0.333333, 0.1], [0.25, 0.066667, 0.5, -inf], [-inf, 0.1, 0.15, 0.05]]
    )
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)


def test_confusion_scores_symmetric_and_without_statistics():
    g = torch.tensor([1])
    # n = M[i,1] + M[1,i] = [2,0,4,0] + [0,0,0,1] = [2,0,4,1], sum 7:
    # S = [(1+2/7)*0.1, -inf, (1+4/7)*0.2, (1+1/7)*0.1] = [0.128571, -inf, 0.314286, 0.114286]
    scores = confusion_scores(PROBS[:1], MATRIX, g, symmetric=True)
    torch.testing.assert_close(scores, torch.tensor([[0.128571, -math.inf, 0.314286, 0.114286]]), atol=1e-6, rtol=0)
    plain = confusion_scores(PROBS[:1], MATRIX, g, use_statistics=False)
    torch.testing.assert_close(plain, torch.tensor([[0.10, -math.inf, 0.20, 0.10]]))


def test_zero_statistics_fall_back_to_probabilities():
    empty = torch.zeros(4, 4, dtype=torch.long)
    g = pseudo_ground_truth(PROBS)
    scores = confusion_scores(PROBS, empty, g)
    expected = PROBS.clone()
    expected[torch.arange(3), g] = -math.inf
    torch.testing.assert_close(scores, expected)


def test_confusion_classes_exclude_own_label():
    probs = PROBS[:1]  # S = [0.133333, -inf, 0.333333, 0.1], g = 1
    # Correct sample (y = g = 1): the two largest S over i != 1.
    assert select_confusion_classes(probs, MATRIX, torch.tensor([1]), k=2).tolist() == [[2, 0]]
    # Misclassified into 1 (y = 2): g comes first, then the best S over i not in {1, 2}. The paper's plain ranking
    # would have given [2, 0], repeating the label.
    assert select_confusion_classes(probs, MATRIX, torch.tensor([2]), k=2).tolist() == [[1, 0]]
    assert select_confusion_classes(probs, MATRIX, torch.tensor([0]), k=2).tolist() == [[1, 2]]
    # pseudo_gt=False, y = 2: g = 2, n = M[:, 2] = [1,0,0,5], sum 6:
    # S = [(1+1/6)*0.1, 0.6, -inf, (1+5/6)*0.1] = [0.116667, 0.6, -inf, 0.183333] -> [1, 3]
    assert select_confusion_classes(probs, MATRIX, torch.tensor([2]), k=2, pseudo_gt=False).tolist() == [[1, 3]]


def test_confusion_statistics_change_the_ranking():
    probs = torch.tensor([[0.30, 0.10, 0.25, 0.35]])  # g = y = 3, n = [0, 1, 2, 0]
    # S = [0.3, (1+1/3)*0.1, (1+2/3)*0.25, -inf] = [0.3, 0.133333, 0.416667, -inf]
    labels = torch.tensor([3])
    assert select_confusion_classes(probs, MATRIX, labels, k=1).tolist() == [[2]]
    assert select_confusion_classes(probs, MATRIX, labels, k=1, use_statistics=False).tolist() == [[0]]


def test_confusion_classes_are_distinct_and_never_the_label():
    bank = random_bank()
    classes = select_confusion_classes(bank.probs, bank.confusion_matrix, bank.labels, k=4)
    assert classes.shape == (len(bank), 4)
    assert not (classes == bank.labels.unsqueeze(-1)).any()
    assert all(len(set(row)) == 4 for row in classes.tolist())
    wrong = bank.preds != bank.labels
    assert torch.equal(classes[wrong, 0], bank.preds[wrong])


def test_k_larger_than_classes_is_clamped():
    with pytest.warns(UserWarning, match="k_pairs=5"):
        classes = select_confusion_classes(PROBS, MATRIX, torch.tensor([1, 3, 0]), k=5)
    assert classes.shape == (3, 3)
    # k = K is one too many as well (a sample has K - 1 other classes): the clamp starts at K, not at K + 1
    labels = torch.tensor([1, 2, 0])  # row 1 misclassified (g = 3), the others right
    with pytest.warns(UserWarning, match="k_pairs=4"):
        classes = select_confusion_classes(PROBS, MATRIX, labels, k=4)
    assert classes.shape == (3, 3)
    assert not (classes == labels.unsqueeze(-1)).any()
    assert all(len(set(row)) == 3 for row in classes.tolist())


def test_confusion_pairs_by_hand():
    bank = small_bank()
    # k = 1. Rows 0, 1, 5 are misclassified: their class is the prediction -> pairs (0,1), (0,2), (0,2).
    # Row 2 (y=g=0): n = M[:, 0] = [0,0,1] -> S = [-inf, 0.1, 0.2] -> class 2 -> (0,2).
    # Rows 3, 4 (y=g=1): n = M[:, 1] = [1,0,0] -> S = [0.2, -inf, 0.1] -> class 0 -> (0,1).
    assert confusion_pairs(bank, k_pairs=1, return_counts=True) == [(0, 1, 3), (0, 2, 3)]
    assert confusion_pairs(bank, k_pairs=1) == [(0, 1), (0, 2)]


@pytest.mark.parametrize(
    "flags",
    [{}, {"pseudo_gt": False}, {"use_statistics": False}, {"symmetric": True}],
    ids=["default", "real_gt", "no_statistics", "symmetric"],
)
def test_confusion_pairs_follow_k_and_the_miner_flags(flags):
    """The pairs are `(y_j, c)` over every sample's confusion classes, mined with the given `k` and flags (chunked)."""
    bank = random_bank(num_samples=120, num_classes=6, seed=7)
    classes = select_confusion_classes(bank.probs, bank.confusion_matrix, bank.labels, k=2, **flags)
    expected = {}
    for y, row in zip(bank.labels.tolist(), classes.tolist()):
        for c in row:
            pair = (min(y, c), max(y, c))
            expected[pair] = expected.get(pair, 0) + 1
    counted = confusion_pairs(bank, k_pairs=2, return_counts=True, chunk_size=17, **flags)
    assert {(a, b): n for a, b, n in counted} == expected
    assert sum(n for _, _, n in counted) == 2 * len(bank)
    # the flags matter on this bank: each mining gives other pairs than k = 1 and than the default mining
    assert counted != confusion_pairs(bank, k_pairs=1, return_counts=True, **flags)
    if flags:
        assert counted != confusion_pairs(bank, k_pairs=2, return_counts=True)


# ------------------------------------------------------------------ Sample Confusion Miner
@pytest.fixture(params=["dense", "per_class"])
def retrieval_path(request, monkeypatch):
    """Run a retrieval test through the dense `B x pool` path and through the per-class path."""
    from trainers import confusion

    monkeypatch.setattr(confusion, "DENSE_RETRIEVAL_MAX_SCORES", 1 << 40 if request.param == "dense" else 0)
    return request.param


def test_retrieval_by_hand(retrieval_path):
    bank = small_bank()
    query = torch.tensor([[0.6, 0.8]])
    rows, cosine = retrieve_representatives(query, torch.tensor([[0, 1, 2]]), bank)
    # Class 0's pool is rows {0, 1} (row 2, cos 1, is right and not a candidate): cos 0.6, 0.8 -> row 1.
    # Class 1 falls back to rows {3, 4}: cos 0.6, 0.96 -> row 4. Class 2: row 5, cos -0.6.
    assert rows.tolist() == [[1, 4, 5]]
    torch.testing.assert_close(cosine, torch.tensor([[0.8, 0.96, -0.6]]))
    torch.testing.assert_close(confusion_intensity(cosine), torch.tensor([[0.8, 0.96, 0.0]]))
    # The query is normalised before the cosine.
    rows_scaled, cosine_scaled = retrieve_representatives(query * 7, torch.tensor([[0, 1, 2]]), bank)
    assert torch.equal(rows_scaled, rows)
    torch.testing.assert_close(cosine_scaled, cosine)


def test_retrieval_matches_brute_force(retrieval_path):
    bank = random_bank(num_samples=300, num_classes=9, dim=12, seed=3)
    query, classes = random_queries(bank, 11, k=4, seed=4)
    rows, cosine = retrieve_representatives(query, classes, bank)

    normalised = torch.nn.functional.normalize(query, dim=-1)
    for b in range(11):
        for slot, c in enumerate(classes[b].tolist()):
            wrong = [u for u in range(len(bank)) if bank.labels[u] == c and bank.preds[u] != c]
            pool = wrong or [u for u in range(len(bank)) if bank.labels[u] == c]
            sims = [float(normalised[b] @ bank.embeds[u]) for u in pool]
            best = max(range(len(pool)), key=lambda i: sims[i])
            assert rows[b, slot] == pool[best]
            assert cosine[b, slot] == pytest.approx(sims[best], abs=1e-6)


def test_retrieval_ties_go_to_the_lowest_bank_row(retrieval_path):
    # Rows 0-5 are class 0 mispredicted as 1; rows 1, 3 and 5 share the best embedding for the query.
    embeds = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, 1.0]])
    bank = CaptConfusionBank.from_tensors(
        torch.arange(6), torch.zeros(6, dtype=torch.long), one_hot_probs([1] * 6, 2), embeds, ["a", "b"]
    )
    rows, cosine = retrieve_representatives(torch.tensor([[0.0, 2.0], [3.0, 0.0]]), torch.tensor([[0], [0]]), bank)
    assert rows.tolist() == [[1], [0]]
    torch.testing.assert_close(cosine, torch.tensor([[1.0], [1.0]]))


@pytest.mark.parametrize("pseudo_gt", [True, False])
def test_a_sample_never_retrieves_itself_or_its_own_class(retrieval_path, pseudo_gt):
    """Its own row would be its best match (cos 1); it is out of reach because no confusion class is its label.
    With the paper's plain ranking (pseudo-GT, own label kept) a misclassified sample's label can be a confusion
    class and the sample is in that class's pool of misclassified samples."""
    bank = random_bank(num_samples=150, num_classes=5, seed=9)
    classes = select_confusion_classes(bank.probs, bank.confusion_matrix, bank.labels, k=4, pseudo_gt=pseudo_gt)
    rows, cosine = retrieve_representatives(bank.embeds, classes, bank)
    own = torch.arange(len(bank)).unsqueeze(-1)
    assert not (rows == own).any()
    assert not (bank.labels[rows] == bank.labels.unsqueeze(-1)).any()
    assert (cosine < 1 - 1e-4).all()


def test_both_retrieval_paths_agree_on_a_large_bank(monkeypatch):
    from trainers import confusion

    bank = random_bank(num_samples=3000, num_classes=40, dim=32, seed=5)
    query, classes = random_queries(bank, 64, k=5, seed=6)
    monkeypatch.setattr(confusion, "DENSE_RETRIEVAL_MAX_SCORES", 1 << 40)
    dense = retrieve_representatives(query, classes, bank)
    monkeypatch.setattr(confusion, "DENSE_RETRIEVAL_MAX_SCORES", 0)
    per_class = retrieve_representatives(query, classes, bank)
    assert torch.equal(dense[0], per_class[0])
    torch.testing.assert_close(dense[1], per_class[1])


def test_random_retrieval_picks_pool_members_reproducibly():
    bank = random_bank()
    classes = torch.tensor([[0, 1, 2], [3, 4, 5]])
    query = torch.randn(2, 16)
    def pick():
        generator = torch.Generator().manual_seed(0)
        return retrieve_representatives(query, classes, bank, random_samples=True, generator=generator)

    first, again = pick(), pick()
    assert torch.equal(first[0], again[0])
    for b in range(2):
        for slot in range(3):
            assert first[0][b, slot] in bank.pool_rows(int(classes[b, slot])).tolist()
    expected = torch.nn.functional.normalize(query, dim=-1).unsqueeze(1) * bank.embeds[first[0]]
    torch.testing.assert_close(first[1], expected.sum(-1))


def test_random_retrieval_draws_uniformly_from_the_pool():
    """`random_samples=True` (paper Table 8) ignores the similarity: every pool member is drawn, about equally often,
    not only the representative (rows 1 and 4 for this query, see `test_retrieval_by_hand`)."""
    bank = small_bank()
    draws = 400
    query = torch.tensor([[0.6, 0.8]]).expand(draws, -1)
    classes = torch.tensor([[0, 1]]).expand(draws, -1)
    rows, _ = retrieve_representatives(query, classes, bank, random_samples=True,
                                       generator=torch.Generator().manual_seed(0))
    for slot, pool in ((0, [0, 1]), (1, [3, 4])):
        counts = torch.bincount(rows[:, slot], minlength=6)
        assert set(torch.nonzero(counts).reshape(-1).tolist()) == set(pool)
        assert all(150 <= int(counts[row]) <= 250 for row in pool)  # binomial(400, 1/2): mean 200, std 10


def test_empty_pool_is_an_error_only_when_needed():
    bank = small_bank(fallback="none")
    rows, _ = retrieve_representatives(torch.tensor([[0.6, 0.8]]), torch.tensor([[0, 2]]), bank)
    assert rows.tolist() == [[1, 5]]
    with pytest.raises(ValueError, match=r"classes \[1\] \['dog'\].*fallback='none'"):
        retrieve_representatives(torch.tensor([[0.6, 0.8]]), torch.tensor([[0, 1]]), bank)
    # A class with no bank sample at all has no pool even with the class fallback.
    absent = CaptConfusionBank.from_tensors(
        torch.arange(2), torch.tensor([0, 1]), one_hot_probs([1, 0], 3), torch.eye(2), ["a", "b", "c"]
    )
    with pytest.raises(ValueError, match=r"classes \[2\]"):
        retrieve_representatives(torch.eye(2), torch.tensor([[1], [2]]), absent)


def test_adapter_alpha():
    intensity = torch.tensor([[0.8, 0.96], [0.0, 0.0]])
    # 5 * mean(0.8, 0.96) ** 0.5 = 5 * 0.88 ** 0.5 = 4.690416
    torch.testing.assert_close(adapter_alpha(intensity), torch.tensor([4.690416, 0.0]))
    torch.testing.assert_close(adapter_alpha(intensity, s=2.0, gamma=1.0), torch.tensor([1.76, 0.0]))
    assert adapter_alpha(torch.zeros(3, 0)).tolist() == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------ loss
def test_infonce_loss_by_hand():
    image = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])  # normalised inside: (1, 0), (0, 1)
    text = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
    # cos: image0-text0 1, image0-text1 0.6, image1-text0 0, image1-text1 0.8; logit scale 1.
    # image->text: log(1+e^-0.4) + log(1+e^-0.8) = 0.513015 + 0.371101
    # text->image: log(1+e^-1.0) + log(1+e^-0.2) = 0.313262 + 0.598139
    # Eq. 3: (1/L) * sum of both = 1.795517 / 2 = 0.897758
    loss = confusion_infonce_loss(image, text, 1.0)
    assert loss.item() == pytest.approx(0.897758, abs=1e-5)
    # Averaged over samples: a batch of copies gives the same value.
    batched = confusion_infonce_loss(image.repeat(3, 1, 1), text.repeat(3, 1, 1), torch.tensor(1.0))
    assert batched.item() == pytest.approx(0.897758, abs=1e-5)


def test_infonce_loss_temperature_is_one_over_logit_scale():
    """Eqs. 4-5 with tau = 1 / logit_scale: the cosines are multiplied by the scale (not divided, not ignored)."""
    image = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    text = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
    scale = 2.0  # cos [[1, 0.6], [0, 0.8]] -> logits [[2, 1.2], [0, 1.6]]
    image_to_text = math.log(1 + math.exp(scale * (0.6 - 1.0))) + math.log(1 + math.exp(scale * (0.0 - 0.8)))
    text_to_image = math.log(1 + math.exp(scale * (0.0 - 1.0))) + math.log(1 + math.exp(scale * (0.6 - 0.8)))
    expected = (image_to_text + text_to_image) / 2  # each direction averaged over L = 2, then summed
    assert expected == pytest.approx(0.597472, abs=1e-6)
    for logit_scale in (scale, torch.tensor(scale)):
        assert confusion_infonce_loss(image, text, logit_scale).item() == pytest.approx(expected, abs=1e-5)
    # each sample's group is contrasted on its own: a second, different sample does not enter the first one's terms
    other = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    pair = confusion_infonce_loss(torch.cat([image, other]), torch.cat([text, other]), scale)
    alone = confusion_infonce_loss(other, other, scale)
    assert pair.item() == pytest.approx((expected + alone.item()) / 2, abs=1e-5)


def test_infonce_loss_gradient_and_shape_check():
    image = torch.randn(4, 6, 8, requires_grad=True)
    loss = confusion_infonce_loss(image, torch.randn(4, 6, 8), 100.0)
    loss.backward()
    assert torch.isfinite(image.grad).all()
    with pytest.raises(ValueError, match="shape"):
        confusion_infonce_loss(torch.randn(4, 6, 8), torch.randn(4, 5, 8), 1.0)


# ------------------------------------------------------------------ k-means
def test_kmeans_recovers_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    truth = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]])
    points = torch.cat([centre + 0.3 * torch.randn(30, 2, generator=generator) for centre in truth])
    centres = kmeans(points, 3, seed=1)
    distance = torch.cdist(truth, centres)
    assert distance.min(-1).values.max() < 0.3
    assert sorted(distance.argmin(-1).tolist()) == [0, 1, 2]
    assert torch.equal(centres, kmeans(points, 3, seed=1))
    assert kmeans(points[:2], 5).shape == (2, 2)
    assert torch.equal(kmeans(torch.ones(4, 3), 2), torch.ones(2, 3))  # duplicates: the emptied centre stays put


def test_kmeans_initialisation_follows_the_seed_and_the_result_keeps_the_dtype():
    points = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    first = {tuple(kmeans(points, 1, iters=0, seed=seed)[0].tolist()) for seed in range(8)}
    assert len(first) > 1  # the k-means++ draw depends on the seed
    assert all(any(torch.equal(torch.tensor(c), p) for p in points) for c in first)  # the first centre is a point
    assert kmeans(points.double(), 3).dtype == torch.float64
    assert kmeans(points.bfloat16(), 3).dtype == torch.bfloat16


# ------------------------------------------------------------------ metrics
def test_correction_and_break_rates():
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    base = torch.tensor([0, 1, 0, 0, 4, 1])  # wrong on 2, 3, 5; right on 0, 1, 4
    new = torch.tensor([0, 2, 2, 0, 4, 5])  # corrects 2 and 5, breaks 1
    assert correction_rate(base, new, labels) == pytest.approx(2 / 3)
    assert break_rate(base, new, labels) == pytest.approx(1 / 3)
    assert math.isnan(correction_rate(labels, new, labels))
    # the rates are over the base model's wrong (resp. right) samples only, not over all samples:
    # wrong before on 0 and 3, right before on 1 and 2; the new model fixes 0 and keeps 1 and 2 -> 1/2 and 0,
    # while its accuracy over all samples is 3/4 and its error over all samples 1/4
    labels, base, new = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 1, 2, 0]), torch.tensor([0, 1, 2, 1])
    assert correction_rate(base, new, labels) == pytest.approx(1 / 2)
    assert break_rate(base, new, labels) == 0.0
    assert math.isnan(break_rate((labels + 1) % 6, new, labels))


# ------------------------------------------------------------------ the paper's literal rule, Figure 9, Eq. 13
def test_paper_rule_ranks_every_class_but_g_and_may_pick_the_label():
    """Row 0: g = 1, label 2, S = [.133, -inf, .333, .1]. This package's rule puts g first and skips the label; the
    paper's literal rule takes the top S over i != g, the label included."""
    labels = torch.tensor([2, 3, 0])
    assert select_confusion_classes(PROBS, MATRIX, labels, k=2)[0].tolist() == [1, 0]
    assert select_confusion_classes(PROBS, MATRIX, labels, k=2, exclude_label=False)[0].tolist() == [2, 0]


def test_paper_rule_makes_no_self_pair():
    bank = random_bank()
    pairs = confusion_pairs(bank, 3, exclude_label=False)
    assert pairs and all(a < b for a, b in pairs)


def test_infonce_masks_a_repeated_class_by_hand():
    generator = torch.Generator().manual_seed(0)
    image, text = torch.randn(1, 3, 4, generator=generator), torch.randn(1, 3, 4, generator=generator)
    text[0, 2] = text[0, 0]  # the own label picked again: the same text twice
    classes = torch.tensor([[5, 1, 5]])
    sims = 10.0 * torch.nn.functional.normalize(image, dim=-1)[0] @ torch.nn.functional.normalize(text, dim=-1)[0].T
    keep = {0: [0, 1], 1: [0, 1, 2], 2: [1, 2]}
    terms = []
    for matrix in (sims, sims.T):
        terms.append(torch.stack([-matrix[i, keep[i]].log_softmax(-1)[keep[i].index(i)] for i in range(3)]).mean())
    expected = terms[0] + terms[1]
    torch.testing.assert_close(confusion_infonce_loss(image, text, 10.0, classes=classes), expected)
    distinct = torch.tensor([[5, 1, 2]])  # nothing repeated: the plain loss
    torch.testing.assert_close(confusion_infonce_loss(image, text, 10.0, classes=distinct),
                               confusion_infonce_loss(image, text, 10.0))


def test_several_representatives_per_class_are_the_most_similar_pool_members():
    bank = random_bank()
    query, classes = random_queries(bank, 6, 3, seed=1)
    rows, cosine = retrieve_representatives(query, classes, bank, samples_per_class=2)
    assert rows.shape == cosine.shape == (6, 6)
    one, _ = retrieve_representatives(query, classes, bank)
    assert torch.equal(rows[:, ::2], one)  # the best of each class first
    normed = torch.nn.functional.normalize(query, dim=-1)
    for b in range(6):
        for position, c in enumerate(classes[b].tolist()):
            pool = [r for r in range(len(bank)) if bank.labels[r] == c and bank.preds[r] != c]
            sims = torch.nn.functional.normalize(bank.embeds[pool], dim=-1) @ normed[b]
            best_two = [pool[i] for i in sims.argsort(descending=True)[:2].tolist()]
            assert rows[b, 2 * position : 2 * position + 2].tolist() == best_two
    random_rows, _ = retrieve_representatives(query, classes, bank, samples_per_class=2, random_samples=True,
                                              generator=torch.Generator().manual_seed(0))
    assert random_rows.shape == (6, 6)


def test_alpha_per_representative_is_s_times_each_intensity_to_the_gamma():
    from trainers.confusion import representative_alpha

    intensity = torch.tensor([[0.25, 1.0], [0.0, 0.64]])
    torch.testing.assert_close(representative_alpha(intensity, s=5.0, gamma=0.5),
                               torch.tensor([[2.5, 5.0], [0.0, 4.0]]))
