"""Step checkpoints shared by the training loops: `<root>/step_XXXXXXX/state.pt`, written atomically,
the newest `KEEP` kept."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

KEEP = 2


def latest_checkpoint(root: Path) -> Path | None:
    done = sorted(p for p in Path(root).glob("step_*") if (p / "state.pt").is_file())
    return done[-1] if done else None


def save_checkpoint(root: Path, step: int, state: dict) -> Path:
    root = Path(root)
    d, tmp = root / f"step_{step:07d}", root / f".tmp_step_{step:07d}"
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp / "state.pt")
    if d.exists():
        shutil.rmtree(d)
    tmp.rename(d)  # a checkpoint is either complete or absent
    for old in sorted(root.glob("step_*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return d


def load_state(ckpt: Path, device: str = "cpu") -> dict:
    return torch.load(Path(ckpt) / "state.pt", map_location=device, weights_only=False)


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The random stream of one (seed, rank, step): what makes a resumed run continue exactly."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]))
