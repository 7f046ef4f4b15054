"""Files that concurrent writers share: sweep trials finish the same cached stage, Train ranks and the driver
write beside each other. One rule for all of them: write under a name no other writer uses, flush it to disk,
then rename it into place, so a reader sees the old content or the new, never half of one.

Also the one way the package saves a figure (matplotlib's object API: no global backend to switch).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _temp_name(path: Path) -> Path:
    # pid and a random part: unique across the processes and hosts that share the folder
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself reaches the disk
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A unique temporary path beside `path` to write to; on success it is fsync'd and renamed to `path`, on an
    error removed (an existing `path` is left as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write(path: Path | str, data: bytes | str) -> Path:
    """`data` written to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def write_json(path: Path | str, value: dict) -> dict:
    """`value` as indented JSON at `path`, atomically; returns `value`."""
    atomic_write(path, json.dumps(value, indent=2))
    return value


@contextmanager
def locked(lock_file: Path | str) -> Iterator[None]:
    """An exclusive lock held on `lock_file` (created if missing) across processes, for read-modify-write and
    for a stage that two trials would otherwise compute twice. POSIX advisory lock: released when the holder
    exits, even when it is killed, so a crashed writer never leaves a stale lock (the empty file stays)."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def merge_json(path: Path | str, **sections) -> dict:
    """`path` (a JSON object, or nothing yet) with `sections` merged in at the top level, written back. Locked,
    so two writers merging different sections at once keep both."""
    path = Path(path)
    with locked(path.with_name(f".{path.name}.lock")):
        old = json.loads(path.read_text()) if path.is_file() else {}
        return write_json(path, {**old, **sections})


def publish_dir(path: Path | str, fill: Callable[[Path], object]) -> bool:
    """A folder published whole: `fill(tmp)` writes it under a unique temporary name, which is then renamed to
    `path`. When another writer published `path` first, its copy is kept and ours discarded (both are the same
    content by construction: a content-addressed stage or a step's checkpoint). Returns whether ours won."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        tmp.mkdir()
        fill(tmp)
        try:
            os.rename(tmp, path)  # fails on a non-empty target: the first complete copy stays
        except OSError:
            if not path.is_dir():
                raise
            return False
        _fsync_dir(path.parent)
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_figure(fig, path: Path | str, dpi: int = 120) -> Path:
    """A matplotlib Figure (made with `new_figure`) saved atomically as PNG."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def new_figure(**kwargs):
    """A matplotlib Figure on the Agg canvas, not registered with pyplot: no backend switch, no global state,
    nothing to close."""
    from matplotlib.figure import Figure  # matplotlib costs ~0.3 s to import; only figures need it

    return Figure(**kwargs)
