"""Synthetic images as Parquet shards: the plan, its work units, atomic shard files, the manifest. No Ray
here: `scoremix_ray.runtime.generate` runs `render_unit` on a Ray Data actor pool, tests and benchmarks
run it in a plain loop.

The plan (`plan.parquet`, one row per image) is cut into fixed units of `generation.unit_size` rows. A unit is
always rendered as one network batch and written as one file `shards/unit-XXXXXX.parquet` (temp file, then
rename), so:
  - a rerun after an interruption renders only the units whose file is missing, and every (label, index)
    ends up exactly once (a unit file is complete or absent);
  - the bytes do not depend on how many actors ran or how Ray batched the work (the same rows always share
    a network batch; CPU kernels can differ in the last bit between batch shapes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scoremix_ray.core.data.images import decode, encode_png, save_grid
from scoremix_ray.foundations.errors import ScoreMixError
from scoremix_ray.foundations.files import atomic_path, write_json

log = logging.getLogger("scoremix_ray")

SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("label", pa.int64()),
        ("method", pa.string()),
        ("classes", pa.list_(pa.int64())),
        ("weights", pa.list_(pa.float64())),
        ("seed", pa.int64()),
        ("index", pa.int64()),
    ]
)


def plan_digest(plan: pa.Table) -> str:
    """Content hash of the plan's values (independent of chunking and of a Parquet round trip)."""
    payload = json.dumps({c: plan.column(c).to_pylist() for c in sorted(plan.column_names)})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def units(num_rows: int, unit_size: int) -> list[tuple[int, int, int]]:
    return [(u, lo, min(lo + unit_size, num_rows)) for u, lo in enumerate(range(0, num_rows, unit_size))]


def unit_path(out_dir: Path, unit: int) -> Path:
    return Path(out_dir) / "shards" / f"unit-{unit:06d}.parquet"


def write_plan(out_dir: Path, plan: pa.Table) -> Path:
    """Save the plan once; a folder holding another plan is an error, never silently mixed."""
    out_dir = Path(out_dir)
    path = out_dir / "plan.parquet"
    if path.is_file():
        if plan_digest(pq.read_table(path)) != plan_digest(plan):
            raise ScoreMixError(f"{out_dir} holds shards of a different plan; use another output folder")
        return path
    with atomic_path(path) as tmp:
        pq.write_table(plan, tmp)
    return path


def missing_units(out_dir: Path, num_rows: int, unit_size: int) -> list[tuple[int, int, int]]:
    """Units without a complete shard. A shard that cannot be read or holds the wrong row count (a crash
    mid-write on a filesystem without atomic rename) is removed and rendered again."""
    todo = []
    for u, lo, hi in units(num_rows, unit_size):
        path = unit_path(out_dir, u)
        if path.is_file():
            try:
                if pq.read_metadata(path).num_rows == hi - lo:
                    continue
            except Exception:  # noqa: BLE001 -- any unreadable file is simply redone
                pass
            path.unlink()
        todo.append((u, lo, hi))
    return todo


def render_unit(ctx, method, plan: pa.Table, unit: int, lo: int, hi: int, out_dir: Path) -> dict:
    """Render rows [lo, hi) of the plan as one batch and write them as one shard, atomically."""
    t0 = time.time()
    rows = plan.slice(lo, hi - lo)
    images = method.render(ctx, rows)
    images, stats = images if isinstance(images, tuple) else (images, {})
    table = pa.table(
        {
            "image": pa.array([encode_png(im) for im in images], pa.binary()),
            "label": rows.column("label"),
            "method": pa.array([method.name] * len(rows), pa.string()),
            "classes": rows.column("classes"),
            "weights": rows.column("weights"),
            "seed": rows.column("seed"),
            "index": rows.column("index"),
        },
        schema=SCHEMA,
    )
    path = unit_path(out_dir, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    if stats:  # before the shard: a shard on disk always has its stats beside it
        write_json(path.with_suffix(".stats.json"), stats)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return {"unit": unit, "rows": hi - lo, "seconds": time.time() - t0}


def write_manifest(out_dir: Path, num_rows: int, unit_size: int, extra: dict | None = None) -> dict:
    """What was written: one entry per shard (rows, sha256), the totals, and whether it is complete."""
    out_dir = Path(out_dir)
    shards, stats = [], {}
    for u, lo, hi in units(num_rows, unit_size):
        path = unit_path(out_dir, u)
        if path.is_file():
            shards.append(
                {
                    "file": str(path.relative_to(out_dir)),
                    "rows": hi - lo,
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                }
            )
            if path.with_suffix(".stats.json").is_file():
                for k, v in json.loads(path.with_suffix(".stats.json").read_text()).items():
                    stats[k] = stats.get(k, 0) + v
    manifest = {
        "rows": num_rows,
        "rows_written": sum(s["rows"] for s in shards),
        "unit_size": unit_size,
        "complete": sum(s["rows"] for s in shards) == num_rows,
        "stats": stats,
        "shards": shards,
        **(extra or {}),
    }
    return write_json(out_dir / "manifest.json", manifest)


def shard_files(out_dir: Path) -> list[Path]:
    files = sorted((Path(out_dir) / "shards").glob("unit-*.parquet"))
    if not files:
        raise ScoreMixError(f"no synthetic shards under {out_dir}/shards")
    return files


def read_shards(out_dir: Path, columns: list[str] | None = None) -> pa.Table:
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in shard_files(out_dir)])


def preview(out_dir: Path, size: int, channels: int, tuples: int = 8, per_tuple: int = 8) -> Path:
    """A grid PNG of the first `tuples` labels, `per_tuple` images each. Reads the small columns of every
    shard, then the images of only the shards that hold a shown row."""
    files = shard_files(out_dir)
    parts = [pq.read_table(f, columns=["label", "index"]) for f in files]
    labels = np.concatenate([p.column("label").to_numpy() for p in parts])
    idx = np.concatenate([p.column("index").to_numpy() for p in parts])
    where = np.concatenate([np.stack([np.full(len(p), k), np.arange(len(p))], 1) for k, p in enumerate(parts)])
    shown = []
    for lab in np.unique(labels)[:tuples]:
        take = np.flatnonzero(labels == lab)
        shown.append(take[np.argsort(idx[take])][:per_tuple])
    columns = {
        k: pq.read_table(files[k], columns=["image"]).column("image")
        for k in np.unique(where[np.concatenate(shown), 0])
    }
    rows = [
        np.stack(
            [
                decode(columns[where[i, 0]][int(where[i, 1])].as_py(), size, channels, str(files[where[i, 0]]))
                for i in take
            ]
        )
        for take in shown
    ]
    return save_grid(rows, Path(out_dir) / "samples.png")
