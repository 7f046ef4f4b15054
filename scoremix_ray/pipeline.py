"""The experiment as stages, each a folder. Stages 1-3 are content-addressed and shared between runs
(`<out_dir>/stages/<stage>-<hash>`), so a second run with another strategy reuses them; the run folder
(`<out_dir>/<name>`) holds the resolved config and what is specific to the run.

No Ray here beyond calling the thin wrappers in `scoremix_ray.distributed`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from scoremix_ray.config import EMBEDDED, Config, section_hash, to_yaml
from scoremix_ray.data import Split
from scoremix_ray.data.images import save_grid

log = logging.getLogger("scoremix_ray")


def stage_dir(cfg: Config, stage: str, key: str) -> Path:
    return cfg.out_dir / "stages" / f"{stage}-{key}"


GRID_CLASSES = 16  # rows of a class grid: a picture to look at, not a dump of 10,000 identities


def class_grid(images, labels: np.ndarray, per_class: int, path: Path) -> Path:
    """One row per class (the first GRID_CLASSES classes), `per_class` images each; reads only those rows."""
    rows = [images[np.flatnonzero(labels == c)[:per_class]] for c in np.unique(labels)[:GRID_CLASSES]]
    return save_grid(rows, path)


STORE_FORMAT = "stores-1"  # in the data stage key: a layout change never reads an older stage


def image_shape(dc, catalog) -> tuple[int, int]:
    """(image size, channels): the configured ones, else the embedded digits' 16 x 1, else the data's own (the
    first image's shorter side and colour). Warns in one line when images are shrunk more than 2x."""
    h, w, c = catalog.native_shape()
    default = (16, 1) if dc.source in EMBEDDED else (min(h, w), c)
    size, channels = dc.image_size or default[0], dc.channels or default[1]
    if min(h, w) > 2 * size:
        log.warning("data: %s images are %dx%d px, data.image_size=%d shrinks them %.1fx (set data.image_size to keep "
                    "more detail)", dc.source, h, w, size, min(h, w) / size)  # fmt: skip
    return size, channels


def data_stage(cfg: Config) -> tuple[Split, Path]:
    """Stage 1: scan the source, split by labels, then stream it once into decoded uint8 image stores
    (`train/`, `test/`; layout in data/store.py) a batch at a time. Cached by the data settings alone (the
    split has its own seed); `split.npz` is written last, so an interrupted stage is redone, never half-read."""
    from scoremix_ray.data import scan, write_split
    from scoremix_ray.data.images import BadImage

    key = hashlib.sha256(f"{section_hash(cfg, 'data', seed=False)}/{STORE_FORMAT}".encode()).hexdigest()[:12]
    d = stage_dir(cfg, "data", key)
    if (d / "split.npz").is_file():
        log.info("data: reusing %s", d)
        return Split.load(d / "split.npz"), d
    dc = cfg.data
    catalog = scan(dc.source, dc.path)
    if dc.on_bad_image == "skip":
        catalog, bad = catalog.without_bad()
        if bad:
            log.warning("data: left out %d image(s) that do not decode (data.on_bad_image=skip): %s%s", len(bad),
                        ", ".join(bad[:5]), f" and {len(bad) - 5} more" if len(bad) > 5 else "")  # fmt: skip
    try:  # nothing is lost on a bad image: split.npz is written last, so the stage is redone next time
        size, channels = image_shape(dc, catalog)
        log.info("data: %d images of %d classes from %s -> %dpx x %d channel(s)", len(catalog),
                 len(catalog.class_names), dc.path or dc.source, size, channels)  # fmt: skip
        d.mkdir(parents=True, exist_ok=True)
        split = write_split(catalog, dc, size, channels, d / "split.npz")
    except BadImage as e:
        raise BadImage(f"{e} (data.on_bad_image=skip leaves such images out)") from None
    (d / "summary.json").write_text(json.dumps(split.summary(), indent=2))
    class_grid(split.train.images, split.train.labels, 10, d / "train_grid.png")
    log.info("data: wrote %s", d)
    return split, d


def generator_stage(cfg: Config, data_dir: Path) -> Path:
    """Stage 2: the class-conditional EDM generator, trained with Ray Train on the training split only.

    Cached by data + generator settings + seed; an interrupted training resumes from its last checkpoint, and
    a trained generator whose quality check failed is checked again, not trained again. After training: a
    sample grid (one row per class) and the class accuracy of the samples, under the run's guidance policy.
    """
    from scoremix_ray.diffusion.train import check_guidance
    from scoremix_ray.distributed.runtime import on_device
    from scoremix_ray.distributed.train import fit

    d = stage_dir(cfg, "generator", section_hash(cfg, "data", "generator"))
    if (d / "quality.json").is_file():
        log.info("generator: reusing %s", d)
        return d
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "train.json").is_file():
        (d / "train.json").write_text(json.dumps(fit("generator", cfg, data_dir / "split.npz", d), indent=2))
    check_guidance(cfg.sampler, d)
    quality = on_device(cfg, generator_quality, cfg, data_dir / "split.npz", d)
    quality["train"] = json.loads((d / "train.json").read_text())
    (d / "quality.json").write_text(json.dumps(quality, indent=2))
    log.info("generator: class accuracy of samples %.3f (grid %s)", quality["class_accuracy"], d / "samples.png")
    return d


def sample_images(cfg: Config, gen_dir: Path, labels, weights, seeds: list[int], device: str = "cpu"):
    """Images of rows (classes, convex weights, seed) from the generator in `gen_dir` under the run's sampler
    settings and guidance policy, computed on `device`; uint8 (N, H, W, C) on the host."""
    from scoremix_ray.diffusion.sampler import generate
    from scoremix_ray.diffusion.train import load_for_sampling

    net, guide = load_for_sampling(gen_dir, cfg.sampler, device)
    return generate(net, labels, weights, seeds, cfg.sampler, guide_net=guide)


QUALITY_CLASSES = 32  # classes the quality check samples and scores (a seed-fixed subset above that)


def generator_quality(cfg: Config, split_path: Path, gen_dir: Path, device: str = "cpu", per_class: int = 20) -> dict:
    """Sample `per_class` images of (up to QUALITY_CLASSES seed-fixed) classes, save a grid, and score them with
    a pixel classifier fit on those classes' real images: the accuracy among those classes."""
    import torch

    from scoremix_ray.diffusion.sampler import sample_seed
    from scoremix_ray.evaluation.quality import class_accuracy, pixel_classifier

    split = Split.load(split_path)
    n = split.train.num_classes
    classes = np.arange(n)
    if n > QUALITY_CLASSES:
        classes = np.sort(np.random.default_rng([cfg.seed, 11]).choice(n, QUALITY_CLASSES, replace=False))
    labels = torch.from_numpy(classes).repeat_interleave(per_class)
    seeds = [sample_seed(cfg.seed, int(c), i % per_class) for i, c in enumerate(labels)]
    images = sample_images(cfg, gen_dir, labels[:, None], torch.ones(len(labels), 1), seeds, device)
    class_grid(images, labels.numpy(), 10, gen_dir / "samples.png")
    real = np.flatnonzero(np.isin(split.train.labels, classes))  # only these classes' rows are read
    clf = pixel_classifier(split.train.images[real], split.train.labels[real], cfg.seed)
    return {**class_accuracy(clf, images, labels.numpy()), "classes_scored": int(len(classes)), "classes": n}


def recognizer_stage(cfg: Config, data_dir: Path, out: Path | None = None,
                     synthetic: Path | None = None) -> tuple[Path, dict]:
    """Stages 3 and 6: train a recognizer with Ray Train (on real data, plus the `synthetic` image store for
    the augmented one), then evaluate it on the split's pairs, on the run's device. Writes `final/` (the
    model), `centres.npy` (class centres of the training images, for selection) and `metrics.json`.

    The baseline (out=None) is cached by data + recognizer settings + seed, shared by every strategy.
    """
    from scoremix_ray.data.store import ImageStore
    from scoremix_ray.distributed.runtime import on_device
    from scoremix_ray.distributed.train import fit
    from scoremix_ray.evaluation.recognizer import evaluate_recognizer

    d = out or stage_dir(cfg, "recognizer", section_hash(cfg, "data", "recognizer"))
    if (d / "metrics.json").is_file():
        log.info("recognizer: reusing %s", d)
        return d, json.loads((d / "metrics.json").read_text())
    d.mkdir(parents=True, exist_ok=True)
    train_metrics = fit("recognizer", cfg, data_dir / "split.npz", d, synthetic)
    metrics = on_device(cfg, evaluate_recognizer, cfg, data_dir / "split.npz", d)
    metrics["train"] = train_metrics
    rows = len(Split.load(data_dir / "split.npz").train.labels) + (len(ImageStore(synthetic)) if synthetic else 0)
    metrics["optimizer_steps"], metrics["epochs"] = optimizer_steps(cfg, rows), cfg.recognizer.epochs
    (d / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("recognizer: verification accuracy %.4f +- %.4f, AUC %.4f (%s)", metrics["verification_accuracy"],
             metrics["verification_accuracy_std"], metrics["roc_auc"], d)
    return d, metrics


def shared_stages(cfg: Config) -> tuple[Split, Path, Path, Path]:
    """Stages 1-3, computed once per setting and reused: (split, data dir, generator dir, recognizer dir)."""
    from scoremix_ray.checks import check_with_data

    split, data_dir = data_stage(cfg)
    check_with_data(cfg, split)
    gen_dir = generator_stage(cfg, data_dir)
    rec_dir, _ = recognizer_stage(cfg, data_dir)
    return split, data_dir, gen_dir, rec_dir


def class_spaces(gen_dir: Path, rec_dir: Path):
    """The generator's condition vectors and the baseline recognizer's class centres, same class order."""
    from scoremix_ray.diffusion.train import load_generator
    from scoremix_ray.selection.strategies import Spaces

    condition = load_generator(gen_dir).condition_vectors().numpy()
    return Spaces(embedding=np.load(rec_dir / "centres.npy"), condition=condition)


def select_stage(cfg: Config, split: Split, gen_dir: Path, rec_dir: Path):
    """Stage 4: rank class tuples with `selection.strategy`; writes `<run>/pairs.parquet`."""
    from scoremix_ray.selection import select

    sc = cfg.selection
    sel = select(sc.strategy, class_spaces(gen_dir, rec_dir), sc.count, sc.tuple_size, sc.max_uses_per_class, cfg.seed)
    path = sel.write(cfg.run_dir / "pairs.parquet", split.train.class_names)
    log.info("select: %d tuples by %s -> %s", len(sel.tuples), sc.strategy, path)
    return sel, path


def generate_stage(cfg: Config, split: Split, data_dir: Path, gen_dir: Path, selection=None,
                   rec_dir: Path | None = None) -> Path:  # fmt: skip
    """Stage 5: the method's plan rendered by the Ray Data actor pool into Parquet shards.

    Content-addressed by the data, the method and the plan itself (which holds tuples,
    weights and seeds), and the generator, sampler and recognizer where the method uses them (`Method.needs`):
    the same tuples give the same folder whichever strategy chose them, and an
    interrupted generation resumes in place. Actor counts are not in the key: they do not change the bytes.
    """
    from scoremix_ray.diffusion.train import check_guidance
    from scoremix_ray.distributed.generate import generate_shards
    from scoremix_ray.generation import plan_digest, preview
    from scoremix_ray.methods import PlanContext, get_method

    method = get_method(cfg.generation.method)
    plan = method.plan(PlanContext(cfg, split.train.num_classes, selection, split))
    uses = method.needs  # the key holds only what feeds the bytes: mixup's images do not depend on the generator
    rec_dir = rec_dir if "recognizer" in uses else None
    key = {"data": data_dir.name, "generator": gen_dir.name if "generator" in uses else None,
           "sampler": cfg.sampler.model_dump(mode="json", exclude={"batch_size"}) if "generator" in uses else None,
           "method": method.name, "unit_size": cfg.generation.unit_size, "plan": plan_digest(plan),
           "method_settings": cfg.generation.model_dump(mode="json", exclude={"num_actors", "actor_cpus", "actor_gpus",
                                                                               "threads_per_actor"}),
           "recognizer": rec_dir.name if rec_dir else None}  # fmt: skip
    d = stage_dir(cfg, "generate", hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12])
    if (d / "manifest.json").is_file() and json.loads((d / "manifest.json").read_text())["complete"]:
        log.info("generate: reusing %s", d)
        return d
    if "guide" in uses:
        check_guidance(cfg.sampler, gen_dir)  # before any actor starts
    manifest = generate_shards(cfg, method.name, plan, gen_dir, data_dir / "split.npz", d, rec_dir)
    (d / "generation.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "shards"}, indent=2))
    preview(d, split.train.images.shape[1], split.train.images.shape[3])
    return d


def augmented_stage(cfg: Config, data_dir: Path, synth_dir: Path) -> tuple[Path, dict]:
    """Stage 6: the same recognizer recipe on real + synthetic images, for the baseline's number of optimizer
    steps (`recognizer.match`); cached by recognizer settings and the synthetic set it saw."""
    from scoremix_ray.data.store import ImageStore

    key = hashlib.sha256(f"{section_hash(cfg, 'data', 'recognizer')}/{synth_dir.name}".encode()).hexdigest()[:12]
    store = synthetic_store(data_dir, synth_dir)
    real = len(Split.load(data_dir / "split.npz").train.labels)
    return recognizer_stage(matched_epochs(cfg, real, len(ImageStore(store))), data_dir, stage_dir(cfg, "augmented", key), store)


def optimizer_steps(cfg: Config, rows: int) -> int:
    """Steps of a recognizer's training on `rows` images (every rank takes one step per global batch)."""
    from scoremix_ray.data.batches import schedule

    return cfg.recognizer.epochs * schedule("recognizer", cfg.recognizer, rows, cfg.seed, 0, cfg.ray.num_workers).steps_per_epoch


def matched_epochs(cfg: Config, real: int, synthetic: int) -> Config:
    """With `recognizer.match: steps`, the epochs over real + synthetic images whose steps come closest to the
    baseline's (epochs x steps per epoch on real images alone); else cfg unchanged."""
    from scoremix_ray.data.batches import schedule

    if cfg.recognizer.match == "epochs" or synthetic == 0:
        return cfg
    per_epoch = schedule("recognizer", cfg.recognizer, real + synthetic, cfg.seed, 0, cfg.ray.num_workers).steps_per_epoch
    epochs = max(1, round(optimizer_steps(cfg, real) / per_epoch))
    rec = cfg.recognizer.model_copy(update={"epochs": epochs, "checkpoint_every": min(cfg.recognizer.checkpoint_every, epochs)})
    return cfg.model_copy(update={"recognizer": rec})


def synthetic_store(data_dir: Path, synth_dir: Path) -> Path:
    """The generated Parquet shards decoded once into an image store (`<generate stage>/decoded`), a row group
    at a time, so training reads real and synthetic rows alike."""
    from scoremix_ray.data.readers import decode_synthetic

    d = synth_dir / "decoded"
    if not (d / "store.json").is_file():
        _, size, _, channels = Split.load(data_dir / "split.npz").train.images.shape
        decode_synthetic(synth_dir / "shards", d, size, channels)
    return d


DELTA_KEYS = ["verification_accuracy", "roc_auc", "tar_at_far_1e-1", "tar_at_far_1e-2", "tar_at_far_1e-3",
              "rank1_accuracy", "closed_set_accuracy"]


def deltas(baseline: dict, augmented: dict) -> dict:
    """augmented - baseline for each metric both have."""
    return {k: augmented[k] - baseline[k] for k in DELTA_KEYS
            if baseline.get(k) is not None and augmented.get(k) is not None}


def alignment_stage(cfg: Config, gen_dir: Path, rec_dir: Path) -> dict:
    """Stage 7 (part): how well the generator's condition space matches the recognizer's embedding space.
    It depends on the generator and the baseline alone, so it is computed once per (generator, baseline,
    seed) and cached, not redone in every trial that shares them."""
    from scoremix_ray.evaluation.alignment import alignment

    key = hashlib.sha256(f"{gen_dir.name}/{rec_dir.name}/{cfg.seed}".encode()).hexdigest()[:12]
    path = stage_dir(cfg, "alignment", key) / "alignment.json"
    if path.is_file():
        return json.loads(path.read_text())
    sp = class_spaces(gen_dir, rec_dir)
    result = alignment(sp.condition, sp.embedding, seed=cfg.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.rename(path)  # concurrent trials may race here: each writes the same content, atomically
    return result


def update_metrics(cfg: Config, **sections: dict) -> Path:
    """Merge sections ("baseline", "augmented", "alignment") into `<run>/metrics.json`."""
    path = cfg.run_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics.update(sections)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2))
    return path


def write_run_config(cfg: Config) -> Path:
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.run_dir / "config.yaml"
    path.write_text(to_yaml(cfg))
    return path


def import_stages() -> None:
    """Import what stages 4-7 run on (torch, diffusers, scipy: ~2 s in a fresh process) ahead of them, e.g.
    while a sweep's trial waits for its MLflow parent run."""
    import scoremix_ray.diffusion.train  # noqa: F401 -- diffusers (with torch._dynamo) and torch
    import scoremix_ray.evaluation.recognizer  # noqa: F401 -- scipy.stats
    import scoremix_ray.methods  # noqa: F401


def run(cfg: Config) -> dict:
    """One experiment: stages 1-3 (shared, cached), then select, generate, augmented recognizer, evaluate.
    Writes `<run>/metrics.json` ({baseline, augmented, delta, alignment}) and `<run>/stages.json`."""
    from scoremix_ray.checks import check_config
    from scoremix_ray.methods import get_method

    method = get_method(check_config(cfg).generation.method)  # a bad setting fails before any training
    split, data_dir, gen_dir, rec_dir = shared_stages(cfg)
    quality = json.loads((gen_dir / "quality.json").read_text())
    baseline = {k: v for k, v in json.loads((rec_dir / "metrics.json").read_text()).items() if k != "train"}
    sel = None
    result = {
        "data": {"dir": str(data_dir), **split.summary()},
        "generator": {"dir": str(gen_dir), "class_accuracy": quality["class_accuracy"]},
        "recognizer": {"dir": str(rec_dir)},
    }
    if method.new_classes:
        sel, pairs_path = select_stage(cfg, split, gen_dir, rec_dir)
        result["select"] = {"pairs": str(pairs_path), "tuples": sel.tuples.tolist()}
    else:  # a label-preserving method selects nothing: no stale table from an earlier run of this name
        (cfg.run_dir / "pairs.parquet").unlink(missing_ok=True)
    synth_dir = generate_stage(cfg, split, data_dir, gen_dir, sel, rec_dir)
    result["generate"] = {"dir": str(synth_dir), "grid": str(synth_dir / "samples.png")}
    aug_dir, augmented = augmented_stage(cfg, data_dir, synth_dir)
    augmented = {k: v for k, v in augmented.items() if k != "train"}
    result["augmented"] = {"dir": str(aug_dir)}
    result["metrics"] = str(update_metrics(
        cfg, baseline=baseline, augmented=augmented, delta=deltas(baseline, augmented),
        alignment=alignment_stage(cfg, gen_dir, rec_dir),
    ))  # fmt: skip
    (cfg.run_dir / "stages.json").write_text(json.dumps(result, indent=2))
    return result


def run_tracked(cfg: Config, tracker, parent: str | None = None) -> tuple[dict, dict, str]:
    """`run` as a live MLflow run (`tracking.live_run`: open from the start, the curves as stages train, the
    results and the reused stages' curves at the end): (stage result, metrics, run id)."""
    from scoremix_ray import tracking

    with tracking.live_run(cfg, tracker, parent) as rid:
        write_run_config(cfg)
        result = run(cfg)
        metrics = json.loads(Path(result["metrics"]).read_text())
        stages = {name: Path(result[key]["dir"]) for name, key in
                  (("generator", "generator"), ("baseline", "recognizer"), ("augmented", "augmented"))}  # fmt: skip
        tracking.log_results(tracker, rid, metrics, tracking.run_artifacts(cfg, result), stages)
    return result, metrics, rid
