"""Verification and identification metrics on cosine similarity scores.

All take scores (higher = more alike) and a boolean `issame` per pair, so the same code scores the split's
pairs, an InsightFace `.bin` set, or any hand-built case in the tests. Keys follow the `metrics.json`
contract in the README.
"""

from __future__ import annotations

import numpy as np

FAR_LEVELS = (1e-1, 1e-2, 1e-3)


def _far_key(far: float) -> str:
    return f"tar_at_far_{far:.0e}".replace("e-0", "e-")  # 1e-2 -> "tar_at_far_1e-2"


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> float:
    """The threshold (midpoint between consecutive sorted scores, or beyond either end) that maximises
    accuracy of `score > t` as "same"; ties go to the lowest threshold."""
    s = np.sort(np.unique(scores))
    cands = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6]])
    # accuracy at every candidate in one pass: #same above t + #different at or below t
    order = np.argsort(scores)
    ss, same = scores[order], issame[order]
    below = np.searchsorted(ss, cands, side="right")  # pairs with score <= t
    diff_below = np.concatenate([[0], np.cumsum(~same)])[below]
    same_above = same.sum() - np.concatenate([[0], np.cumsum(same)])[below]
    return float(cands[np.argmax(diff_below + same_above)])


FOLDS = 10  # the LFW protocol's folds


def kfold_accuracies(scores: np.ndarray, issame: np.ndarray, folds: int = FOLDS) -> np.ndarray:
    """LFW protocol: contiguous folds; each fold is scored at the threshold best on the other folds."""
    scores, issame = np.asarray(scores, np.float64), np.asarray(issame, bool)
    n = len(scores)
    if n < folds:
        raise ValueError(f"{n} pairs are too few for {folds}-fold verification accuracy")
    bounds = np.linspace(0, n, folds + 1).astype(int)
    accs = []
    for k in range(folds):
        test = np.zeros(n, bool)
        test[bounds[k] : bounds[k + 1]] = True
        t = best_threshold(scores[~test], issame[~test])
        accs.append(np.mean((scores[test] > t) == issame[test]))
    return np.asarray(accs)


def tar_at_far(scores: np.ndarray, issame: np.ndarray, far: float) -> float | None:
    """True-accept rate at the threshold whose false-accept rate is at most `far`. None when there are
    fewer than 1/far different pairs: a FAR that small cannot be measured (one false accept is > far)."""
    neg = np.sort(np.asarray(scores)[~issame])[::-1]
    pos = np.asarray(scores)[issame]
    if len(neg) < 1 / far or len(pos) == 0:
        return None
    k = int(np.floor(far * len(neg)))  # false accepts allowed
    t = neg[k] if k < len(neg) else -np.inf  # accept strictly above the (k+1)-th highest negative
    return float(np.mean(pos > t))


def roc_auc(scores: np.ndarray, issame: np.ndarray) -> float:
    """Area under the ROC curve = P(s_same > s_diff) + P(s_same = s_diff) / 2 = U / (n_same * n_diff), with U
    the Mann-Whitney statistic of the same-identity scores (scipy: already loaded by a trial, unlike sklearn)."""
    from scipy.stats import mannwhitneyu

    same, diff = scores[issame], scores[~issame]
    return float(mannwhitneyu(same, diff).statistic / (len(same) * len(diff)))


def verification_metrics(scores: np.ndarray, issame: np.ndarray, folds: int = FOLDS) -> dict:
    scores, issame = np.asarray(scores, np.float64), np.asarray(issame, bool)
    accs = kfold_accuracies(scores, issame, folds)
    out: dict = {
        "verification_accuracy": float(np.mean(accs)),
        "verification_accuracy_std": float(np.std(accs)),
        "verification_accuracy_folds": accs.tolist(),  # for paired fold differences between recognizers
        "roc_auc": roc_auc(scores, issame),
        "pairs": int(len(scores)),
        "negative_pairs": int((~issame).sum()),
    }
    notes = []
    for far in FAR_LEVELS:
        out[_far_key(far)] = tar_at_far(scores, issame, far)
        if out[_far_key(far)] is None:
            notes.append(f"FAR {far:g} needs >= {int(1 / far)} different pairs, have {int((~issame).sum())}")
    if notes:
        out["notes"] = notes
    return out


def pair_scores(emb: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair of L2-normalised embeddings."""
    return np.einsum("pd,pd->p", emb[pairs[:, 0]], emb[pairs[:, 1]])


def closed_set_accuracy(emb: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> float:
    """Share of images whose nearest class centre (cosine) is their own class."""
    return float(np.mean((emb @ centres.T).argmax(1) == labels))


RANK1_BLOCK = 2**24  # similarities held at once (64 MB of float32): 2048 probes at 8k images, 209 at 80k


def rank1_accuracy(emb: np.ndarray, labels: np.ndarray, chunk: int | None = None) -> float:
    """Leave-one-out rank-1 identification: each image against all others as the gallery; counted only for
    images whose class has another image in the gallery. Probes go `chunk` at a time (default: RANK1_BLOCK
    similarities), so memory is bounded, never N x N."""
    counts = np.bincount(labels)
    has_mate = counts[labels] >= 2
    nearest = np.empty(len(emb), np.int64)
    chunk = chunk or max(64, min(2048, RANK1_BLOCK // max(1, len(emb))))
    for lo in range(0, len(emb), chunk):
        sim = emb[lo : lo + chunk] @ emb.T
        rows = np.arange(len(sim))
        sim[rows, lo + rows] = -np.inf  # not oneself
        nearest[lo : lo + chunk] = sim.argmax(1)
    return float(np.mean(labels[nearest][has_mate] == labels[has_mate]))
