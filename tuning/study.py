"""The study: every condition of `study` (methods x strategies) on every fold x seed, as one Ray Tune sweep.

    scoremix-ray study --config configs/study-digits.yaml

A fold is a `data.split_seed` (one train/unseen class partition, its real images and verification pairs);
a seed fixes the generator, the recognizer's initialisation and the sampling noise. Every condition of a
(fold, seed) cell sees the same real data, pairs, generator and baseline (stages 1-3 are content-addressed
and computed once per cell before the trials start). The real-only baseline is each cell's baseline
recognizer; each trial logs its paired difference to it. The report (`scoremix_ray.report`) turns the
MLflow runs into the table, the interval plot and the alignment per fold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path

from scoremix_ray.config import Config, ConfigError, to_yaml, with_overrides
from scoremix_ray.pipeline import data_stage
from scoremix_ray.report import write_study_report
from scoremix_ray.runtime import tracking
from scoremix_ray.runtime.checks import with_study_defaults
from tuning.sweep import run_sweep

log = logging.getLogger("scoremix_ray")


def check_folds(base: Config) -> dict[int, list[str]]:
    """Stage 1 for every fold; two folds with the same class partition would count one fold twice."""
    seen: dict[tuple, int] = {}
    out = {}
    for fold in base.study.folds:
        split, _ = data_stage(with_overrides(base, [f"data.split_seed={fold}"]))
        key = tuple(split.train.class_names)
        if key in seen:
            raise ConfigError(
                f"study.folds {seen[key]} and {fold} give the same training classes {list(key)}; "
                f"pick other data.split_seed values"
            )
        seen[key] = fold
        out[fold] = list(key)
    return out


def machine() -> str:
    """Where the study ran, for the report: CPU model and count, GPUs Ray sees, OS."""
    import ray

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    res = ray.cluster_resources() if ray.is_initialized() else {}
    gpus = int(res.get("GPU", 0))
    return (
        f"{len(ray.nodes()) if ray.is_initialized() else 1} node(s), {res.get('CPU', os.cpu_count()):g} CPUs "
        f"({cpu}), {gpus} GPU(s), {platform.system()} {platform.release()}"
    )


def run_study(base: Config) -> dict:
    """Run (or finish: every stage is cached) the study; log it to MLflow; write the report."""
    base = with_study_defaults(base)
    st = base.study
    if st is None:
        raise ConfigError("this config has no 'study' section (see configs/study-digits.yaml)")
    start = time.time()
    partitions = check_folds(base)
    folds_file = Path(base.out_dir) / f"{base.name}-folds.json"  # every fold's classes: too long for a log line
    folds_file.parent.mkdir(parents=True, exist_ok=True)
    folds_file.write_text(json.dumps({str(f): list(c) for f, c in partitions.items()}, indent=1))
    for fold, classes in partitions.items():
        log.info("study: fold %d trains on %d classes (%s, ...; all in %s)", fold, len(classes), classes[0], folds_file)
    tags = {"scoremix.kind": "study", "scoremix.config_sha": hashlib.sha256(to_yaml(base).encode()).hexdigest()[:12]}
    summary = run_sweep(
        base,
        list(st.strategies),
        list(st.seeds),
        list(st.methods),
        {"data.split_seed": [str(f) for f in st.folds], **({"selection.count": list(st.doses)} if st.doses else {})},
        base.name,
        tags,
    )
    wall = time.time() - start
    mc = tracking.client(base)
    mc.set_tag(summary["parent_run_id"], "scoremix.wall_time_s", f"{wall:.0f}")
    mc.set_tag(summary["parent_run_id"], "scoremix.machine", machine())
    summary["wall_time_s"] = wall
    summary["report"] = {k: str(v) for k, v in write_study_report(base).items()}
    log_differences(mc, summary["parent_run_id"], summary["report"])
    return summary


def log_differences(mc, parent: str, report: dict[str, str]) -> None:
    """The report's files on the study's MLflow run, and each condition's paired difference per metric (the
    benchmarks' too) as metrics "diff.<condition>.<metric>" with its interval ("low." / "high.")."""
    import json
    import math

    for path in report.values():
        mc.log_artifact(parent, path)
    tables = json.loads(Path(report["json"]).read_text())["tables"]
    for metric, rows in tables.items():
        for r in rows:
            for key in ("diff", "low", "high"):
                value = r.get(key)
                if r["verdict"] != "reference" and value is not None and not math.isnan(value):
                    name = f"{key}.{r['condition'].replace(' / ', '.')}.{metric}".replace("@", "_at_")
                    mc.log_metric(parent, name, float(value))
