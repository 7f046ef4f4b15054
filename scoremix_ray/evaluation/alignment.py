"""Alignment between two representations of the same classes (same row order): the generator's condition
vectors and the recognizer's class centres.

With few rows the biased CKA is high even for unrelated spaces (measured ~0.88 on 10 digit classes, and the
same with the class order shuffled), so `cka_linear`/`cka_rbf` use the unbiased HSIC estimator (Song et al.
2012, eq. 5), the biased one is reported beside it, and `alignment` gives every metric's permutation null:
its mean over random re-orderings of one space's rows.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


def _centre_gram(k: np.ndarray) -> np.ndarray:
    return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    """HSIC_0 = tr(K H L H) / (n-1)^2, H = I - 11^T/n."""
    n = len(k)
    return float(np.sum(_centre_gram(k) * _centre_gram(l)) / (n - 1) ** 2)


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """HSIC_1 = [tr(K~L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3)),
    K~, L~ = K, L with zeroed diagonals. Needs n >= 4."""
    n = len(k)
    if n < 4:
        raise ValueError(f"unbiased HSIC needs >= 4 rows, got {n}")
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    value = np.sum(kt * lt.T) + kt.sum() * lt.sum() / ((n - 1) * (n - 2)) - 2 * np.sum(kt @ lt) / (n - 2)
    return float(value / (n * (n - 3)))


def cka(k: np.ndarray, l: np.ndarray, unbiased: bool = True) -> float:
    """CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    h = hsic_unbiased if unbiased else hsic_biased
    denom = np.sqrt(max(h(k, k), 0.0) * max(h(l, l), 0.0))
    return float(h(k, l) / denom) if denom > 0 else 0.0


def linear_kernel(x: np.ndarray) -> np.ndarray:
    return x @ x.T


def rbf_kernel(x: np.ndarray) -> np.ndarray:
    """exp(-d^2 / (2 sigma^2)), sigma = median pairwise distance (Kornblith et al. 2019): scale-free."""
    sq = np.sum(x**2, 1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    off = d2[~np.eye(len(x), dtype=bool)]
    sigma2 = np.median(off) if np.any(off > 0) else 1.0
    return np.exp(-d2 / (2 * sigma2))


def knn_mask(k: np.ndarray, topk: int) -> np.ndarray:
    """Row i marks the topk most similar other rows under similarity kernel k."""
    s = k.astype(np.float64, copy=True)
    np.fill_diagonal(s, -np.inf)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :topk]
    mask = np.zeros_like(s, dtype=bool)
    np.put_along_axis(mask, idx, True, axis=1)
    return mask


def mutual_knn(x: np.ndarray, y: np.ndarray, topk: int) -> float:
    """Mean over rows of |kNN_x(i) ∩ kNN_y(i)| / k, neighbours by cosine similarity (Huh et al. 2024)."""
    a, b = knn_mask(linear_kernel(_unit(x)), topk), knn_mask(linear_kernel(_unit(y)), topk)
    return float(np.mean((a & b).sum(1) / topk))


def cknna(x: np.ndarray, y: np.ndarray, topk: int) -> float:
    """CKA restricted to mutual-k-NN pairs (Huh et al. 2024): K and L are masked to the entries (i, j) where
    j is among the k nearest of i in both spaces, then compared with the unbiased HSIC; the self-terms
    use each space's own kNN mask."""
    k, l = linear_kernel(_unit(x)), linear_kernel(_unit(y))
    mk, ml = knn_mask(k, topk), knn_mask(l, topk)

    def sim(a, b, ma, mb):
        m = ma & mb
        return hsic_unbiased(np.where(m, a, 0.0), np.where(m, b, 0.0))

    denom = np.sqrt(max(sim(k, k, mk, mk), 0.0) * max(sim(l, l, ml, ml), 0.0))
    return float(sim(k, l, mk, ml) / denom) if denom > 0 else 0.0


def distance_spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation of the two spaces' pairwise cosine distances (upper triangle)."""
    iu = np.triu_indices(len(x), 1)
    return float(spearmanr((1 - linear_kernel(_unit(x)))[iu], (1 - linear_kernel(_unit(y)))[iu]).statistic)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def metrics(x: np.ndarray, y: np.ndarray, topk: int) -> dict:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    kx, ky = linear_kernel(x), linear_kernel(y)
    return {
        "cka_linear": cka(kx, ky),
        "cka_linear_biased": cka(kx, ky, unbiased=False),
        "cka_rbf": cka(rbf_kernel(x), rbf_kernel(y)),
        "mutual_knn": mutual_knn(x, y, topk),
        "cknna": cknna(x, y, topk),
        "distance_spearman": distance_spearman(x, y),
    }


def alignment(x: np.ndarray, y: np.ndarray, topk: int | None = None, permutations: int = 100,
              seed: int = 0) -> dict:  # fmt: skip
    """All metrics, each with `<name>_null`: the mean over `permutations` random row orders of y (what the
    metric gives when the two spaces share nothing but their marginal geometry), and `<name>_p`: the
    one-sided permutation p-value (1 + #{null >= observed}) / (1 + permutations)."""
    n = len(x)
    if len(y) != n:
        raise ValueError(f"alignment needs the same classes in both spaces: {n} vs {len(y)} rows")
    if n < 5:
        raise ValueError(f"alignment needs >= 5 classes, got {n}")
    topk = topk or max(1, min(10, (n - 1) // 2))
    out = metrics(x, y, topk)
    rng = np.random.default_rng(seed)
    nulls = [metrics(x, y[rng.permutation(n)], topk) for _ in range(permutations)]
    for key in list(out):
        null = np.array([m[key] for m in nulls])
        out[f"{key}_null"] = float(null.mean())
        out[f"{key}_p"] = float((1 + np.sum(null >= out[key] - 1e-12)) / (1 + permutations))
    out["classes"], out["topk"], out["permutations"] = n, topk, permutations
    return out
