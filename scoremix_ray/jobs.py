"""What each command does, as one call: `cli.py` parses, calls one of these, prints what it returns.

Each builds the run context where it starts (`context.start`) and hands it to the stages; the config comes in
checked (`checks.check_config`, run once as the command loads it).
"""

from __future__ import annotations

import time
from pathlib import Path

from scoremix_ray import pipeline
from scoremix_ray.config import Config, load_config
from scoremix_ray.core.data.images import save_grid
from scoremix_ray.core.diffusion.sampler import sample_seed, tuple_key
from scoremix_ray.core.evaluation.recognizer import evaluate_split
from scoremix_ray.core.methods import get_method
from scoremix_ray.core.recognition.train import Recognizer
from scoremix_ray.core.selection import Selection
from scoremix_ray.foundations.devices import local_device
from scoremix_ray.foundations.errors import ScoreMixError
from scoremix_ray.foundations.files import merge_json
from scoremix_ray.runtime import tracking
from scoremix_ray.runtime.benchmarks import with_benchmarks
from scoremix_ray.runtime.checks import check_with_data
from scoremix_ray.runtime.context import start
from scoremix_ray.runtime.preflight import on_a_cluster, preflight


def experiment(cfg: Config) -> tuple[dict, dict, str, float]:
    """`run`: the whole experiment as a live MLflow run: (stage summary, metrics, run id, seconds)."""
    t0 = time.time()
    ctx, cfg = start(cfg, ray=True)  # the MLflow writer is a Ray actor
    on_a_cluster(cfg)  # every node sees out_dir and the tracking store, runs the same Python (else one line)
    with tracking.writer(cfg) as tracker:  # the MLflow run is open (and live) from here to the end
        result, metrics, run_id = pipeline.run_tracked(ctx.reporting_to(tracker), cfg)
    return result, metrics, run_id, time.time() - t0


def check_cluster(cfg: Config) -> list[str]:
    """`preflight`: join the cluster (ray.address, or the job's), check every node; the failures, one line each."""
    start(cfg, ray=True)
    return preflight(cfg)


def train_generator(cfg: Config) -> tuple[Path, dict]:
    """Stage 2 (and 1): (generator folder, quality check)."""
    ctx, cfg = start(cfg)
    _, data_dir = pipeline.data_stage(cfg)
    return pipeline.generator_stage(ctx, cfg, data_dir)


def train_recognizer(cfg: Config) -> tuple[Path, dict]:
    """Stage 3 (and 1): (baseline recognizer folder, its metrics)."""
    ctx, cfg = start(cfg)
    split, data_dir = pipeline.data_stage(cfg)
    return pipeline.recognizer_stage(ctx, cfg, split, data_dir)


def with_bins(config: Path | None, sets: list[str] | None, bins: list[Path]) -> str:
    """`evaluation.benchmarks` of the config plus a .bin benchmark per file (named by its stem), as the
    JSON text of a `--set` override."""
    import json
    import re

    have = [b.model_dump(mode="json") for b in load_config(config, sets or []).evaluation.benchmarks]
    return json.dumps(
        have + [{"name": re.sub(r"[^A-Za-z0-9_-]", "_", Path(b).stem), "kind": "bin", "path": str(b)} for b in bins]
    )


def model_folder(recognizer: Path) -> Path:
    """A recognizer's model folder: `recognizer` itself, or its `final/` for a stage folder."""
    return recognizer / "final" if (recognizer / "final" / "recognizer.json").is_file() else recognizer


def evaluate(cfg: Config, recognizer: Path) -> tuple[dict, Path]:
    """A trained recognizer on the config's verification pairs and its benchmarks, the metrics merged into the
    `metrics.json` beside the model: ({"recognizer": pairs' metrics and "benchmarks"}, that file)."""
    ctx, cfg = start(cfg)
    model_dir = model_folder(recognizer)
    net = Recognizer.load(model_dir, local_device(cfg.ray.use_gpu))
    split, _ = pipeline.data_stage(cfg)
    _, size, _, channels = split.train.images.shape
    if (net.meta["image_size"], net.meta["channels"]) != (size, channels):
        raise ScoreMixError(
            f"recognizer {model_dir} expects {net.meta['image_size']}px x {net.meta['channels']} channel(s), the "
            f"config's data is {size}px x {channels}; pass the config it was trained with"
        )
    pairs = evaluate_split(net, split, cfg.recognizer.hflip)
    rec_dir = model_dir.parent if model_dir.name == "final" else model_dir
    path = rec_dir / "metrics.json"
    old = merge_json(path, **pairs)
    found = with_benchmarks(ctx, cfg, rec_dir, old, model_dir)["benchmarks"]
    return {"recognizer": {**pairs, "benchmarks": found}}, path


def select(cfg: Config):
    """Stage 4 on stages 1-3: (selection, pairs file, training class names)."""
    ctx, cfg = start(cfg)
    sh = pipeline.shared(ctx, cfg)
    sel, path = pipeline.select_stage(cfg, sh)
    return sel, path, sh.split.train.class_names


def generate(cfg: Config, pairs: Path | None) -> Path:
    """Stage 5 for the tuples of a pairs file (checked against the data before any training), or for those the
    config's strategy selects now: the generate stage's folder."""
    method = get_method(cfg.generation.method)
    sel = Selection.read(pairs) if pairs is not None else None
    ctx, cfg = start(cfg)
    split, data_dir = pipeline.data_stage(cfg)
    if sel is not None and sel.tuples.max() >= split.train.num_classes:
        raise ScoreMixError(
            f"pairs file {pairs} names class {sel.tuples.max()}; the data has "
            f"{split.train.num_classes} training classes"
        )
    if sel is None:
        check_with_data(cfg, split)  # the selection made below
    sh = pipeline.shared_stages(ctx, cfg, split, data_dir)
    if sel is None and method.new_classes:
        sel, _ = pipeline.select_stage(cfg, sh)
    return pipeline.generate_stage(ctx, cfg, sh, method, sel)


def align(cfg: Config) -> tuple[dict, Path]:
    """The alignment of the generator's condition space with the baseline's class centres, merged into the run's
    metrics.json: (alignment, that file)."""
    ctx, cfg = start(cfg)
    a = pipeline.alignment_stage(cfg, pipeline.shared(ctx, cfg))
    path = cfg.run_dir / "metrics.json"
    merge_json(path, alignment=a)
    return a, path


def sample(
    cfg: Config,
    classes: str | None,
    mix: str | None,
    weights: list[float] | None,
    per_class: int,
    sweep_weights: bool,
    png: Path | None,
) -> tuple[list[str], Path]:
    """A PNG grid of plain class-conditional rows (`classes`, by name; every class if None) or of ScoreMix rows
    (`mix`: two or more class names, under `weights` or, with `sweep_weights`, 1, .8, .5, .2, 0 for a pair):
    (one line per row, the PNG). Every check on the classes runs before the generator is trained."""
    import torch

    ctx, cfg = start(cfg)
    split, data_dir = pipeline.data_stage(cfg)
    names = split.train.class_names
    rows, stem, key = sample_rows(names, classes, mix, weights, sweep_weights)
    gen_dir, _ = pipeline.generator_stage(ctx, cfg, data_dir)
    guide = pipeline.guide_stage(ctx, cfg, data_dir)
    labels, wts, seeds = [], [], []
    for ids, w in rows:
        labels += [ids] * per_class
        wts += [w] * per_class
        seeds += [sample_seed(cfg.seed, ids[0] if key is None else key, i) for i in range(per_class)]
    images = ctx.on_device(
        cfg,
        pipeline.sample_images,
        cfg,
        gen_dir,
        torch.tensor(labels),
        torch.tensor(wts, dtype=torch.float32),
        seeds,
        guide,
    )
    path = png or cfg.run_dir / f"{stem}.png"
    save_grid([images[i * per_class : (i + 1) * per_class] for i in range(len(rows))], path)
    return [" + ".join(f"{wi:g}*class {names[i]}" for i, wi in zip(ids, w)) for ids, w in rows], path


def sample_rows(
    names: list[str], classes: str | None, mix: str | None, weights: list[float] | None, sweep_weights: bool
) -> tuple[list[tuple[list[int], list[float]]], str, int | None]:
    """The grid's rows as (class ids, convex weights), its file stem, and the noise key the rows share (a mix:
    one noise stream per tuple, shared by the rows of a weight sweep; None: each class its own)."""
    if not mix:
        ids = class_ids(classes, names) if classes else list(range(len(names)))
        return [([i], [1.0]) for i in ids], "classes_" + "_".join(names[i] for i in ids), None
    ids = class_ids(mix, names)
    if len(ids) < 2 or len(set(ids)) != len(ids):
        raise ScoreMixError(f"--mix needs two or more different classes, got '{mix}'")
    if sweep_weights:
        if len(ids) != 2:
            raise ScoreMixError("--sweep-weights needs exactly two classes in --mix")
        rows_w = [[a, 1 - a] for a in (1.0, 0.8, 0.5, 0.2, 0.0)]
    else:
        rows_w = [weights or [1 / len(ids)] * len(ids)]
        if len(rows_w[0]) != len(ids):
            raise ScoreMixError(f"--weights has {len(rows_w[0])} values for {len(ids)} classes in --mix")
    stem = f"mix_{'_'.join(names[i] for i in ids)}" + ("_sweep" if sweep_weights else "")
    return [(ids, w) for w in rows_w], stem, tuple_key(ids)


def class_ids(text: str, names: list[str]) -> list[int]:
    """Training classes by name ("0,1,5") -> their ids; a name that is not one is an error naming it."""
    ids = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        if name not in names:
            raise ScoreMixError(f"class '{name}' is not a training class (training classes: {', '.join(names)})")
        ids.append(names.index(name))
    return ids
