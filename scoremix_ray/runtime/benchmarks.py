"""The configured benchmarks run for one recognizer (what `core/evaluation/benchmarks.py` defines): `.bin` sets on
the run's device, IJB and TinyFace embeddings through the Ray Data actor pool (`runtime/embed.py`), cached beside
the model; results merged into the recognizer's `metrics.json` as each one comes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from scoremix_ray.config import BenchmarkConfig, Config
from scoremix_ray.core.evaluation.benchmarks import fingerprint, summary
from scoremix_ray.core.evaluation.ijb import AlignedCrops, plot_roc, read_ijb, verify
from scoremix_ray.core.evaluation.recognizer import evaluate_bin_file
from scoremix_ray.core.evaluation.tinyface import ResizedFiles, identify, read_tinyface
from scoremix_ray.foundations.files import merge_json
from scoremix_ray.runtime.context import RunContext
from scoremix_ray.runtime.embed import embeddings

log = logging.getLogger("scoremix_ray")


def evaluate(ctx: RunContext, cfg: Config, b: BenchmarkConfig, model_dir: Path, cache: Path) -> dict:
    """The recognizer in `model_dir` on benchmark `b`; embeddings (IJB, TinyFace) cached in `cache`."""
    if b.kind == "bin":
        return ctx.on_device(cfg, evaluate_bin_file, b.path, model_dir, b.flip)
    if b.kind == "ijb":
        bench = read_ijb(b.path)
        feats = embeddings(
            ctx, cfg, model_dir, AlignedCrops(bench.root, bench.names, bench.landmarks), cache, b.flip, False
        )
        metrics, roc = verify(bench, feats, b.norm_score, b.detector_score)
        np.savez(cache / "roc.npz", **roc)
        plot_roc({cache.parent.parent.name: roc}, b.name, cache / "roc.png")
        return metrics
    files, part, labels = read_tinyface(b.path)
    emb = embeddings(ctx, cfg, model_dir, ResizedFiles(files), cache, b.flip, True)
    return identify(part, labels, emb)


def with_benchmarks(ctx: RunContext, cfg: Config, rec_dir: Path, metrics: dict, model_dir: Path | None = None) -> dict:
    """`metrics` (the recognizer's in `rec_dir`, model in `model_dir`, by default `rec_dir/final`) with
    "benchmarks": every configured benchmark as its files are now, evaluated where `rec_dir/metrics.json` has
    no result for that fingerprint."""
    model_dir = model_dir or rec_dir / "final"
    found = dict(metrics.get("benchmarks") or {})
    for b in cfg.evaluation.benchmarks:
        source = fingerprint(b)
        if (found.get(b.name) or {}).get("source") == source:
            continue
        log.info("benchmark %s (%s): evaluating %s", b.name, b.kind, rec_dir)
        cache = rec_dir / "benchmarks" / f"{b.name}-{source}"
        cache.mkdir(parents=True, exist_ok=True)
        found[b.name] = {**evaluate(ctx, cfg, b, model_dir, cache), "kind": b.kind, "source": source}
        merge_json(rec_dir / "metrics.json", benchmarks=found)  # each result kept as it comes
        log.info("benchmark %s: %s", b.name, summary(found[b.name]))
    wanted = {b.name for b in cfg.evaluation.benchmarks}
    return {**metrics, "benchmarks": {k: v for k, v in found.items() if k in wanted}}
