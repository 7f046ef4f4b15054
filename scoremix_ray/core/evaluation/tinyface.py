"""TinyFace 1:N identification (Cheng et al. 2018), from its published test layout:

    <root>[/Testing_Set]/Probe/<identity>_<n>.jpg            probes (5,749 in the release)
    <root>[/Testing_Set]/Gallery_Match/<identity>_<n>.jpg    the probes' identities in the gallery
    <root>[/Testing_Set]/Gallery_Distractor/<any>.jpg        distractors (153,428): identities of nobody probed

The identity is the file name up to its first "_" (as the release names them; AdaFace's helper reads them
so). The faces are already aligned, at 20 px on average: each is centre-cropped square and resized to the
recognizer's size. Every probe is ranked against the whole gallery (match + distractors) by cosine;
rank-k is the share of probes with a gallery face of their identity among their k nearest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scoremix_ray.core.data.images import decode
from scoremix_ray.foundations.errors import ScoreMixError

RANKS = (1, 5, 20)
PARTS = ("Probe", "Gallery_Match", "Gallery_Distractor")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
PROBE_BLOCK = 2**24  # similarities held at once (64 MB of float32)


def base_of(root: Path) -> Path:
    root = Path(root)
    for base in (root, root / "Testing_Set"):
        if all((base / p).is_dir() for p in PARTS):
            return base
    raise ScoreMixError(f"{root}: expected folders {', '.join(PARTS)} (or Testing_Set/ holding them)")


def files_of(root: Path) -> list[Path]:
    """Every image file of the three parts, in a fixed order (part, then name)."""
    base = base_of(root)
    return [f for p in PARTS for f in sorted((base / p).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]


def read_tinyface(root: str | Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(files, part of each: 0 probe / 1 gallery match / 2 distractor, identity of each: -1 for distractors)."""
    files = files_of(root)
    part = np.array([PARTS.index(f.parent.name) for f in files], np.int64)
    ids: dict[str, int] = {}
    labels = np.array([-1 if p == 2 else ids.setdefault(f.name.split("_")[0], len(ids)) for f, p in zip(files, part)])
    probes = labels[part == 0]
    if len(probes) == 0:
        raise ScoreMixError(f"{base_of(root) / 'Probe'}: no probe images")
    missing = ~np.isin(probes, labels[part == 1])
    if missing.all():
        raise ScoreMixError(f"{base_of(root)}: no probe's identity is in Gallery_Match (names are <identity>_<n>.jpg)")
    return files, part, labels


class ResizedFiles:
    """Image files as uint8 images of the recognizer's size (centre square, resized). Picklable."""

    def __init__(self, files: list[Path]):
        self.files = [str(f) for f in files]

    def __len__(self) -> int:
        return len(self.files)

    def images(self, rows: np.ndarray, size: int, channels: int) -> np.ndarray:
        return np.stack([decode(Path(self.files[i]).read_bytes(), size, channels, self.files[i]) for i in rows])


def rank_k(
    probe: np.ndarray, probe_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray, ranks=RANKS
) -> dict:
    """{"rank<k>": share of probes whose k nearest gallery faces (cosine of L2-normalised embeddings) hold
    their identity}, probes a block at a time (memory bounded, never probes x gallery at once)."""
    hits = dict.fromkeys(ranks, 0)
    top = max(ranks)
    chunk = max(1, PROBE_BLOCK // max(1, len(gallery)))
    for lo in range(0, len(probe), chunk):
        sim = probe[lo : lo + chunk] @ gallery.T
        k = min(top, sim.shape[1])
        best = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(sim, best, 1).argsort(1)[:, ::-1]
        found = gallery_labels[np.take_along_axis(best, order, 1)] == probe_labels[lo : lo + chunk, None]
        for r in ranks:
            hits[r] += int(found[:, :r].any(1).sum())
    return {f"rank{r}": hits[r] / len(probe) for r in ranks}


def identify(part: np.ndarray, labels: np.ndarray, emb: np.ndarray) -> dict:
    """Rank-1/5/20 of the probes against the gallery (match + distractors), from L2-normalised embeddings."""
    probe, gallery = part == 0, part > 0
    out = rank_k(emb[probe], labels[probe], emb[gallery], labels[gallery])
    out.update(probes=int(probe.sum()), gallery=int(gallery.sum()), distractors=int((part == 2).sum()))
    return out
