"""The configured benchmarks (`evaluation.benchmarks`) for one recognizer: InsightFace `.bin` sets, IJB-B/C
template verification, TinyFace identification.

Results go into the recognizer's `metrics.json` under "benchmarks", each with its benchmark's fingerprint (the
files' names, sizes and times): a benchmark is read after training and in no stage's key, so a new or changed
one is evaluated again, never trained again. IJB and TinyFace embeddings (469k and 160k faces) are computed
once per (recognizer, benchmark) by the Ray Data actor pool (`distributed.embed`) and cached beside the model
in `benchmarks/<name>-<fingerprint>/`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from scoremix_ray.config import BIN_MEAN, BenchmarkConfig, Config

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
    from scoremix_ray.data.readers import file_fingerprint

    root = Path(b.path)
    if b.kind == "bin":
        return file_fingerprint(root)
    if b.kind == "ijb":
        from scoremix_ray.evaluation.ijb import meta_files

        return file_fingerprint(*meta_files(root), root / "loose_crop")
    from scoremix_ray.evaluation.tinyface import files_of

    return file_fingerprint(*files_of(root))


def check(b: BenchmarkConfig) -> None:
    """What can be checked before any work: the layout is there (one line naming what is not)."""
    from scoremix_ray.errors import ScoreMixError

    if b.kind == "bin":
        from scoremix_ray.data.recordio import check_bin_header

        check_bin_header(b.path)
    elif not Path(b.path).is_dir():
        raise ScoreMixError(f"evaluation.benchmarks '{b.name}': {b.path} is not a folder")
    elif b.kind == "ijb":
        from scoremix_ray.evaluation.ijb import meta_files

        missing = [str(p) for p in meta_files(Path(b.path)) + [Path(b.path) / "loose_crop"] if not p.exists()]
        if missing:
            raise ScoreMixError(f"evaluation.benchmarks '{b.name}': {missing[0]} is missing")
    else:
        from scoremix_ray.evaluation.tinyface import base_of

        base_of(Path(b.path))


def evaluate(ctx, cfg: Config, b: BenchmarkConfig, model_dir: Path, cache: Path) -> dict:
    """The recognizer in `model_dir` on benchmark `b`; embeddings (IJB, TinyFace) cached in `cache`."""
    from scoremix_ray.distributed.embed import embeddings

    if b.kind == "bin":
        from scoremix_ray.evaluation.recognizer import evaluate_bin_file

        return ctx.on_device(cfg, evaluate_bin_file, b.path, model_dir, b.flip)
    if b.kind == "ijb":
        from scoremix_ray.evaluation.ijb import AlignedCrops, plot_roc, read_ijb, verify

        bench = read_ijb(b.path)
        feats = embeddings(
            ctx, cfg, model_dir, AlignedCrops(bench.root, bench.names, bench.landmarks), cache, b.flip, False
        )
        metrics, roc = verify(bench, feats, b.norm_score, b.detector_score)
        np.savez(cache / "roc.npz", **roc)
        plot_roc({cache.parent.parent.name: roc}, b.name, cache / "roc.png")
        return metrics
    from scoremix_ray.evaluation.tinyface import ResizedFiles, identify, read_tinyface

    files, part, labels = read_tinyface(b.path)
    emb = embeddings(ctx, cfg, model_dir, ResizedFiles(files), cache, b.flip, True)
    return identify(part, labels, emb)


def with_benchmarks(ctx, cfg: Config, rec_dir: Path, metrics: dict, model_dir: Path | None = None) -> dict:
    """`metrics` (the recognizer's in `rec_dir`, model in `model_dir`, by default `rec_dir/final`) with
    "benchmarks": every configured benchmark as its files are now, evaluated where `rec_dir/metrics.json` has
    no result for that fingerprint."""
    from scoremix_ray.pipeline import merge_json

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
    from scoremix_ray.evaluation.ijb import plot_roc

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
