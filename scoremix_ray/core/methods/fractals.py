"""Fractal images for DiffuseMix, made here (the authors download a fractal set; nothing is downloaded).

An iterated function system of 2-4 random contractive affine maps, run by the chaos game and rasterised
as a point-density image; everything comes from the seed.
"""

from __future__ import annotations

import numpy as np


def ifs_fractal(seed: int, size: int, channels: int, points: int = 20000) -> np.ndarray:
    rng = np.random.default_rng([seed, 7])
    n = rng.integers(2, 5)
    maps = []
    for _ in range(n):
        a = rng.uniform(-1, 1, (2, 2))
        a *= rng.uniform(0.3, 0.8) / max(np.linalg.svd(a, compute_uv=False)[0], 1e-6)  # contraction
        maps.append((a, rng.uniform(-1, 1, 2)))
    probs = np.array([abs(np.linalg.det(a)) + 1e-3 for a, _ in maps])
    choice = rng.choice(n, points, p=probs / probs.sum())
    xy, pts = np.zeros(2), np.empty((points, 2))
    for i, k in enumerate(choice):
        a, b = maps[k]
        xy = a @ xy + b
        pts[i] = xy
    pts = pts[20:]  # burn-in
    lo, hi = pts.min(0), pts.max(0)
    ij = ((pts - lo) / np.maximum(hi - lo, 1e-9) * (size - 1)).round().astype(int)
    img = np.zeros((size, size))
    np.add.at(img, (ij[:, 1], ij[:, 0]), 1.0)
    img = np.log1p(img) / max(np.log1p(img).max(), 1e-9)
    img = (img * 255).round().astype(np.uint8)[..., None]
    if channels == 3:
        tint = rng.uniform(0.4, 1.0, 3)
        img = (img * tint).round().astype(np.uint8)
    return img
