"""Sample quality you can measure: do a class's samples look like that class to a simple classifier?

A multinomial logistic regression on raw pixels, fit on the real training split, classifies generated
samples; the share classified as their conditioning class is the "class accuracy". It is a floor, not a
FID: a pixel classifier is weak, so a high number means clearly class-like samples.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression


def pixel_classifier(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> LogisticRegression:
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return LogisticRegression(max_iter=2000, random_state=seed).fit(x, labels)


def class_accuracy(clf: LogisticRegression, images: np.ndarray, labels: np.ndarray) -> dict:
    pred = clf.predict(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    per_class = {int(c): float((pred[labels == c] == c).mean()) for c in np.unique(labels)}
    return {"class_accuracy": float((pred == labels).mean()), "per_class": per_class}
