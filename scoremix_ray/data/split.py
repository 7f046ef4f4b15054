"""Limited-data split and verification pairs, deterministic by `data.split_seed`.

open-set (default, as in face recognition): a seed-fixed subset of classes is held out entirely; the
verification pairs come only from those unseen classes. Mixed ScoreMix classes are new identities, so
only unseen identities can show their benefit.
closed-set: each class keeps a held-out share of its images; pairs come from those held-out images, and
closed-set accuracy is measurable because the test classes are training classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoremix_ray.config import DataConfig
from scoremix_ray.data.readers import LabelledImages
from scoremix_ray.errors import ScoreMixError


@dataclass
class Split:
    train: LabelledImages  # labels renumbered 0..n_train_classes-1
    test: LabelledImages  # the images the pairs index (labels in the train numbering when closed-set)
    pairs: np.ndarray  # int64 (P, 2), indices into test.images
    issame: np.ndarray  # bool (P,)
    protocol: str

    def save(self, path: str | Path) -> None:
        np.savez_compressed(
            path, train_images=self.train.images, train_labels=self.train.labels,
            train_names=np.array(self.train.class_names), test_images=self.test.images,
            test_labels=self.test.labels, test_names=np.array(self.test.class_names),
            pairs=self.pairs, issame=self.issame, protocol=np.array(self.protocol),
        )  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        z = np.load(path)
        return cls(
            LabelledImages(z["train_images"], z["train_labels"], [str(n) for n in z["train_names"]]),
            LabelledImages(z["test_images"], z["test_labels"], [str(n) for n in z["test_names"]]),
            z["pairs"], z["issame"], str(z["protocol"]),
        )  # fmt: skip

    def summary(self) -> dict:
        return {
            "protocol": self.protocol,
            "train_classes": self.train.num_classes,
            "train_images": int(len(self.train.labels)),
            "test_classes": int(len(np.unique(self.test.labels))),
            "test_images": int(len(self.test.labels)),
            "pairs": int(len(self.issame)),
            "same_pairs": int(self.issame.sum()),
        }


def _subset(data: LabelledImages, idx: np.ndarray, classes: list[int]) -> LabelledImages:
    remap = np.full(data.num_classes, -1, np.int64)
    remap[classes] = np.arange(len(classes))
    return LabelledImages(data.images[idx], remap[data.labels[idx]], [data.class_names[c] for c in classes])


def make_pairs(labels: np.ndarray, num_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Balanced verification pairs: num_pairs // 2 same-class, the rest different-class, distinct images."""
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    multi = [c for c, idx in by_class.items() if len(idx) >= 2]
    classes = list(by_class)
    if not multi or len(classes) < 2:
        raise ScoreMixError(
            f"verification pairs need >= 2 classes and one with >= 2 images; test split has {len(classes)} classes"
        )
    n_same = num_pairs // 2
    pairs = []
    for c in rng.choice(multi, n_same):
        pairs.append(rng.choice(by_class[c], 2, replace=False))
    for _ in range(num_pairs - n_same):
        a, b = rng.choice(classes, 2, replace=False)
        pairs.append((rng.choice(by_class[a]), rng.choice(by_class[b])))
    issame = np.arange(num_pairs) < n_same
    order = rng.permutation(num_pairs)
    return np.asarray(pairs, np.int64)[order], issame[order]


def _take_per_class(idx: np.ndarray, k: int | None, name: str, rng: np.random.Generator) -> np.ndarray:
    if k is None:
        return idx
    if len(idx) < k:
        raise ScoreMixError(f"class '{name}' has {len(idx)} training images, fewer than data.per_class={k}")
    return rng.choice(idx, k, replace=False)


def make_split(data: LabelledImages, cfg: DataConfig) -> Split:
    rng = np.random.default_rng(cfg.split_seed)
    n = data.num_classes
    if cfg.protocol == "open-set":
        n_unseen = int(round(n * cfg.unseen_fraction))
        if n_unseen < 2 or n - n_unseen < 2:
            raise ScoreMixError(
                f"open-set protocol with {n} classes and data.unseen_fraction={cfg.unseen_fraction} leaves "
                f"{n - n_unseen} training and {n_unseen} unseen classes; both need >= 2"
            )
        perm = rng.permutation(n)
        train_classes, unseen = sorted(perm[n_unseen:].tolist()), sorted(perm[:n_unseen].tolist())
        train_idx = np.concatenate([
            _take_per_class(np.flatnonzero(data.labels == c), cfg.per_class, data.class_names[c], rng)
            for c in train_classes
        ])  # fmt: skip
        test_idx = np.flatnonzero(np.isin(data.labels, unseen))
        train = _subset(data, np.sort(train_idx), train_classes)
        test = _subset(data, test_idx, unseen)
    else:
        train_parts, test_parts = [], []
        for c in range(n):
            idx = rng.permutation(np.flatnonzero(data.labels == c))
            n_test = max(1, int(round(len(idx) * cfg.test_fraction)))
            if len(idx) - n_test < 1:
                raise ScoreMixError(f"class '{data.class_names[c]}' has {len(idx)} image(s): too few to hold some out")
            test_parts.append(idx[:n_test])
            train_parts.append(_take_per_class(idx[n_test:], cfg.per_class, data.class_names[c], rng))
        train = _subset(data, np.sort(np.concatenate(train_parts)), list(range(n)))
        test = _subset(data, np.sort(np.concatenate(test_parts)), list(range(n)))
    pairs, issame = make_pairs(test.labels, cfg.num_pairs, rng)
    return Split(train, test, pairs, issame, cfg.protocol)
