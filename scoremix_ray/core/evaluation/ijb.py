"""IJB-B / IJB-C 1:1 template verification as insightface's `recognition/_evaluation_/ijb/eval_ijbc.py`
defines it, from the benchmark's own folder:

    <root>/meta/<p>_face_tid_mid.txt          image template media      (one line per face crop)
    <root>/meta/<p>_template_pair_label.txt   template1 template2 label (1 = same identity)
    <root>/meta/<p>_name_5pts_score.txt       image x1 y1 ... x5 y5 score (5 landmarks, detector score)
    <root>/loose_crop/<image>                 the crops the landmarks are in

with <p> = ijbc (IJB-C) or ijbb (IJB-B). Each crop is aligned to the ArcFace template (`data.align`), embedded
with its mirror (the two embeddings summed), kept unnormalised (its norm is a quality weight: insightface's
"N1") and optionally scaled by the detector score ("D1"). A template is the L2-normalised sum over its media
of the mean over each media's faces (frames of one video count once); a pair's score is the cosine of its
two templates; TAR at FAR f is the ROC point whose FPR is nearest f (sklearn's `roc_curve`, as insightface
reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoremix_ray.core.data.align import align, read_rgb, to_channels
from scoremix_ray.foundations.errors import ScoreMixError
from scoremix_ray.foundations.files import new_figure, save_figure

FAR_LEVELS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
PAIR_BATCH = 16_384  # pairs scored at once: 2 x 16k x 512 float32 = 64 MB of gathered templates


def far_key(far: float) -> str:
    return f"tar_at_far_{far:.0e}".replace("e-0", "e-")  # 1e-6 -> "tar_at_far_1e-6"


def prefix_of(root: Path) -> str:
    """ "ijbc" or "ijbb", from the meta files present."""
    found = [p for p in ("ijbc", "ijbb") if (root / "meta" / f"{p}_face_tid_mid.txt").is_file()]
    if len(found) != 1:
        raise ScoreMixError(
            f"{root}: expected meta/ijbc_face_tid_mid.txt or meta/ijbb_face_tid_mid.txt (IJB-C or IJB-B), "
            f"found {'both' if found else 'neither'}"
        )
    return found[0]


def meta_files(root: Path) -> list[Path]:
    p = prefix_of(root)
    return [root / "meta" / f"{p}_{n}.txt" for n in ("face_tid_mid", "template_pair_label", "name_5pts_score")]


@dataclass(frozen=True)
class IJB:
    root: Path
    names: np.ndarray  # (N,) image file names in loose_crop/
    templates: np.ndarray  # (N,) template id of each face
    medias: np.ndarray  # (N,) media id of each face
    landmarks: np.ndarray  # (N, 5, 2) float32
    scores: np.ndarray  # (N,) detector score
    pairs: np.ndarray  # (P, 2) template ids
    labels: np.ndarray  # (P,) bool, same identity


def _table(path: Path, columns: int) -> list[np.ndarray]:
    """A whitespace-separated text table as columns (the first as strings), one line naming a bad row."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, sep=r"\s+", header=None, dtype={0: str}, engine="c")
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise ScoreMixError(f"{path}: not a table of {columns} columns: {str(e).splitlines()[0]}") from None
    if frame.shape[1] != columns:
        raise ScoreMixError(f"{path}: {frame.shape[1]} columns, expected {columns}")
    bad = frame.iloc[:, 1:].isna().any(axis=1).to_numpy()
    if bad.any():
        raise ScoreMixError(f"{path}: line {int(np.argmax(bad)) + 1} has a missing or non-numeric value")
    return [frame[c].to_numpy() for c in frame.columns]


def read_ijb(root: str | Path) -> IJB:
    """The benchmark's meta files, checked against each other (the landmark file lists the faces in the
    template file's order, as insightface assumes)."""
    root = Path(root)
    faces, pairs, points = meta_files(root)
    name, tid, mid = _table(faces, 3)
    t1, t2, label = _table(pairs, 3)
    cols = _table(points, 12)
    if len(cols[0]) != len(name) or not np.array_equal(cols[0], name):
        first = next((i for i, (a, b) in enumerate(zip(cols[0], name)) if a != b), min(len(name), len(cols[0])))
        raise ScoreMixError(f"{points}: line {first + 1} does not name the same image as line {first + 1} of {faces}")
    templates = tid.astype(np.int64)
    unknown = ~np.isin(np.concatenate([t1, t2]).astype(np.int64), templates)
    if unknown.any():
        t = np.concatenate([t1, t2])[np.argmax(unknown)]
        raise ScoreMixError(f"{pairs}: template {t} has no face in {faces}")
    return IJB(
        root,
        name,
        templates,
        mid.astype(np.int64),
        np.stack(cols[1:11], 1).astype(np.float32).reshape(-1, 5, 2),
        cols[11].astype(np.float32),
        np.stack([t1, t2], 1).astype(np.int64),
        label.astype(np.int64) == 1,
    )


class AlignedCrops:
    """The benchmark's crops as uint8 images of the recognizer's size: read, aligned by their landmarks, turned
    to the model's channels. Picklable (a Ray Data actor holds one); reads only the rows asked for."""

    def __init__(self, root: Path, names: np.ndarray, landmarks: np.ndarray):
        self.folder, self.names, self.landmarks = Path(root) / "loose_crop", names, landmarks

    def __len__(self) -> int:
        return len(self.names)

    def images(self, rows: np.ndarray, size: int, channels: int) -> np.ndarray:
        return np.stack(
            [to_channels(align(read_rgb(self.folder / self.names[i]), self.landmarks[i], size), channels) for i in rows]
        )


FACE_CHUNK = 65_536  # faces pooled at once: a chunk of the memory-mapped embeddings, never all 469k in memory


def face_features(feats: np.ndarray, scores: np.ndarray, norm_score: bool = True, detector_score: bool = True):
    """insightface's test modes on the flip-summed embeddings: N0 normalises each face (N1 keeps its norm as a
    quality weight); D1 multiplies each by its detector score."""
    feats = np.asarray(feats, np.float32)
    if not norm_score:
        feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    return feats * scores[:, None] if detector_score else feats


def template_features(
    feats: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    scores: np.ndarray | None = None,
    norm_score: bool = True,
    detector_score: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(template ids, L2-normalised float32 template features): per template, the sum over its media of the
    mean of that media's faces (`face_features` of them, with `scores` and the test modes). Faces are read
    FACE_CHUNK at a time and summed per (template, media) group by a sparse matrix product, so memory holds the
    groups' sums, not the faces (insightface's loop holds every face in memory; benchmarks/ijb_scale.py)."""
    from scipy import sparse

    ids, t = np.unique(templates, return_inverse=True)
    groups, g = np.unique(np.stack([t.ravel(), medias], 1), axis=0, return_inverse=True)  # (template, media)
    g = g.ravel()
    n, k = len(g), len(groups)
    scores = np.ones(n, np.float32) if scores is None else scores
    sums = np.zeros((k, feats.shape[1]), np.float32)
    for lo in range(0, n, FACE_CHUNK):
        hi = min(lo + FACE_CHUNK, n)
        member = sparse.csr_matrix((np.ones(hi - lo, np.float32), (g[lo:hi], np.arange(hi - lo))), (k, hi - lo))
        sums += member @ face_features(feats[lo:hi], scores[lo:hi], norm_score, detector_score)
    means = sums / np.bincount(g, minlength=k)[:, None].astype(np.float32)
    out = sparse.csr_matrix((np.ones(k, np.float32), (groups[:, 0], np.arange(k))), (len(ids), k)) @ means
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return ids, (out / np.where(norms > 0, norms, 1)).astype(np.float32)


def pair_scores(ids: np.ndarray, template_feats: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine of each pair's two templates, PAIR_BATCH pairs at a time."""
    index = np.searchsorted(ids, pairs)
    out = np.empty(len(pairs), np.float32)
    for lo in range(0, len(pairs), PAIR_BATCH):
        a, b = index[lo : lo + PAIR_BATCH, 0], index[lo : lo + PAIR_BATCH, 1]
        out[lo : lo + PAIR_BATCH] = np.einsum("pd,pd->p", template_feats[a], template_feats[b])
    return out


def tar_at_far(scores: np.ndarray, labels: np.ndarray, levels=FAR_LEVELS) -> tuple[dict, np.ndarray, np.ndarray]:
    """({tar_at_far_<f>: TPR at the ROC point whose FPR is nearest f, the largest TPR among points of that FPR},
    fpr, tpr), as eval_ijbc.py reads its ROC (it flips the curve so that the first nearest point is the highest).
    With fewer than 1/f negative pairs the nearest point is at FPR 0: reported, and noted."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels.astype(int), scores)
    flipped_fpr, flipped_tpr = fpr[::-1], tpr[::-1]
    out: dict = {far_key(f): float(flipped_tpr[np.argmin(np.abs(flipped_fpr - f))]) for f in levels}
    negatives = int((~labels).sum())
    coarse = [f"{f:g}" for f in levels if negatives < 1 / f]
    if coarse:
        out["notes"] = [f"FAR {', '.join(coarse)} below 1/{negatives} negative pairs: the nearest ROC point is read"]
    return out, fpr, tpr


def verify(bench: IJB, feats: np.ndarray, norm_score: bool = True, detector_score: bool = True) -> tuple[dict, dict]:
    """(metrics, ROC curve {"fpr", "tpr"} thinned to ~1000 points) from the faces' flip-summed embeddings."""
    ids, tf = template_features(feats, bench.templates, bench.medias, bench.scores, norm_score, detector_score)
    scores = pair_scores(ids, tf, bench.pairs)
    metrics, fpr, tpr = tar_at_far(scores, bench.labels)
    metrics.update(
        templates=int(len(ids)),
        faces=int(len(bench.names)),
        pairs=int(len(scores)),
        negative_pairs=int((~bench.labels).sum()),
    )
    return metrics, thin_roc(fpr, tpr)


def thin_roc(fpr: np.ndarray, tpr: np.ndarray, points: int = 1000) -> dict:
    """The ROC curve to draw: whole when small; else (IJB-C's has millions of points) its ends, its highest
    point at FPR 0, and at `points` log-spaced FPRs the highest point at or below each."""
    keep = np.arange(len(fpr))
    if len(fpr) > 2 * points:
        at = np.searchsorted(fpr, np.logspace(-7, 0, points), side="right") - 1
        keep = np.unique(np.concatenate([[0, np.flatnonzero(fpr == 0)[-1], len(fpr) - 1], at.clip(0)]))
    return {"fpr": fpr[keep], "tpr": tpr[keep]}


def plot_roc(curves: dict[str, dict], title: str, path: str | Path) -> Path:
    """ROC curves (TPR against FPR on a log axis, insightface's IJB plot), one per recognizer."""
    fig = new_figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
    for label, c in curves.items():
        fpr = np.asarray(c["fpr"])
        ax.plot(np.maximum(fpr, 1e-6), c["tpr"], label=label, drawstyle="steps-post")  # FPR 0 drawn at the left edge
    ax.set(
        xscale="log", xlim=(1e-6, 1), ylim=(0, 1), xlabel="false accept rate", ylabel="true accept rate", title=title
    )
    ax.grid(True, which="major", alpha=0.4)
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return Path(path)
