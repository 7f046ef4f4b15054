"""The experiment as stages, each a folder. Stages 1-3 are content-addressed and shared between runs
(`<out_dir>/stages/<stage>-<hash>`), so a second run with another strategy reuses them; the run folder
(`<out_dir>/<name>`) holds the resolved config and what is specific to the run.

No Ray here beyond calling the thin wrappers in `scoremix_ray.distributed`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from scoremix_ray.config import Config, section_hash, to_yaml
from scoremix_ray.data import Split, load_labelled, make_split
from scoremix_ray.data.images import save_grid

log = logging.getLogger("scoremix_ray")

STAGES_AVAILABLE = ["data", "generator"]
STAGES_PENDING = ["recognizer", "select", "generate", "augmented recognizer", "evaluate", "track"]


def stage_dir(cfg: Config, stage: str, key: str) -> Path:
    return cfg.out_dir / "stages" / f"{stage}-{key}"


def class_grid(images: np.ndarray, labels: np.ndarray, per_class: int, path: Path) -> Path:
    rows = [images[labels == c][:per_class] for c in np.unique(labels)]
    return save_grid(rows, path)


def data_stage(cfg: Config) -> tuple[Split, Path]:
    """Stage 1: load, resize, split. Cached by the data settings alone (the split has its own seed)."""
    d = stage_dir(cfg, "data", section_hash(cfg, "data", seed=False))
    if (d / "split.npz").is_file():
        log.info("data: reusing %s", d)
        return Split.load(d / "split.npz"), d
    dc = cfg.data
    data = load_labelled(dc.source, dc.path, dc.image_size, dc.channels)
    split = make_split(data, dc)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "split.tmp.npz"  # written then renamed: an interrupted stage never looks finished
    split.save(tmp)
    (d / "summary.json").write_text(json.dumps(split.summary(), indent=2))
    class_grid(split.train.images, split.train.labels, 10, d / "train_grid.png")
    tmp.rename(d / "split.npz")
    log.info("data: wrote %s", d)
    return split, d


def write_run_config(cfg: Config) -> Path:
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.run_dir / "config.yaml"
    path.write_text(to_yaml(cfg))
    return path


def run(cfg: Config) -> dict:
    """All stages that exist so far, for one config; returns a summary dict."""
    split, data_dir = data_stage(cfg)
    result = {"data": {"dir": str(data_dir), **split.summary()}}
    (cfg.run_dir / "stages.json").write_text(json.dumps(result, indent=2))
    return result
