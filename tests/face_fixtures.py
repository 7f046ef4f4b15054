"""Tiny benchmark folders in their published layouts (IJB-B/C, TinyFace) and .bin sets, made by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from scoremix_ray.core.data.align import ARCFACE_TEMPLATE


def _face(rng: np.random.Generator, subject: int, side: int = 48) -> np.ndarray:
    """A smooth RGB picture whose colours depend on the subject, with a little noise."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    base = np.stack([np.sin(3 * xx + subject), np.cos(2 * yy + subject / 2), xx * yy], -1) * 100 + 120
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def make_ijb(root: Path, prefix: str = "ijbc", subjects: int = 10, seed: int = 0) -> dict:
    """An IJB folder: 2 templates per subject (20 by default), each of 2-3 faces in 1-2 media; pairs = each
    subject's two templates (same) and 3 different-subject pairs per subject. Returns what was written."""
    rng = np.random.default_rng(seed)
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    faces, points, templates = [], [], []
    media = 0
    for s in range(subjects):
        for t in (2 * s + 1, 2 * s + 2):
            templates.append((t, s))
            for m in range(int(rng.integers(1, 3))):
                media += 1
                for _ in range(int(rng.integers(1, 3)) if m else 2):
                    name = f"{len(faces) + 1}.jpg"
                    Image.fromarray(_face(rng, s)).save(root / "loose_crop" / name, quality=95)
                    scale, shift = rng.uniform(0.35, 0.45), rng.uniform(-2, 2, 2)
                    lm = ARCFACE_TEMPLATE * scale + shift + 2
                    faces.append(f"{name} {t} {media}")
                    points.append(" ".join([name, *(f"{v:.3f}" for v in lm.ravel()), f"{rng.uniform(0.5, 1):.3f}"]))
    pairs = [f"{2 * s + 1} {2 * s + 2} 1" for s in range(subjects)]
    pairs += [f"{2 * s + 1} {2 * ((s + k) % subjects) + 2} 0" for s in range(subjects) for k in (1, 2, 3)]
    (root / "meta" / f"{prefix}_face_tid_mid.txt").write_text("\n".join(faces) + "\n")
    (root / "meta" / f"{prefix}_name_5pts_score.txt").write_text("\n".join(points) + "\n")
    (root / "meta" / f"{prefix}_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    return {"faces": len(faces), "templates": 2 * subjects, "pairs": len(pairs)}


def make_tinyface(root: Path, identities: int = 4, distractors: int = 5, seed: int = 0) -> Path:
    """<root>/Testing_Set/{Probe, Gallery_Match, Gallery_Distractor}: 2 probes and 1 gallery face per identity."""
    rng = np.random.default_rng(seed)
    base = root / "Testing_Set"
    for part in ("Probe", "Gallery_Match", "Gallery_Distractor"):
        (base / part).mkdir(parents=True)
    for i in range(1, identities + 1):
        for n in (1, 2):
            Image.fromarray(_face(rng, i, 20)).save(base / "Probe" / f"{i}_{n}.jpg")
        Image.fromarray(_face(rng, i, 20)).save(base / "Gallery_Match" / f"{i}_3.jpg")
    for d in range(distractors):
        Image.fromarray(_face(rng, 100 + d, 20)).save(base / "Gallery_Distractor" / f"d{d}.jpg")
    return root
