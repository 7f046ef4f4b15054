"""Readers for labelled image data: the embedded digits, an image folder, Parquet, InsightFace RecordIO.

Each returns a ``LabelledImages``: uint8 images (N, H, W, C) resized to the configured size, int64 labels
0..n_classes-1, and the class names in label order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from scoremix_ray.data.images import decode, prepare
from scoremix_ray.data.recordio import read_recordio
from scoremix_ray.errors import ScoreMixError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


@dataclass
class LabelledImages:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)


def _from_items(items: list[tuple[object, bytes, str]], size: int, channels: int) -> LabelledImages:
    """(raw label, encoded image, name for errors) -> LabelledImages with labels renumbered 0..C-1."""
    names = sorted({lab for lab, _, _ in items}, key=lambda v: (isinstance(v, str), v))
    index = {lab: i for i, lab in enumerate(names)}
    images = np.stack([decode(data, size, channels, name) for _, data, name in items])
    labels = np.array([index[lab] for lab, _, _ in items], dtype=np.int64)
    return LabelledImages(images, labels, [str(n) for n in names])


def load_digits(size: int, channels: int) -> LabelledImages:
    """scikit-learn's bundled handwritten digits (1797 8x8 images, 10 classes; no download)."""
    from PIL import Image
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    raw = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    images = np.stack([prepare(Image.fromarray(im), size, channels) for im in raw])
    return LabelledImages(images, d.target.astype(np.int64), [str(i) for i in range(10)])


def read_folder(root: str | Path, size: int, channels: int) -> LabelledImages:
    """`root/<class>/*.png|jpg|...`; class names are the sub-folder names, in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise ScoreMixError(f"image folder not found: {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ScoreMixError(f"image folder {root} has no class sub-folders (expected root/<class>/*.png)")
    items = []
    for d in class_dirs:
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ScoreMixError(f"class folder {d} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        items += [(d.name, f.read_bytes(), str(f)) for f in files]
    return _from_items(items, size, channels)


def read_parquet(path: str | Path, size: int, channels: int) -> LabelledImages:
    """A Parquet file or folder of files with columns `image` (encoded bytes) and `label`."""
    path = Path(path)
    if not path.exists():
        raise ScoreMixError(f"Parquet path not found: {path}")
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise ScoreMixError(f"no .parquet files under {path}")
    items = []
    for f in files:
        try:
            table = pq.read_table(f)
        except Exception as e:  # noqa: BLE001 -- pyarrow raises several types for a bad file
            raise ScoreMixError(f"cannot read Parquet file {f}: {e}") from None
        for col in ("image", "label"):
            if col not in table.column_names:
                raise ScoreMixError(f"Parquet file {f} has no '{col}' column (columns: {', '.join(table.column_names)})")
        images, labels = table.column("image").to_pylist(), table.column("label").to_pylist()
        for row, (img, lab) in enumerate(zip(images, labels)):
            if isinstance(img, dict):  # Hugging Face datasets store {"bytes": ..., "path": ...}
                img = img.get("bytes")
            if not isinstance(img, (bytes, bytearray)) or lab is None:
                raise ScoreMixError(f"Parquet file {f}, row {row}: 'image' must be bytes and 'label' set")
            items.append((lab, bytes(img), f"{f} row {row}"))
    return _from_items(items, size, channels)


def load_labelled(source: str, path: Path | None, size: int, channels: int) -> LabelledImages:
    if source == "digits":
        return load_digits(size, channels)
    if source == "folder":
        return read_folder(path, size, channels)
    if source == "parquet":
        return read_parquet(path, size, channels)
    if source == "recordio":
        return _from_items(read_recordio(path), size, channels)
    raise ScoreMixError(f"unknown data source '{source}' (valid: digits, folder, parquet, recordio)")


def read_synthetic(path: str | Path, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic Parquet shards (DESIGN.md schema): images and their labels as written (new classes keep
    their ids `num_real_classes + rank`; label-preserving methods keep the real ids)."""
    path = Path(path)
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise ScoreMixError(f"no synthetic .parquet files at {path}")
    images, labels = [], []
    for f in files:
        table = pq.read_table(f, columns=["image", "label"])
        images += [decode(b, size, channels, f"{f} row {i}") for i, b in enumerate(table.column("image").to_pylist())]
        labels += table.column("label").to_pylist()
    return np.stack(images), np.asarray(labels, np.int64)
