"""Step checkpoints shared by the training loops: `<root>/step_XXXXXXX/state.pt`, written atomically,
the newest `keep` kept (`ray.checkpoints_kept`); and the training curve beside them (`history.jsonl`), which
MLflow shows live and a later run that reuses the stage logs at its end (`tracking.log_results`). A training
restarted after a lost worker or node resumes from the newest complete one (`distributed.train`)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from scoremix_ray.foundations.errors import ScoreMixError, first_line
from scoremix_ray.foundations.files import publish_dir

KEEP = 2


def latest_checkpoint(root: Path) -> Path | None:
    done = sorted(p for p in Path(root).glob("step_*") if (p / "state.pt").is_file())
    return done[-1] if done else None


def save_checkpoint(root: Path, step: int, state: dict, keep: int = KEEP) -> Path:
    root = Path(root)
    d = root / f"step_{step:07d}"
    publish_dir(d, lambda tmp: torch.save(state, tmp / "state.pt"))  # complete or absent; a step's first copy stays
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return d


def resume(root: Path, device, **parts) -> tuple[Path | None, dict]:
    """The newest complete checkpoint under `root` loaded into `parts` (a module or optimizer by the key it was
    saved under: net=..., ema=..., opt=...): (its folder, its whole state), or (None, {}) to start afresh."""
    ckpt = latest_checkpoint(root)
    if ckpt is None:
        return None, {}
    state = load_state(ckpt, device)
    for key, part in parts.items():
        part.load_state_dict(state[key])
    return ckpt, state


def load_state(ckpt: Path, device: str = "cpu") -> dict:
    return load_weights(Path(ckpt) / "state.pt", device)


def load_weights(path: Path, device: str = "cpu"):
    """A torch file read with weights_only=True: tensors, dicts, lists, numbers and strings, never code (a
    pickle in a .pt can call anything); a missing or corrupt file is one line naming it."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise ScoreMixError(f"weights file not found: {path}") from None
    except Exception as e:  # noqa: BLE001 -- torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise ScoreMixError(f"cannot read weights {path}: {first_line(e)}") from None


def read_meta(path: Path) -> dict:
    """A model's JSON metadata; a missing or corrupt file is one line naming it."""
    try:
        meta = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ScoreMixError(f"metadata file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise ScoreMixError(f"cannot read metadata {path}: {first_line(e)}") from None
    if not isinstance(meta, dict):
        raise ScoreMixError(f"cannot read metadata {path}: it holds a {type(meta).__name__}, not an object")
    return meta


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The random stream of one (seed, rank, step): what makes a resumed run continue exactly."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]))


# report(metrics, checkpoint_dir or None): the caller's hook at each checkpoint (Ray Train's report, or nothing)
Report = Callable[[dict, Path | None], None]

HISTORY = "history.jsonl"
# monitor(metrics, step): the caller's live view of training (MLflow through `tracking`), called on rank 0
Monitor = Callable[[dict, int], None]


def log_progress(out_dir: Path, metrics: dict, step: int, monitor: Monitor | None = None) -> None:
    """Rank 0 at each log point: a line of the stage's curve, and the caller's live monitor."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(out_dir) / HISTORY, "a") as f:
        f.write(json.dumps({"step": step, **metrics}) + "\n")
    if monitor is not None:
        monitor(metrics, step)


def resume_history(out_dir: Path, step: int, monitor: Monitor | None = None) -> None:
    """At the start of training (rank 0), from a checkpoint at `step` or from scratch (0): the curve past it
    was of an interrupted attempt and goes; the rest is handed to `monitor` again (a run that resumes a
    stage another run began shows the whole curve)."""
    kept = [row for row in read_history(out_dir) if row["step"] <= step]
    path = Path(out_dir) / HISTORY
    if path.is_file():
        path.write_text("".join(json.dumps(row) + "\n" for row in kept))
    for row in kept if monitor is not None else ():
        monitor(row, row["step"])


def read_history(out_dir: Path) -> list[dict]:
    """The curve's rows; a line cut short by a kill mid-write is skipped."""
    path = Path(out_dir) / HISTORY
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else ():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
