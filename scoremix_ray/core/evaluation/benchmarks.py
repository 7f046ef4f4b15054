"""The configured benchmarks (`evaluation.benchmarks`) for one recognizer: InsightFace `.bin` sets, IJB-B/C
template verification, TinyFace identification.

Results go into the recognizer's `metrics.json` under "benchmarks", each with its benchmark's fingerprint (the
files' names, sizes and times): a benchmark is read after training and in no stage's key, so a new or changed
one is evaluated again, never trained again. IJB and TinyFace embeddings (469k and 160k faces) are computed
once per (recognizer, benchmark) by the Ray Data actor pool and cached beside the model in
`benchmarks/<name>-<fingerprint>/`: that runs in `runtime/benchmarks.py`; here is what needs no Ray.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from scoremix_ray.config import BIN_MEAN, BenchmarkConfig, Config
from scoremix_ray.core.data.readers import file_fingerprint
from scoremix_ray.core.data.recordio import check_bin_header
from scoremix_ray.core.evaluation.ijb import meta_files, plot_roc
from scoremix_ray.core.evaluation.tinyface import base_of, files_of
from scoremix_ray.foundations.errors import ScoreMixError

log = logging.getLogger("scoremix_ray")

# the numbers a benchmark is compared by (deltas, sweeps, the study): what papers report of it
HEADLINE = {
    "bin": ("verification_accuracy",),
    "ijb": ("tar_at_far_1e-6", "tar_at_far_1e-5", "tar_at_far_1e-4", "tar_at_far_1e-3"),
    "tinyface": ("rank1", "rank5", "rank20"),
}


def fingerprint(b: BenchmarkConfig) -> str:
    """The benchmark's files as they are now (names, sizes, times; nothing decoded). IJB: its meta files and
    the crop folder itself (a crop added or removed changes its time; 469k stats would take seconds)."""
    root = Path(b.path)
    if b.kind == "bin":
        return file_fingerprint(root)
    if b.kind == "ijb":
        return file_fingerprint(*meta_files(root), root / "loose_crop")

    return file_fingerprint(*files_of(root))


def check(b: BenchmarkConfig) -> None:
    """What can be checked before any work: the layout is there (one line naming what is not)."""
    if b.kind == "bin":
        check_bin_header(b.path)
    elif not Path(b.path).is_dir():
        raise ScoreMixError(f"evaluation.benchmarks '{b.name}': {b.path} is not a folder")
    elif b.kind == "ijb":
        missing = [str(p) for p in meta_files(Path(b.path)) + [Path(b.path) / "loose_crop"] if not p.exists()]
        if missing:
            raise ScoreMixError(f"evaluation.benchmarks '{b.name}': {missing[0]} is missing")
    else:
        base_of(Path(b.path))


def summary(result: dict) -> str:
    return ", ".join(f"{k} {result[k]:.4f}" for k in HEADLINE[result["kind"]] if result.get(k) is not None)


def numbers(metrics: dict) -> dict[str, float]:
    """The headline numbers of a recognizer's benchmarks, flat: {"lfw.verification_accuracy": ..., "ijbc.
    tar_at_far_1e-6": ..., "bins.verification_accuracy": mean over the .bin sets}."""
    out: dict[str, float] = {}
    bins = []
    for name, r in (metrics.get("benchmarks") or {}).items():
        for k in HEADLINE.get(r.get("kind"), ()):
            if r.get(k) is not None:
                out[f"{name}.{k}"] = float(r[k])
        if r.get("kind") == "bin":
            bins.append(r["verification_accuracy"])
    if bins:
        out[f"{BIN_MEAN}.verification_accuracy"] = float(np.mean(bins))
    return out


def roc_plot(cfg: Config, recognizers: dict[str, dict], path_of) -> list[Path]:
    """Per IJB benchmark, one ROC plot of every recognizer in `recognizers` ({label: metrics with
    "benchmarks"}) at `path_of(name)`, from the curves their evaluations cached."""
    out = []
    for b in cfg.evaluation.benchmarks:
        if b.kind != "ijb":
            continue
        curves = {}
        for label, (rec_dir, metrics) in recognizers.items():
            r = (metrics.get("benchmarks") or {}).get(b.name)
            roc = Path(rec_dir) / "benchmarks" / f"{b.name}-{r['source']}" / "roc.npz" if r else None
            if roc is not None and roc.is_file():
                curves[label] = dict(np.load(roc))
        if curves:
            out.append(plot_roc(curves, b.name, path_of(b.name)))
    return out
