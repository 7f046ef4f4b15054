"""Sample quality you can measure: do a class's samples look like that class to a simple classifier?

A multinomial logistic regression on raw pixels, fit on the real training split, classifies generated
samples; the share classified as their conditioning class is the "class accuracy". It is a floor, not a
FID: a pixel classifier is weak, so a high number means clearly class-like samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

MAX_SIDE = 32  # features: images are block-averaged to at most 32 px a side (37k raw features at 112x112 RGB)


def features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, F) in [0, 1], block-averaged by f = ceil(H / MAX_SIDE)."""
    x = images.astype(np.float32) / 255.0
    f = -(-x.shape[1] // MAX_SIDE)
    if f > 1:
        h, w = x.shape[1] // f * f, x.shape[2] // f * f
        x = x[:, :h, :w].reshape(len(x), h // f, f, w // f, f, x.shape[3]).mean((2, 4))
    return x.reshape(len(x), -1)


def pixel_classifier(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> LogisticRegression:
    # scikit-learn (and the pandas it pulls in) costs ~0.45 s to import: a sweep trial's fresh process, which
    # never fits one, does not pay it
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, random_state=seed).fit(features(images), labels)


def class_accuracy(clf: LogisticRegression, images: np.ndarray, labels: np.ndarray) -> dict:
    pred = clf.predict(features(images))
    per_class = {int(c): float((pred[labels == c] == c).mean()) for c in np.unique(labels)}
    return {"class_accuracy": float((pred == labels).mean()), "per_class": per_class}
