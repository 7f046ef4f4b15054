"""Readers for labelled image data: the embedded digits and glyphs, an image folder, Parquet, InsightFace RecordIO.

Each source is first *scanned* (`scan`): labels and where each image lives, no pixels. A `Catalog` then
decodes the rows asked for, batch by batch, so the data stage streams a 160k-image folder with memory
bounded by a batch. Labels are renumbered 0..n_classes-1 in sorted class-name order.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from scoremix_ray.core.data.glyphs import render
from scoremix_ray.core.data.images import BadImage, decode, open_image, prepare
from scoremix_ray.core.data.recordio import MAGIC, index_mismatch, read_index, record_at, unpack
from scoremix_ray.core.data.store import StoreWriter
from scoremix_ray.foundations.errors import ScoreMixError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
DECODE_THREADS = 4  # PIL decodes and resizes outside the GIL


@dataclass
class LabelledImages:
    images: np.ndarray  # uint8 (N, H, W, C), or an `ImageStore` that indexes like one
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)


@dataclass
class Catalog:
    """A scanned source: every image's label, and `encoded(rows)` giving (encoded bytes, name for errors) of
    the rows asked for, in ascending row order (each source reads sequentially that way)."""

    labels: np.ndarray  # int64 (N,), 0..C-1
    class_names: list[str]
    encoded: Callable[[np.ndarray], Iterator[tuple[bytes | BadImage, str]]] | None = None
    pixels: np.ndarray | None = None  # sources already in memory (the embedded ones): uint8 (N, h, w)

    def __len__(self) -> int:
        return len(self.labels)

    def native_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of the first image: the default image size and channels."""
        if self.pixels is not None:
            return (*self.pixels.shape[1:3], 1)
        img = open_image(*next(self.encoded(np.array([0]))))
        return img.height, img.width, 1 if img.mode in ("L", "LA", "1", "F") or img.mode.startswith("I") else 3

    def decoded(self, rows: np.ndarray, size: int, channels: int, batch: int = 256) -> Iterator[np.ndarray]:
        """uint8 (<=batch, size, size, channels) arrays of `rows` (ascending), decoded a batch at a time."""
        from PIL import Image

        rows = np.asarray(rows, np.int64)
        if self.pixels is not None:
            for i in range(0, len(rows), batch):
                yield np.stack([prepare(Image.fromarray(self.pixels[r]), size, channels) for r in rows[i : i + batch]])
            return
        items = self.encoded(rows)
        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            while chunk := [it for _, it in zip(range(batch), items)]:
                yield np.stack(list(pool.map(lambda it: decode(it[0], size, channels, it[1]), chunk)))

    def without_bad(self) -> tuple[Catalog, list[str]]:
        """(this catalog less the images that do not decode, their names): every image decoded once (at a
        small size), DECODE_THREADS at a time, under a progress bar. Classes left with no image are dropped."""
        from tqdm import tqdm

        if self.pixels is not None:
            return self, []

        def bad(item: tuple[bytes, str]) -> str | None:
            try:
                decode(item[0], 8, 1, item[1])
            except BadImage:
                return item[1]
            return None

        ok, names, items = np.ones(len(self), bool), [], self.encoded(np.arange(len(self)))
        with (
            ThreadPoolExecutor(DECODE_THREADS) as pool,
            tqdm(total=len(self), desc="check", unit="img", mininterval=2.0) as bar,
        ):
            start = 0
            while chunk := [it for _, it in zip(range(256), items)]:
                for i, name in enumerate(pool.map(bad, chunk)):
                    if name is not None:
                        ok[start + i] = False
                        names.append(name)
                start += len(chunk)
                bar.update(len(chunk))
        if not names:
            return self, []
        keep = np.flatnonzero(ok)
        present, labels = np.unique(self.labels[keep], return_inverse=True)
        return Catalog(
            labels.astype(np.int64),
            [self.class_names[c] for c in present],
            lambda rows: self.encoded(keep[np.asarray(rows)]),
        ), names

    def load(self, size: int, channels: int) -> LabelledImages:
        """Everything decoded in memory: for small data and tests (the data stage streams instead)."""
        parts = list(self.decoded(np.arange(len(self)), size, channels))
        images = np.concatenate(parts) if parts else np.zeros((0, size, size, channels), np.uint8)
        return LabelledImages(images, self.labels, self.class_names)


def _renumber(raw: list) -> tuple[np.ndarray, list[str]]:
    names = sorted(set(raw), key=lambda v: (isinstance(v, str), v))
    index = {lab: i for i, lab in enumerate(names)}
    return np.array([index[v] for v in raw], np.int64), [str(n) for n in names]


def scan_digits() -> Catalog:
    """scikit-learn's bundled handwritten digits (1797 8x8 images, 10 classes; no download)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    raw = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    return Catalog(d.target.astype(np.int64), [str(i) for i in range(10)], pixels=raw)


def scan_glyphs() -> Catalog:
    """Letters and digits of three scripts in matplotlib's fonts (`glyphs.render`: 142 classes x 24, 32x32)."""
    pixels, labels, names, _ = render()
    return Catalog(labels, names, pixels=pixels)


def _folder_listing(root: Path) -> list[list[str]]:
    """The image file names (sorted) of each class folder of `root` (class folders sorted by name); a broken
    link is listed, so that reading it is a bad image that `data.on_bad_image` decides about."""
    if not root.is_dir():
        raise ScoreMixError(f"image folder not found: {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ScoreMixError(f"image folder {root} has no class sub-folders (expected root/<class>/*.png)")
    listing = []
    for d in class_dirs:
        found = sorted(f"{d.name}/{f.name}" for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ScoreMixError(f"class folder {d} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        listing.append(found)
    return listing


def scan_folder(root: str | Path) -> Catalog:
    """`root/<class>/*.png|jpg|...`; class names are the sub-folder names, in sorted order."""
    root = Path(root)
    listing = _folder_listing(root)
    files = [f for found in listing for f in found]
    labels = np.repeat(np.arange(len(listing)), [len(found) for found in listing])

    def encoded(rows):
        for r in rows:
            p = root / files[r]
            try:
                yield p.read_bytes(), str(p)
            except OSError as e:  # a broken link, a file gone or unreadable: a bad image, not a crash
                yield BadImage(f"cannot read image {p}: {e.strerror or e}"), str(p)

    return Catalog(labels.astype(np.int64), [found[0].split("/")[0] for found in listing], encoded)


def _parquet_files(path: Path) -> list[Path]:
    if not path.exists():
        raise ScoreMixError(f"Parquet path not found: {path}")
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise ScoreMixError(f"no .parquet files under {path}")
    return files


def _open_parquet(f: Path) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(f)
    except Exception as e:  # noqa: BLE001 -- pyarrow raises several types for a bad file
        raise ScoreMixError(f"cannot read Parquet file {f}: {e}") from None
    for col in ("image", "label"):
        if col not in pf.schema_arrow.names:
            raise ScoreMixError(f"Parquet file {f} has no '{col}' column (columns: {', '.join(pf.schema_arrow.names)})")
    return pf


def scan_parquet(path: str | Path) -> Catalog:
    """A Parquet file or folder of files with columns `image` (encoded bytes) and `label`. The scan reads only
    the label column; `encoded` reads the image column one row group at a time."""
    files = _parquet_files(Path(path))
    raw, starts = [], [0]
    for f in files:
        labels = _open_parquet(f).read(columns=["label"]).column("label").to_pylist()
        if any(v is None for v in labels):
            raise ScoreMixError(f"Parquet file {f}, row {labels.index(None)}: 'label' is not set")
        raw += labels
        starts.append(len(raw))

    def encoded(rows):
        rows = np.asarray(rows)
        for k, f in enumerate(files):
            mine = rows[(rows >= starts[k]) & (rows < starts[k + 1])] - starts[k]
            if not len(mine):
                continue
            pf, offset = _open_parquet(f), 0
            for g in range(pf.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                want = mine[(mine >= offset) & (mine < offset + n)]
                if len(want):
                    column = pf.read_row_group(g, columns=["image"]).column("image")
                    for r in want:
                        img = column[int(r - offset)].as_py()
                        if isinstance(img, dict):  # Hugging Face datasets store {"bytes": ..., "path": ...}
                            img = img.get("bytes")
                        if not isinstance(img, (bytes, bytearray)):
                            raise ScoreMixError(f"Parquet file {f}, row {r}: 'image' must be bytes")
                        yield bytes(img), f"{f} row {r}"
                offset += n

    labels, names = _renumber(raw)
    return Catalog(labels, names, encoded)


def scan_recordio(rec_path: str | Path) -> Catalog:
    """An InsightFace train.rec through its .idx: the scan reads each record's header (its label) only."""
    rec_path = Path(rec_path)
    offsets = read_index(rec_path)
    if not offsets:
        raise ScoreMixError(f"{rec_path} holds no records")
    keys = sorted(offsets)
    with open(rec_path, "rb") as f:

        def header(key):
            f.seek(offsets[key])
            head = f.read(8 + 24 + 4)
            if len(head) < 8 or struct.unpack_from("<I", head)[0] != MAGIC:
                raise index_mismatch(rec_path, key, offsets[key], past_end=len(head) < 8)
            label, _ = unpack(head[8:] + b"\0" * max(0, 36 - len(head)))
            return label

        first = header(keys[0])
        if isinstance(first, np.ndarray) and keys[0] == 0:  # InsightFace header record: images are 1..label[0]-1
            keys = [k for k in keys if 1 <= k < int(first[0])]
        raw = []
        for k in keys:
            label = header(k)
            raw.append(int(label[0] if isinstance(label, np.ndarray) else label))

    def encoded(rows):
        with open(rec_path, "rb") as f:
            for r in rows:
                key = keys[r]
                try:
                    _, img = unpack(record_at(f, offsets[key], rec_path, key))
                except BadImage as e:
                    yield e, f"{rec_path}#{key}"
                    continue
                yield img, f"{rec_path}#{key}"

    labels, names = _renumber(raw)
    return Catalog(labels, names, encoded)


def scan(source: str, path: Path | None) -> Catalog:
    if source == "digits":
        return scan_digits()
    if source == "glyphs":
        return scan_glyphs()
    if source == "folder":
        return scan_folder(path)
    if source == "parquet":
        return scan_parquet(path)
    if source == "recordio":
        return scan_recordio(path)
    raise ScoreMixError(f"unknown data source '{source}' (valid: digits, glyphs, folder, parquet, recordio)")


def fingerprint(source: str, path: Path | None) -> str:
    """The source as it is now, without decoding anything: a digest of every file's name, size and modification
    time (an image folder's listing, the Parquet files, the .rec and its .idx), or of the package versions an
    embedded source is made with. Part of the data stage's key, so a fixed image or a new class folder is a
    new data stage, not a silently reused old one."""
    if source in ("digits", "glyphs"):
        from importlib.metadata import version

        return f"{source}-{version('scikit-learn' if source == 'digits' else 'matplotlib')}"
    root = Path(path)
    if source == "folder":
        files = [root / f for found in _folder_listing(root) for f in found]
    elif source == "parquet":
        files = _parquet_files(root)
    else:
        files = [root, root.with_suffix(".idx")]
    return file_fingerprint(*files)


def file_fingerprint(*files: str | Path) -> str:
    """A digest of the files' names, sizes and modification times: a changed file is a new digest, read in
    microseconds (no content is read). A broken link counts as itself; a missing file is an error."""
    import hashlib
    import os

    h = hashlib.sha256()
    for f in files:
        try:
            st = os.stat(f)
        except FileNotFoundError:
            if not os.path.lexists(f):
                raise ScoreMixError(f"file not found: {f}") from None
            st = os.lstat(f)  # a broken link: repairing it is a change
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_labelled(source: str, path: Path | None, size: int, channels: int) -> LabelledImages:
    """A whole source decoded in memory (small data, tests)."""
    return scan(source, path).load(size, channels)


def decode_synthetic(path: str | Path, folder: str | Path, size: int, channels: int):
    """Synthetic Parquet shards (`generation.SCHEMA`) decoded into an image store in `folder`, one row group at a
    time. Labels as written (new classes keep their ids `num_real_classes + rank`; label-preserving methods keep
    the real ids)."""
    path = Path(path)
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise ScoreMixError(f"no synthetic .parquet files at {path}")
    writer = StoreWriter(folder, [])  # synthetic class ids continue the real ones
    for f in files:
        pf = pq.ParquetFile(f)
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g, columns=["image", "label"])
            images = [
                decode(b, size, channels, f"{f} row group {g} row {i}")
                for i, b in enumerate(t.column("image").to_pylist())
            ]
            if images:
                writer.append(np.stack(images), np.asarray(t.column("label").to_pylist(), np.int64))
    return writer.close((size, size, channels))
