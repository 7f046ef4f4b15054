"""Alignment between two representations of the same classes (same row order): the generator's condition
vectors and the recognizer's class centres.

With few rows the biased CKA is high even for unrelated spaces (measured ~0.88 on 10 digit classes, and the
same with the class order shuffled), so `cka_linear`/`cka_rbf` use the unbiased HSIC estimator (Song et al.
2012, eq. 5), the biased one is reported beside it, and `alignment` gives every metric's permutation null:
its mean over random re-orderings of one space's rows.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _centre_gram(k: np.ndarray) -> np.ndarray:
    return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    """HSIC_0 = tr(K H L H) / (n-1)^2, H = I - 11^T/n."""
    n = len(k)
    return float(np.sum(_centre_gram(k) * _centre_gram(l)) / (n - 1) ** 2)


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """HSIC_1 = [tr(K~L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3)),
    K~, L~ = K, L with zeroed diagonals. Needs n >= 4. O(n^2): tr(K~L~) = sum(K~ * L~^T) and
    1^T K~ L~ 1 = (1^T K~) . (L~ 1), no matrix product."""
    n = len(k)
    if n < 4:
        raise ValueError(f"unbiased HSIC needs >= 4 rows, got {n}")
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    value = np.sum(kt * lt.T) + kt.sum() * lt.sum() / ((n - 1) * (n - 2)) - 2 * (kt.sum(0) @ lt.sum(1)) / (n - 2)
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


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _zero_diag(k: np.ndarray) -> np.ndarray:
    k = k.copy()
    np.fill_diagonal(k, 0)
    return k


def _hsic_u(kt: np.ndarray, lt: np.ndarray, symmetric: bool = True) -> float:
    """hsic_unbiased for matrices whose diagonals are already zero (no copies); vdot when symmetric."""
    n = len(kt)
    tr = np.vdot(kt, lt) if symmetric else np.einsum("ij,ji->", kt, lt)
    value = tr + kt.sum() * lt.sum() / ((n - 1) * (n - 2)) - 2 * (kt.sum(0) @ lt.sum(1)) / (n - 2)
    return float(value / (n * (n - 3)))


def _hsic_b(k: np.ndarray, l: np.ndarray) -> float:
    """hsic_biased for symmetric K, L without forming HKH: tr(KHLH) = tr(KL) - 2/n 1'KL1 + 1'K1 1'L1 / n^2."""
    n = len(k)
    return float((np.vdot(k, l) - 2 / n * (k.sum(1) @ l.sum(1)) + k.sum() * l.sum() / n**2) / (n - 1) ** 2)


class _Space:
    """What every metric needs of one space, computed once (O(n^2 d)), with its self-similarity terms (which no
    re-ordering changes); a re-ordering of the rows is then an O(n^2) gather (`permuted`), which is what makes
    the permutation null O(n^2) per draw."""

    def __init__(self, x: np.ndarray | None, topk: int, mats: dict | None = None, own: dict | None = None):
        if mats is not None:
            self.mats, self.own = mats, own
            return
        x = np.asarray(x, np.float64)
        cos = linear_kernel(_unit(x))
        lin = linear_kernel(x)
        knn = knn_mask(cos, topk)
        iu = np.triu_indices(len(x), 1)  # ranks of the pairwise cosine distances (ties averaged, as Spearman)
        ranks = np.zeros_like(cos)
        ranks[iu] = rankdata(1 - cos[iu])
        self.mats = {
            "linear": lin,
            "linear_zd": _zero_diag(lin),
            "rbf_zd": _zero_diag(rbf_kernel(x)),
            "cos": cos,
            "knn": knn,
            "ranks": ranks + ranks.T,
        }  # symmetric: a re-ordering moves pairs across the diagonal
        knn_cos = np.where(knn, cos, 0.0)
        self.own = {
            "linear": _hsic_u(self.mats["linear_zd"], self.mats["linear_zd"]),
            "linear_b": _hsic_b(lin, lin),
            "rbf": _hsic_u(self.mats["rbf_zd"], self.mats["rbf_zd"]),
            "cknna": _hsic_u(knn_cos, knn_cos, symmetric=False),
        }

    def permuted(self, p: np.ndarray) -> _Space:
        return _Space(None, 0, {k: v[np.ix_(p, p)] for k, v in self.mats.items()}, self.own)


def _ratio(num: float, a: float, b: float) -> float:
    denom = np.sqrt(max(a, 0.0) * max(b, 0.0))
    return float(num / denom) if denom > 0 else 0.0


def _metrics(a: _Space, b: _Space, topk: int) -> dict:
    """CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for each kernel; CKNNA = the unbiased CKA of the cosine
    kernels masked to the mutual-kNN entries, the self-terms with each space's own kNN mask (Huh et al. 2024)."""
    am, bm = a.mats, b.mats
    mutual = am["knn"] & bm["knn"]
    iu = np.triu_indices(len(am["cos"]), 1)
    return {
        "cka_linear": _ratio(_hsic_u(am["linear_zd"], bm["linear_zd"]), a.own["linear"], b.own["linear"]),
        "cka_linear_biased": _ratio(_hsic_b(am["linear"], bm["linear"]), a.own["linear_b"], b.own["linear_b"]),
        "cka_rbf": _ratio(_hsic_u(am["rbf_zd"], bm["rbf_zd"]), a.own["rbf"], b.own["rbf"]),
        "mutual_knn": float(np.mean(mutual.sum(1) / topk)),
        "cknna": _ratio(
            _hsic_u(np.where(mutual, am["cos"], 0.0), np.where(mutual, bm["cos"], 0.0), symmetric=False),
            a.own["cknna"],
            b.own["cknna"],
        ),
        "distance_spearman": float(np.corrcoef(am["ranks"][iu], bm["ranks"][iu])[0, 1]),  # Pearson of ranks
    }


def mutual_knn(x: np.ndarray, y: np.ndarray, topk: int) -> float:
    """Mean over rows of |kNN_x(i) ∩ kNN_y(i)| / k, neighbours by cosine similarity (Huh et al. 2024)."""
    return metrics(x, y, topk)["mutual_knn"]


def cknna(x: np.ndarray, y: np.ndarray, topk: int) -> float:
    """CKA restricted to mutual-k-NN pairs (Huh et al. 2024): K and L (cosine kernels) are masked to the entries
    (i, j) where j is among the k nearest of i in both spaces, then compared with the unbiased HSIC; the
    self-terms use each space's own kNN mask."""
    return metrics(x, y, topk)["cknna"]


def distance_spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation of the two spaces' pairwise cosine distances (upper triangle)."""
    return metrics(x, y, 1)["distance_spearman"]


def metrics(x: np.ndarray, y: np.ndarray, topk: int) -> dict:
    return _metrics(_Space(x, topk), _Space(y, topk), topk)


MAX_CLASSES = 2000  # n x n float64 matrices: ~32 MB each at 2000 classes, ~800 MB at 10,000


def alignment(
    x: np.ndarray,
    y: np.ndarray,
    topk: int | None = None,
    permutations: int = 100,
    seed: int = 0,
    max_classes: int = MAX_CLASSES,
) -> dict:
    """All metrics, each with `<name>_null`: the mean over `permutations` random row orders of y (what the
    metric gives when the two spaces share nothing but their marginal geometry), and `<name>_p`: the
    one-sided permutation p-value (1 + #{null >= observed}) / (1 + permutations).

    Cost: O(n^2 d) once, then O(n^2) per permutation (the matrices are re-ordered, not recomputed). Above
    `max_classes` classes the metrics are estimated on a seed-fixed subset of that many classes (the unbiased
    HSIC is unbiased on a subsample too); `classes` and `classes_used` say so."""
    n = len(x)
    if len(y) != n:
        raise ValueError(f"alignment needs the same classes in both spaces: {n} vs {len(y)} rows")
    if n < 5:
        raise ValueError(f"alignment needs >= 5 classes, got {n}")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, max_classes, replace=False)) if n > max_classes else np.arange(n)
    m = len(rows)
    topk = topk or max(1, min(10, (m - 1) // 2))
    a, b = _Space(np.asarray(x)[rows], topk), _Space(np.asarray(y)[rows], topk)
    out = _metrics(a, b, topk)
    nulls = [_metrics(a, b.permuted(rng.permutation(m)), topk) for _ in range(permutations)]
    for key in list(out):
        null = np.array([v[key] for v in nulls])
        out[f"{key}_null"] = float(null.mean())
        out[f"{key}_p"] = float((1 + np.sum(null >= out[key] - 1e-12)) / (1 + permutations))
    out["classes"], out["classes_used"], out["topk"], out["permutations"] = n, m, topk, permutations
    return out
