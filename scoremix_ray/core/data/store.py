"""Decoded image stores: what the data stage writes and what training, evaluation and the methods read.

A store is a folder (written batch by batch, so memory is bounded by a batch, never by the dataset):
  images.u8   uint8 rows (N, H, W, C), back to back, no header. NumPy reads it as
              np.memmap(folder / "images.u8", np.uint8, mode="r", shape=(N, H, W, C)).
  labels.npy  int64 (N,)
  store.json  {"count": N, "height": H, "width": W, "channels": C, "class_names": [...]}
`store.json` is written last: a store without it is unfinished.

Reads are explicit `pread`s of the rows asked for, not a memory map: pages touched through a mapping count
against the reading process's memory until the kernel takes them back, and an epoch touches all of them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from scoremix_ray.foundations.errors import ScoreMixError


class StoreWriter:
    """Append uint8 image batches and their labels; `close` makes the store readable."""

    def __init__(self, folder: str | Path, class_names: list[str]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "store.json").unlink(missing_ok=True)
        self.class_names = [str(n) for n in class_names]
        self._file = open(self.folder / "images.u8", "wb")  # noqa: SIM115 -- open across writes, closed by close()
        self._labels: list[np.ndarray] = []  # int64 labels are 1/37,000 of a 112px RGB image: kept in memory
        self._shape: tuple[int, int, int] | None = None

    def append(self, images: np.ndarray, labels: np.ndarray) -> None:
        if len(images) == 0:
            return
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"a store holds uint8 (N, H, W, C) images, got {images.dtype} {images.shape}")
        if self._shape is None:
            self._shape = images.shape[1:]
        elif images.shape[1:] != self._shape:
            raise ValueError(f"image shape {images.shape[1:]} differs from the store's {self._shape}")
        self._file.write(np.ascontiguousarray(images).tobytes())
        self._labels.append(np.asarray(labels, np.int64))

    def close(self, shape: tuple[int, int, int] | None = None) -> ImageStore:
        """`shape` (H, W, C) is needed only when no image was appended."""
        self._file.close()
        h, w, c = self._shape or shape
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)
        np.save(self.folder / "labels.npy", labels)
        meta = {"count": int(len(labels)), "height": h, "width": w, "channels": c, "class_names": self.class_names}
        (self.folder / "store.json").write_text(json.dumps(meta))
        return ImageStore(self.folder)


def write_store(folder: str | Path, images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> ImageStore:
    w = StoreWriter(folder, class_names)
    w.append(images, labels)
    return w.close(images.shape[1:])


class ImageStore:
    """An on-disk uint8 image array that indexes like one (`store[a:b]`, `store[rows]`, `store[mask]`) and reads
    only the rows asked for. Picklable (a path), so Ray tasks and actors can take it."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / "store.json"
        if not meta_path.is_file():
            raise ScoreMixError(f"no image store in {self.folder} (store.json missing: an unfinished data stage?)")
        meta = json.loads(meta_path.read_text())
        self.shape = (meta["count"], meta["height"], meta["width"], meta["channels"])
        self.class_names: list[str] = meta["class_names"]
        self.dtype = np.dtype(np.uint8)
        self._row = meta["height"] * meta["width"] * meta["channels"]
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return 4

    @property
    def nbytes(self) -> int:
        return len(self) * self._row

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = np.load(self.folder / "labels.npy")
        return self._labels

    def __getstate__(self):
        return {**self.__dict__, "_labels": None}

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self._read_range(start, max(start, stop))
            key = np.arange(start, stop, step)
        elif isinstance(key, (int, np.integer)):
            return self.take(np.array([key]))[0]
        return self.take(key)

    def take(self, rows) -> np.ndarray:
        """Rows in the order given (an int array, or a boolean mask over the whole store)."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if len(rows) != len(self):
                raise IndexError(f"mask of length {len(rows)} for a store of {len(self)} images")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64).reshape(-1)
        if len(rows) and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(
                f"row {rows.max() if rows.max() >= len(self) else rows.min()} out of range for "
                f"{len(self)} images in {self.folder}"
            )
        rows = np.where(rows < 0, rows + len(self), rows)
        out = np.empty((len(rows), *self.shape[1:]), np.uint8)
        flat = out.reshape(len(rows), -1)
        with open(self.folder / "images.u8", "rb", buffering=0) as f:
            fd = f.fileno()
            for i, r in enumerate(rows):
                flat[i] = np.frombuffer(os.pread(fd, self._row, int(r) * self._row), np.uint8)
        return out

    def _read_range(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        out = np.empty((n, *self.shape[1:]), np.uint8)
        with open(self.folder / "images.u8", "rb", buffering=0) as f:
            f.seek(start * self._row)
            f.readinto(memoryview(out.reshape(-1)))
        return out

    def __array__(self, dtype=None, copy=None):  # np.asarray(store): the whole array, on purpose only
        arr = self._read_range(0, len(self))
        return arr if dtype is None else arr.astype(dtype)


class ConcatStore:
    """Stores read as one row space (the real training images, then the synthetic ones)."""

    def __init__(self, stores: list):
        self.stores = list(stores)
        self.offsets = np.cumsum([0] + [len(s) for s in self.stores])
        self.shape = (int(self.offsets[-1]), *self.stores[0].shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(s.shape)) for s in self.stores)

    def take(self, rows) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), *self.shape[1:]), np.uint8)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for k in np.unique(which):
            sel = which == k
            out[sel] = self.stores[k][rows[sel] - self.offsets[k]]
        return out

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            key = np.arange(*key.indices(len(self)))
        return self.take(key)

    def __array__(self, dtype=None, copy=None):
        arr = self.take(np.arange(len(self)))
        return arr if dtype is None else arr.astype(dtype)
