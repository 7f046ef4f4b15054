"""Limited-data split and verification pairs, deterministic by `data.split_seed`.

open-set (default, as in face recognition): a seed-fixed subset of classes is held out entirely; the
verification pairs come only from those unseen classes. Mixed ScoreMix classes are new identities, so
only unseen identities can show their benefit.
closed-set: each class keeps a held-out share of its images; pairs come from those held-out images, and
closed-set accuracy is measurable because the test classes are training classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoremix_ray.config import DataConfig
from scoremix_ray.core.data.readers import LabelledImages
from scoremix_ray.core.data.store import ImageStore, StoreWriter, write_store
from scoremix_ray.foundations.errors import ScoreMixError
from scoremix_ray.foundations.files import atomic_path

log = logging.getLogger("scoremix_ray")


@dataclass
class Split:
    train: LabelledImages  # labels renumbered 0..n_train_classes-1
    test: LabelledImages  # the images the pairs index (labels in the train numbering when closed-set)
    pairs: np.ndarray  # int64 (P, 2), indices into test.images
    issame: np.ndarray  # bool (P,)
    protocol: str

    def save(self, path: str | Path) -> None:
        """`path` (split.npz: labels, names, pairs) with the image stores `train/` and `test/` beside it."""
        path = Path(path)
        for name, part in (("train", self.train), ("test", self.test)):
            write_store(path.parent / name, np.asarray(part.images), part.labels, part.class_names)
        save_index(path, self)

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """The split in `path` with its images as stores: rows are read when indexed, never all at once."""
        path = Path(path)
        if not path.is_file():
            raise ScoreMixError(f"no split at {path} (run the data stage first)")
        z = np.load(path)
        parts = [
            LabelledImages(ImageStore(path.parent / name), z[f"{name}_labels"], [str(n) for n in z[f"{name}_names"]])
            for name in ("train", "test")
        ]
        return cls(*parts, z["pairs"], z["issame"], str(z["protocol"]))

    def summary(self) -> dict:
        return {
            "protocol": self.protocol,
            "train_classes": self.train.num_classes,
            "train_images": int(len(self.train.labels)),
            "test_classes": int(len(np.unique(self.test.labels))),
            "test_images": int(len(self.test.labels)),
            "pairs": int(len(self.issame)),
            "same_pairs": int(self.issame.sum()),
            "image_shape": list(self.train.images.shape[1:]),
        }


def save_index(path: Path, split: Split) -> None:
    """The small part of a split (labels, names, pairs); written last, so its presence means complete."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no ".npz" to the name
        np.savez(
            f,
            train_labels=split.train.labels,
            train_names=np.array(split.train.class_names),
            test_labels=split.test.labels,
            test_names=np.array(split.test.class_names),
            pairs=split.pairs,
            issame=split.issame,
            protocol=np.array(split.protocol),
        )


def rows_by_class(labels: np.ndarray, n: int) -> list[np.ndarray]:
    """Ascending rows of each class 0..n-1, in O(N log N) (not a scan of all labels per class)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(n)]


def make_pairs(labels: np.ndarray, num_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Balanced verification pairs, each pair of images at most once: num_pairs // 2 same-class (a class drawn
    uniformly among those with pairs left, then two of its images), the rest different-class (two classes, an
    image of each). A small test set caps each half at the distinct pairs it holds, and says so: repeated pairs
    would make the metrics look surer than they are."""
    present = np.unique(labels)
    grouped = rows_by_class(labels, int(present.max()) + 1 if len(present) else 0)
    by_class = [grouped[c] for c in present]
    sizes = np.array([len(idx) for idx in by_class], np.int64)
    if not (sizes >= 2).any() or len(by_class) < 2:
        raise ScoreMixError(
            f"verification pairs need >= 2 classes and one with >= 2 images; test split has {len(by_class)} classes"
        )
    n = int(sizes.sum())
    same_total = int((sizes * (sizes - 1) // 2).sum())
    diff_total = n * (n - 1) // 2 - same_total
    want_same, want_diff = num_pairs // 2, num_pairs - num_pairs // 2
    n_same, n_diff = min(want_same, same_total), min(want_diff, diff_total)
    if (n_same, n_diff) != (want_same, want_diff):
        log.warning(
            "data: the test split's %d images in %d classes hold %d distinct same-class and %d different-class "
            "pairs: %d verification pairs instead of data.num_pairs=%d",
            n,
            len(by_class),
            same_total,
            diff_total,
            n_same + n_diff,
            num_pairs,
        )
    same = _distinct_pairs(rng, n_same, same_total, _same_pair(rng, by_class), _all_same(by_class))
    diff = _distinct_pairs(rng, n_diff, diff_total, _diff_pair(rng, by_class), _all_diff(by_class))
    pairs = np.concatenate([np.asarray(same, np.int64).reshape(-1, 2), np.asarray(diff, np.int64).reshape(-1, 2)])
    issame = np.arange(len(pairs)) < n_same
    order = rng.permutation(len(pairs))
    return pairs[order], issame[order]


def _distinct_pairs(rng, want: int, total: int, draw, enumerate_all) -> list[tuple[int, int]]:
    """`want` distinct pairs of the `total` a kind has: drawn (`draw(seen)`) and deduplicated while at most half
    are wanted, else sampled without replacement from all of them (`total` is then at most 2 x want, so listing
    them is cheap)."""
    if 2 * want > total:
        every = enumerate_all()
        return [every[i] for i in np.sort(rng.choice(len(every), want, replace=False))]
    seen: dict[tuple[int, int], None] = {}
    while len(seen) < want:
        a, b = draw(seen)
        seen.setdefault((min(a, b), max(a, b)))
    return list(seen)


def _same_pair(rng, by_class):
    """Draws of a same-class pair: a class uniformly among those with pairs not yet taken, two of its images."""
    open_ = [c for c, idx in enumerate(by_class) if len(idx) >= 2]
    left = {c: len(by_class[c]) * (len(by_class[c]) - 1) // 2 for c in open_}

    def draw(seen) -> tuple[int, int]:
        while True:
            k = int(rng.integers(len(open_)))
            a, b = sorted(int(r) for r in rng.choice(by_class[open_[k]], 2, replace=False))
            if (a, b) not in seen:
                left[open_[k]] -= 1
                if not left[open_[k]]:  # a class whose pairs are all taken is drawn no more
                    open_.pop(k)
                return a, b

    return draw


def _diff_pair(rng, by_class):
    """Draws of a different-class pair: two classes uniformly, an image of each."""

    def draw(seen) -> tuple[int, int]:
        a, b = rng.choice(len(by_class), 2, replace=False)
        return int(rng.choice(by_class[a])), int(rng.choice(by_class[b]))

    return draw


def _all_same(by_class):
    return lambda: [(int(a), int(b)) for idx in by_class for i, a in enumerate(idx) for b in idx[i + 1 :]]


def _all_diff(by_class):
    def every():
        label = np.concatenate([np.full(len(idx), c) for c, idx in enumerate(by_class)])
        rows = np.concatenate(by_class)
        return [
            (int(rows[i]), int(rows[j]))
            for i in range(len(rows))
            for j in range(i + 1, len(rows))
            if label[i] != label[j]
        ]

    return every


def _take_per_class(idx: np.ndarray, k: int | None, name: str, rng: np.random.Generator) -> np.ndarray:
    if k is None:
        return idx
    if len(idx) < k:
        raise ScoreMixError(f"class '{name}' has {len(idx)} training images, fewer than data.per_class={k}")
    return rng.choice(idx, k, replace=False)


@dataclass
class SplitPlan:
    """Which source rows go where, decided from the labels alone (the data stage decodes only afterwards)."""

    train_rows: np.ndarray  # ascending source rows
    train_classes: list[int]
    test_rows: np.ndarray  # ascending source rows
    test_classes: list[int]
    protocol: str
    pairs: np.ndarray | None = None
    issame: np.ndarray | None = None

    def part(self, labels: np.ndarray, names: list[str], which: str) -> tuple[np.ndarray, list[str]]:
        """(labels renumbered to the part's classes, class names) of the "train" or "test" part."""
        rows, classes = (
            (self.train_rows, self.train_classes) if which == "train" else (self.test_rows, self.test_classes)
        )
        remap = np.full(len(names), -1, np.int64)
        remap[classes] = np.arange(len(classes))
        return remap[labels[rows]], [names[c] for c in classes]


def plan_split(labels: np.ndarray, names: list[str], cfg: DataConfig) -> SplitPlan:
    rng = np.random.default_rng(cfg.split_seed)
    n = len(names)
    by_class = rows_by_class(labels, n)
    if cfg.protocol == "open-set":
        n_unseen = int(round(n * cfg.unseen_fraction))
        if n_unseen < 2 or n - n_unseen < 2:
            raise ScoreMixError(
                f"open-set protocol with {n} classes and data.unseen_fraction={cfg.unseen_fraction} leaves "
                f"{n - n_unseen} training and {n_unseen} unseen classes; both need >= 2"
            )
        perm = rng.permutation(n)
        train_classes, unseen = sorted(perm[n_unseen:].tolist()), sorted(perm[:n_unseen].tolist())
        train_rows = np.concatenate([_take_per_class(by_class[c], cfg.per_class, names[c], rng) for c in train_classes])
        plan = SplitPlan(
            np.sort(train_rows), train_classes, np.flatnonzero(np.isin(labels, unseen)), unseen, cfg.protocol
        )
    else:
        train_parts, test_parts = [], []
        for c in range(n):
            idx = rng.permutation(by_class[c])
            n_test = max(1, int(round(len(idx) * cfg.test_fraction)))
            if len(idx) - n_test < 1:
                raise ScoreMixError(f"class '{names[c]}' has {len(idx)} image(s): too few to hold some out")
            test_parts.append(idx[:n_test])
            train_parts.append(_take_per_class(idx[n_test:], cfg.per_class, names[c], rng))
        plan = SplitPlan(
            np.sort(np.concatenate(train_parts)),
            list(range(n)),
            np.sort(np.concatenate(test_parts)),
            list(range(n)),
            cfg.protocol,
        )
    plan.pairs, plan.issame = make_pairs(plan.part(labels, names, "test")[0], cfg.num_pairs, rng)
    return plan


def make_split(data: LabelledImages, cfg: DataConfig) -> Split:
    """The split of in-memory data (small data, tests); the data stage streams the same plan into stores."""
    plan = plan_split(data.labels, data.class_names, cfg)
    parts = [
        LabelledImages(data.images[rows], *plan.part(data.labels, data.class_names, which))
        for rows, which in ((plan.train_rows, "train"), (plan.test_rows, "test"))
    ]
    return Split(*parts, plan.pairs, plan.issame, plan.protocol)


def write_split(catalog, cfg: DataConfig, size: int, channels: int, path: str | Path, batch: int = 256) -> Split:
    """Stream `catalog` once into the image stores of its split (`train/`, `test/` beside `path`), decoding a
    batch at a time under a progress bar; `path` (split.npz) is written last. Memory: a batch plus the labels."""
    from tqdm import tqdm

    path = Path(path)
    plan = plan_split(catalog.labels, catalog.class_names, cfg)
    dest = np.full(len(catalog), -1, np.int8)  # 0 train, 1 test, -1 unused (beyond data.per_class)
    parts = []
    for k, (which, rows) in enumerate((("train", plan.train_rows), ("test", plan.test_rows))):
        labels, names = plan.part(catalog.labels, catalog.class_names, which)
        parts.append((StoreWriter(path.parent / which, names), labels, names))
        dest[rows] = k
    rows = np.flatnonzero(dest >= 0)  # ascending: one sequential pass over the source
    written = [0, 0]
    with tqdm(total=len(rows), desc="data", unit="img", mininterval=2.0) as bar:
        for start, images in zip(range(0, len(rows), batch), catalog.decoded(rows, size, channels, batch)):
            d = dest[rows[start : start + len(images)]]
            for k, (writer, labels, _) in enumerate(parts):
                part = images[d == k]
                writer.append(part, labels[written[k] : written[k] + len(part)])
                written[k] += len(part)
            bar.update(len(images))
    stores = [writer.close((size, size, channels)) for writer, _, _ in parts]
    split = Split(
        *(LabelledImages(s, labels, names) for s, (_, labels, names) in zip(stores, parts)),
        plan.pairs,
        plan.issame,
        plan.protocol,
    )
    save_index(path, split)
    return split
