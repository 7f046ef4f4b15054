"""Is a generator good enough for mixing to help, and are mixed classes new identities? Each number here comes
with the reference that says what "good" is on this data (real images scored the same way).

Generator (on a class subset, in the baseline recognizer's embedding space and in pixels):
- identity consistency: nearest-class-centre accuracy of generated images, beside held-out real images';
- Frechet distance (FD) of generated vs real embeddings, beside real vs real (two disjoint halves);
- precision / recall of generated vs real embeddings (Kynkaanniemi et al. 2019, k-NN manifolds).
Mixed classes (per ScoreMix generation): how close a mixed class's centre is to its parents, how many of its
samples the baseline takes for a parent, and whether its samples verify as one identity and other tuples'
as others at the baseline's threshold.

Plain numpy/scipy on embeddings; memory bounded by a block of rows (nothing here holds an N x N matrix).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

BLOCK = 4096  # rows of one side of a distance block: BLOCK x N floats at a time


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FD(a, b) = |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) (Heusel et al. 2017), the Gaussians
    fitted to the rows of `a` and `b` (float64). Zero for identical sets; the square root's tiny imaginary
    part (numerical) is dropped, as pytorch-fid does."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(ca @ cb)
    if not np.isfinite(root).all():  # singular product: offset both, as pytorch-fid does
        eps = np.eye(len(ca)) * 1e-6
        root = linalg.sqrtm((ca + eps) @ (cb + eps))
    return float(mu @ mu + np.trace(ca) + np.trace(cb) - 2 * np.trace(root.real))


def _sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum((x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - 2 * x @ y.T, 0)


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of each row of `x` to its k-th nearest other row (the radius of its ball)."""
    x = np.asarray(x, np.float64)
    k = min(k, len(x) - 1)  # a set of k rows or fewer: the farthest other row
    out = np.empty(len(x))
    for lo in range(0, len(x), BLOCK):
        d = _sq_dists(x[lo : lo + BLOCK], x)
        d[np.arange(len(d)), lo + np.arange(len(d))] = np.inf  # not itself
        out[lo : lo + BLOCK] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return out


def coverage(points: np.ndarray, support: np.ndarray, radii: np.ndarray) -> float:
    """Share of `points` inside the union of balls around `support` rows (squared radii `radii`)."""
    points, support = np.asarray(points, np.float64), np.asarray(support, np.float64)
    inside = np.zeros(len(points), bool)
    for lo in range(0, len(points), BLOCK):
        inside[lo : lo + BLOCK] = (_sq_dists(points[lo : lo + BLOCK], support) <= radii[None, :]).any(1)
    return float(inside.mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict:
    """Improved precision and recall (Kynkaanniemi et al. 2019): precision = share of generated samples
    inside the real manifold (the union of each real sample's ball out to its k-th nearest real neighbour);
    recall = share of real samples inside the generated manifold. Identical sets: 1 and 1."""
    return {
        "precision": coverage(fake, real, knn_radii(real, k)),
        "recall": coverage(real, fake, knn_radii(fake, k)),
    }


def nearest_centre(emb: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the most cosine-similar centre for each embedding row."""
    c = centres / np.linalg.norm(centres, axis=1, keepdims=True).clip(1e-12)
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    return np.concatenate([(e[lo : lo + BLOCK] @ c.T).argmax(1) for lo in range(0, len(e), BLOCK)] or [[]])


def halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices split in two disjoint halves per class (seed-fixed): a class's first half and second half."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        a.append(rows[: len(rows) // 2])
        b.append(rows[len(rows) // 2 :])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def per_class_subset(labels: np.ndarray, counts: dict[int, int]) -> np.ndarray:
    """The first `counts[c]` rows of each class c (in row order)."""
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in counts.items()]))


def generator_diagnostics(
    real_emb: np.ndarray, real_labels: np.ndarray, gen_emb: np.ndarray, gen_labels: np.ndarray, seed: int, k: int = 3
) -> dict:
    """The recognizer-space diagnostics of generated images of some classes against real images of the same
    classes, each beside its real-image reference. The real images are split in halves A and B per class:
    A gives the class centres; B is the held-out real set (the ceiling / floor); the generated images are
    scored like B, and compared with B in FD and precision/recall as A is (the same number of rows per class
    as A, so both comparisons have the same sample sizes)."""
    classes, counts = np.unique(real_labels, return_counts=True)
    if (counts < 2).any():  # a class with one real image has no held-out half: left out on both sides
        classes = classes[counts >= 2]
        real = np.isin(real_labels, classes)
        real_emb, real_labels = real_emb[real], real_labels[real]
        gen = np.isin(gen_labels, classes)
        gen_emb, gen_labels = gen_emb[gen], gen_labels[gen]
    a, b = halves(real_labels, seed)
    centres = np.stack([real_emb[a][real_labels[a] == c].mean(0) for c in classes])
    counts = {int(c): int((real_labels[a] == c).sum()) for c in classes}
    g = per_class_subset(gen_labels, counts)
    accuracy = {
        "generated": float((classes[nearest_centre(gen_emb, centres)] == gen_labels).mean()),
        "real": float((classes[nearest_centre(real_emb[b], centres)] == real_labels[b]).mean()),
    }
    return {
        "identity_accuracy": accuracy["generated"],
        "identity_accuracy_real": accuracy["real"],
        "fd": frechet_distance(gen_emb[g], real_emb[b]),
        "fd_real": frechet_distance(real_emb[a], real_emb[b]),
        **precision_recall(real_emb[b], gen_emb[g], k),
        **{f"{key}_real": v for key, v in precision_recall(real_emb[b], real_emb[a], k).items()},
        "rows": {"generated": int(len(g)), "real_a": int(len(a)), "real_b": int(len(b))},
        "k": k,
    }


READY, MARGINAL = 0.7, 0.4  # share of the real references that precision and recall must both reach


def readiness(d: dict) -> str:
    """A verdict on a generator from its recognizer-space diagnostics (`generator_diagnostics`), by one rule:
    precision and recall each as a share of the same measure on held-out real images (their references);
    "ready" when both reach READY (0.7) of theirs, "marginal" when both reach MARGINAL (0.4), else "not ready".
    Precision is the share of samples that land among real ones of their class: below MARGINAL of the real
    share, most samples - and so most of what a mixed class is made from - are off the data, and mixed classes
    are likely noise to the recognizer. Recall guards the other way (a few good modes, the rest missing)."""
    share = min(d["precision"] / max(d["precision_real"], 1e-12), d["recall"] / max(d["recall_real"], 1e-12))
    return "ready" if share >= READY else "marginal" if share >= MARGINAL else "not ready"


def readiness_line(d: dict) -> str:
    """One line a user reads: the verdict and the figures it rests on, beside their references."""
    verdict = readiness(d)
    why = {
        "ready": "its samples sit among real images of their classes",
        "marginal": "mixed classes may be partly noise",
        "not ready": "mixed classes are likely noise: train the generator longer or larger before mixing",
    }[verdict]
    return (
        f"generator {verdict} ({why}): precision {d['precision']:.3f} (real {d['precision_real']:.3f}), recall "
        f"{d['recall']:.3f} (real {d['recall_real']:.3f}), identity accuracy {d['identity_accuracy']:.3f} (real "
        f"{d['identity_accuracy_real']:.3f}) in the baseline's embeddings"
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def mixed_diagnostics(
    emb: np.ndarray,
    tuple_of_row: np.ndarray,
    parents: np.ndarray,
    centres: np.ndarray,
    threshold: float,
    seed: int,
    max_pairs: int = 200_000,
) -> dict:
    """Are mixed classes new identities? `emb`: the baseline's embeddings of the mixed samples; `tuple_of_row`:
    each row's tuple index into `parents` (T, m) real class ids; `centres`: the baseline's real class centres;
    `threshold`: its cosine threshold for "same". Per tuple: cosine of the mixed centre to each parent centre
    beside the parents' own cosine (mean over parent pairs), and the share of its samples whose nearest real
    centre is a parent. Over tuples: the true accept rate of pairs within a tuple and the false accept rate of
    pairs across tuples at `threshold` (`max_pairs` of each drawn, seed-fixed; pairs of a row with itself dropped)."""
    emb, cu = _unit(np.asarray(emb, np.float64)), _unit(np.asarray(centres, np.float64))
    t_ids = np.unique(tuple_of_row)
    mixed = _unit(np.stack([emb[tuple_of_row == t].mean(0) for t in t_ids]))
    par = parents[t_ids]
    to_parent = np.einsum("td,tmd->tm", mixed, cu[par])
    m = par.shape[1]
    iu = np.triu_indices(m, 1)
    between = np.einsum("tmd,tnd->tmn", cu[par], cu[par])[:, iu[0], iu[1]].mean(1)
    nearest = nearest_centre(emb, centres)
    row_parents = parents[tuple_of_row]
    to_a_parent = (nearest[:, None] == row_parents).any(1)
    share = np.array([to_a_parent[tuple_of_row == t].mean() for t in t_ids])
    rng = np.random.default_rng(seed)
    # genuine pairs: a row and another row of its tuple; impostor pairs: two rows of different tuples
    order = np.argsort(tuple_of_row, kind="stable")
    _, start, count = np.unique(tuple_of_row[order], return_index=True, return_counts=True)
    slot = np.searchsorted(t_ids, tuple_of_row)
    i = rng.integers(0, len(emb), max_pairs)
    j = order[start[slot[i]] + rng.integers(0, count[slot[i]])]
    genuine = np.einsum("nd,nd->n", emb[i], emb[j])[i != j]
    i, j = rng.integers(0, len(emb), (2, max_pairs))
    other = tuple_of_row[i] != tuple_of_row[j]
    impostor = np.einsum("nd,nd->n", emb[i[other]], emb[j[other]])
    rate = lambda s: float((s > threshold).mean()) if len(s) else None  # noqa: E731 -- read as the formula
    return {
        "tuples": int(len(t_ids)),
        "cos_to_parent": float(to_parent.mean()),
        "cos_between_parents": float(between.mean()),
        "assigned_to_parent": float(share.mean()),
        "tar": rate(genuine),
        "far": rate(impostor),
        "threshold": float(threshold),
        "pairs": {"genuine": int(len(genuine)), "impostor": int(len(impostor))},
        "per_tuple": {
            "cos_to_parent": to_parent.round(4).tolist(),
            "cos_between_parents": between.round(4).tolist(),
            "assigned_to_parent": share.round(4).tolist(),
        },
    }
