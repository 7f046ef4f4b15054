"""Selection strategies on hand-built spaces, triplet search against brute force, alignment metrics."""

import itertools

import numpy as np
import pytest

from scoremix_ray.core.evaluation.alignment import alignment, cka, cknna, linear_kernel, metrics, mutual_knn, rbf_kernel
from scoremix_ray.core.selection import STRATEGIES, Selection, select
from scoremix_ray.core.selection.strategies import Distances, Spaces, top_tuples
from scoremix_ray.foundations.errors import ScoreMixError


def _angles(deg):
    """Unit vectors in the plane at the given angles: cosine distance grows with the angle between them."""
    r = np.deg2rad(deg)
    return np.stack([np.cos(r), np.sin(r)], 1)


# classes 0,1 nearly identical (5 deg), 2 at 90, 3 at 180 from 0 (the farthest pair is (0, 3) or (1, 3))
EMB = _angles([0, 5, 90, 180, 100])


def test_pair_strategies_pick_obvious_tuples():
    sp = Spaces(embedding=EMB, condition=EMB[::-1].copy())
    far = select("embedding-distant", sp, 1)
    assert far.tuples.tolist() == [[0, 3]] and far.scores[0] == pytest.approx(2.0)
    close = select("embedding-close", sp, 1)
    assert close.tuples.tolist() == [[0, 1]]
    # condition space: the same vectors in reverse order (angles 100, 180, 90, 5, 0)
    assert select("condition-close", sp, 1).tuples.tolist() == [[3, 4]]
    assert select("condition-distant", sp, 1).tuples.tolist() == [[1, 4]]
    ranked = select("embedding-distant", sp, 10)
    assert np.all(np.diff(ranked.scores) <= 1e-12) and len({tuple(t) for t in ranked.tuples}) == 10
    assert np.allclose(ranked.embedding_distance, ranked.scores)


def test_max_uses_limits_class_reuse():
    sp = Spaces(embedding=EMB)
    sel = select("embedding-distant", sp, 2, max_uses=1)
    used = sel.tuples.ravel()
    assert len(set(used.tolist())) == len(used)  # no class twice
    assert sel.tuples[0].tolist() == [0, 3]  # still the best one first
    with pytest.raises(ScoreMixError, match="max_uses_per_class=1"):
        select("embedding-distant", sp, 3, max_uses=1)  # 5 classes hold only 2 disjoint pairs
    with pytest.raises(ScoreMixError, match="exceeds the 10 possible"):
        select("random", sp, 11)
    with pytest.raises(ScoreMixError, match="unknown selection.strategy 'nearest'"):
        select("nearest", sp, 1)


def test_random_is_seeded_and_distinct():
    sp = Spaces(embedding=np.random.default_rng(0).normal(size=(30, 4)))
    a, b = select("random", sp, 20, seed=3), select("random", sp, 20, seed=3)
    assert np.array_equal(a.tuples, b.tuples)
    assert not np.array_equal(a.tuples, select("random", sp, 20, seed=4).tuples)
    assert len({tuple(t) for t in a.tuples}) == 20 and np.all(a.tuples[:, 0] < a.tuples[:, 1])


@pytest.mark.parametrize("exact_limit", [1000, 0], ids=["exhaustive", "threshold-search"])
@pytest.mark.parametrize("largest", [True, False])
def test_triplet_top_n_equals_brute_force(largest, exact_limit):
    x = np.random.default_rng(1).normal(size=(23, 6))
    d = Distances(x).rows(slice(None))
    got, scores = top_tuples(Distances(x), 3, 15, largest, exact_limit=exact_limit)
    brute = sorted(
        ((d[i, j] + d[i, k] + d[j, k], (i, j, k)) for i, j, k in itertools.combinations(range(23), 3)), reverse=largest
    )[:15]
    assert np.allclose(scores, [s for s, _ in brute])
    assert [tuple(t) for t in got] == [t for _, t in brute]
    sel = select("triplet-sum-max" if largest else "triplet-sum-min", Spaces(embedding=x), 15)
    assert sel.tuples.shape == (15, 3) and np.allclose(sel.scores, scores)


@pytest.mark.parametrize("largest", [True, False])
def test_scalable_searches_equal_exact_on_small_n(largest):
    """Pairs by row blocks and triplets by the threshold search, against the exhaustive answers, on clustered
    data (many near-ties, the hard case for the threshold) and at a block size that forces many blocks."""
    from scoremix_ray.core.selection import strategies as st

    rng = np.random.default_rng(7)
    x = rng.normal(size=(12, 16))[rng.integers(0, 12, 150)] + 0.3 * rng.normal(size=(150, 16))
    dist = Distances(x)
    d = Distances(x).rows(slice(None))
    i, j = np.triu_indices(150, 1)
    order = np.lexsort([j, i, -d[i, j] if largest else d[i, j]])[:40]
    pairs, pscores = top_tuples(dist, 2, 40, largest)
    assert [tuple(p) for p in pairs] == list(zip(i[order], j[order])) and np.allclose(pscores, d[i, j][order])
    exact, escores = top_tuples(dist, 3, 30, largest)
    cand, key, certified = st._triplets_from_pairs(dist, 30, -1.0 if largest else 1.0)
    assert certified and np.array_equal(cand, exact) and np.allclose(-key if largest else key, escores)
    small = Distances(x[:40])
    small.block_rows = lambda: 3  # 14 blocks
    assert np.array_equal(top_tuples(small, 2, 25, largest)[0], top_tuples(Distances(x[:40]), 2, 25, largest)[0])


def test_triplet_search_scales_without_listing_all():
    x = np.random.default_rng(2).normal(size=(400, 8))  # C(400, 3) = 10.6M triplets
    sel = select("triplet-sum-max", Spaces(embedding=x), 50)
    assert sel.tuples.shape == (50, 3) and np.all(np.diff(sel.scores) <= 1e-12)
    big = np.random.default_rng(3).normal(size=(3000, 32))  # above EXACT_TRIPLETS: the threshold search
    sel = select("triplet-sum-min", Spaces(embedding=big), 20)
    assert sel.tuples.shape == (20, 3) and np.all(np.diff(sel.scores) >= -1e-12)


def test_selection_parquet_round_trip(tmp_path):
    sel = select("embedding-distant", Spaces(embedding=EMB, condition=EMB), 3)
    path = sel.write(tmp_path / "pairs.parquet", ["a", "b", "c", "d", "e"])
    back = Selection.read(path)
    assert np.array_equal(back.tuples, sel.tuples) and np.allclose(back.scores, sel.scores)
    assert back.strategy == "embedding-distant"
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    assert t.column("names").to_pylist()[0] == ["a", "d"] and "condition_distance" in t.column_names


def test_every_registered_strategy_runs():
    sp = Spaces(
        embedding=np.random.default_rng(3).normal(size=(8, 4)), condition=np.random.default_rng(4).normal(size=(8, 5))
    )
    for name in STRATEGIES:
        sel = select(name, sp, 4)
        assert len(sel.tuples) == 4 and all(len(set(t)) == len(t) for t in sel.tuples.tolist())


# --- alignment -------------------------------------------------------------------------------------------


def test_cka_identity_invariances_and_independence():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    for kernel in (linear_kernel, rbf_kernel):
        assert cka(kernel(x), kernel(x)) == pytest.approx(1.0)
        assert cka(kernel(x), kernel(3.7 * x @ q)) == pytest.approx(1.0, abs=1e-6)  # rotation + scale
    big = rng.normal(size=(2000, 16))
    indep = rng.normal(size=(2000, 16))
    assert abs(cka(linear_kernel(big), linear_kernel(indep))) < 0.02  # unbiased: ~0 when independent
    assert cka(linear_kernel(big), linear_kernel(indep), unbiased=False) > abs(
        cka(linear_kernel(big), linear_kernel(indep))
    )


def test_mutual_knn_and_cknna():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 8))
    assert mutual_knn(x, x, 5) == 1.0 and mutual_knn(x, 2 * x, 5) == 1.0
    assert cknna(x, x, 5) == pytest.approx(1.0)
    y = rng.normal(size=(100, 8))
    assert mutual_knn(x, y, 5) < 0.2  # chance is k / (n - 1) ~ 0.05
    assert abs(cknna(x, y, 5)) < 0.3


def test_alignment_reports_permutation_null():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 8))
    a = alignment(x, x @ np.linalg.qr(rng.normal(size=(8, 8)))[0], permutations=20)
    assert a["cka_linear"] == pytest.approx(1.0) and a["distance_spearman"] == pytest.approx(1.0)
    assert a["cka_linear_null"] < 0.3 and a["mutual_knn_null"] < 0.5
    keys = {"cka_linear", "cka_rbf", "mutual_knn", "cknna", "distance_spearman"}
    assert keys <= set(metrics(x, x, 5)) and all(f"{k}_null" in a for k in keys)
    with pytest.raises(ValueError, match="same classes"):
        alignment(x, x[:-1])


def _reference_alignment(x, y, topk, permutations, seed):
    """The former O(n^3)-per-permutation formulas, written out: matrix product in the unbiased HSIC, every
    kernel, kNN mask and Spearman recomputed from the re-ordered rows."""
    from scipy.stats import spearmanr

    from scoremix_ray.core.evaluation.alignment import knn_mask

    def hsic(k, l):
        n = len(k)
        kt, lt = k.copy(), l.copy()
        np.fill_diagonal(kt, 0)
        np.fill_diagonal(lt, 0)
        v = np.sum(kt * lt.T) + kt.sum() * lt.sum() / ((n - 1) * (n - 2)) - 2 * np.sum(kt @ lt) / (n - 2)
        return v / (n * (n - 3))

    def cka_(k, l):
        return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))

    def unit(v):
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def all_metrics(a, b):
        ka, kb = unit(a) @ unit(a).T, unit(b) @ unit(b).T
        ma, mb = knn_mask(ka, topk), knn_mask(kb, topk)
        m = ma & mb
        iu = np.triu_indices(len(a), 1)
        return {
            "cka_linear": cka_(a @ a.T, b @ b.T),
            "cka_rbf": cka_(rbf_kernel(a), rbf_kernel(b)),
            "mutual_knn": np.mean(m.sum(1) / topk),
            "cknna": hsic(np.where(m, ka, 0), np.where(m, kb, 0))
            / np.sqrt(hsic(np.where(ma, ka, 0), np.where(ma, ka, 0)) * hsic(np.where(mb, kb, 0), np.where(mb, kb, 0))),
            "distance_spearman": spearmanr((1 - ka)[iu], (1 - kb)[iu]).statistic,
        }

    out = all_metrics(x, y)
    rng = np.random.default_rng(seed)
    nulls = [all_metrics(x, y[rng.permutation(len(x))]) for _ in range(permutations)]
    return out, {k: float(np.mean([v[k] for v in nulls])) for k in out}


def test_quadratic_alignment_equals_the_former_formulas():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 6))
    y = x @ rng.normal(size=(6, 4)) + 0.8 * rng.normal(size=(30, 4))  # partly aligned
    a = alignment(x, y, topk=4, permutations=15, seed=3)
    ref, ref_null = _reference_alignment(x, y, 4, 15, 3)
    for key in ref:
        assert a[key] == pytest.approx(ref[key], abs=1e-9), key
        assert a[f"{key}_null"] == pytest.approx(ref_null[key], abs=1e-9), key
    assert a["classes"] == a["classes_used"] == 30


def test_alignment_above_the_class_cap_uses_a_seeded_subset():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(60, 5))
    a = alignment(x, x, permutations=5, seed=1, max_classes=25)
    b = alignment(x, x, permutations=5, seed=1, max_classes=25)
    assert a == b and a["classes"] == 60 and a["classes_used"] == 25 and a["cka_linear"] == pytest.approx(1.0)
