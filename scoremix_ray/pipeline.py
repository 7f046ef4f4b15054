"""The experiment as stages, each a folder. Stages 1-3 are content-addressed and shared between runs
(`<out_dir>/stages/<stage>-<key>`), so a second run with another strategy reuses them; the run folder
(`<out_dir>/<name>`) holds the resolved config and what is specific to the run.

A stage is a function of (context, config, what the stages before it returned); it returns what it computed
to the next one, and its `Stage` declares the config sections and upstream stages its key hashes and the
files it writes (the last one marks it complete). No Ray here beyond the executors in `scoremix_ray.runtime`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoremix_ray.config import EMBEDDED, Config, digest, guide_config, section_hash, settings, to_yaml
from scoremix_ray.core.data import Split, scan, write_split
from scoremix_ray.core.data.batches import schedule
from scoremix_ray.core.data.images import BadImage, save_grid
from scoremix_ray.core.data.readers import decode_synthetic, file_fingerprint, fingerprint
from scoremix_ray.core.data.store import ImageStore
from scoremix_ray.core.diffusion.sampler import generate, sample_seed
from scoremix_ray.core.diffusion.train import check_guidance, load_for_sampling, load_generator
from scoremix_ray.core.evaluation.alignment import alignment
from scoremix_ray.core.evaluation.benchmarks import numbers, roc_plot
from scoremix_ray.core.evaluation.diagnostics import (
    generator_diagnostics,
    halves,
    mixed_diagnostics,
    readiness,
    readiness_line,
)
from scoremix_ray.core.evaluation.quality import class_accuracy, pixel_classifier
from scoremix_ray.core.evaluation.recognizer import evaluate_recognizer
from scoremix_ray.core.evaluation.verification import best_threshold, pair_scores
from scoremix_ray.core.generation import plan_digest, preview, read_shards
from scoremix_ray.core.methods import PlanContext, get_method
from scoremix_ray.core.recognition.insightface import arcface_name, load_pretrained
from scoremix_ray.core.recognition.train import Recognizer, embed, embed_images
from scoremix_ray.core.selection import select
from scoremix_ray.core.selection.strategies import Spaces
from scoremix_ray.foundations.errors import ScoreMixError
from scoremix_ray.foundations.files import locked, merge_json, write_json
from scoremix_ray.runtime import tracking, train
from scoremix_ray.runtime.benchmarks import with_benchmarks
from scoremix_ray.runtime.checks import check_with_data
from scoremix_ray.runtime.context import RunContext
from scoremix_ray.runtime.generate import generate_shards

log = logging.getLogger("scoremix_ray")


@dataclass(frozen=True)
class Stage:
    """A cached stage: `<out_dir>/stages/<name>-<key>`, the key hashing the `sections` of the config it reads
    (less the run-only settings), the seed if it draws, and the folders of its `upstream` stages."""

    name: str
    sections: tuple[str, ...]
    upstream: tuple[str, ...]
    writes: tuple[str, ...]  # the last one is written last: the stage is complete once it is there
    seed: bool = True
    layout: str | None = None  # in the key: a change of what the folder holds never reads an older one

    def dir(self, cfg: Config, upstream: dict[str, Path | None] | None = None, **extra) -> Path:
        """The stage's folder for `cfg` below the given upstream folders (None: an upstream it does not use)."""
        upstream = upstream or {}
        if set(upstream) != set(self.upstream):
            raise ValueError(f"stage {self.name} is keyed by {self.upstream}, got {sorted(upstream)}")
        if upstream:
            extra["upstream"] = {k: d.name if d else None for k, d in upstream.items()}
        if self.layout:
            extra["layout"] = self.layout
        key = section_hash(cfg, *self.sections, seed=self.seed, **extra)
        return Path(cfg.out_dir) / "stages" / f"{self.name}-{key}"

    def done(self, d: Path) -> bool:
        """Whether the stage in `d` is complete (says so when it is reused)."""
        if (d / self.writes[-1]).is_file():
            log.info("%s: reusing %s", self.name, d)
            return True
        return False


DATA = Stage(
    "data",
    ("data",),
    (),
    ("train/", "test/", "summary.json", "train_grid.png", "split.npz"),
    seed=False,
    layout="stores-1",
)  # the uint8 image stores of data/store.py
GENERATOR = Stage(
    "generator",
    ("generator",),
    ("data",),
    (
        "checkpoints/",
        "final/",
        "guide/",
        "history.jsonl",
        "train.json",
        "samples.png",
        "quality_samples.npz",
        "quality.json",
    ),
)
# IResNet's parameters carry insightface's names since layout "iresnet-insightface": older folders are not read
BASELINE = Stage(
    "recognizer",
    ("recognizer",),
    ("data",),
    ("final/", "centres.npy", "metrics.json"),
    layout="iresnet-insightface",
)
GENERATE = Stage(
    "generate",
    ("generation",),
    ("data", "generator", "recognizer"),
    ("plan.parquet", "shards/", "samples.png", "generation.json", "manifest.json"),
    seed=False,
)
AUGMENTED = Stage("augmented", ("recognizer",), ("data", "generate"), BASELINE.writes, layout=BASELINE.layout)
ALIGNMENT = Stage("alignment", (), ("generator", "recognizer"), ("alignment.json",))


GRID_CLASSES = 16  # rows of a class grid: a picture to look at, not a dump of 10,000 identities


def class_grid(images, labels: np.ndarray, per_class: int, path: Path) -> Path:
    """One row per class (the first GRID_CLASSES classes), `per_class` images each; reads only those rows."""
    rows = [images[np.flatnonzero(labels == c)[:per_class]] for c in np.unique(labels)[:GRID_CLASSES]]
    return save_grid(rows, path)


def image_shape(dc, catalog) -> tuple[int, int]:
    """(image size, channels): the configured ones, else the embedded digits' 16 x 1, else the data's own (the
    first image's shorter side and colour). Warns in one line when images are shrunk more than 2x, and when
    they are not square (`images.square` crops them)."""
    h, w, c = catalog.native_shape()
    default = (16, 1) if dc.source in EMBEDDED else (min(h, w), c)
    size, channels = dc.image_size or default[0], dc.channels or default[1]
    if h != w:
        log.warning(
            "data: %s images are %dx%d px (not square): each is centre-cropped to its middle square before "
            "it is resized, not stretched",
            dc.source,
            w,
            h,
        )
    if min(h, w) > 2 * size:
        log.warning(
            "data: %s images are %dx%d px, data.image_size=%d shrinks them %.1fx (set data.image_size to keep "
            "more detail)",
            dc.source,
            h,
            w,
            size,
            min(h, w) / size,
        )
    return size, channels


def data_stage_dir(cfg: Config) -> Path:
    """The data stage's folder: its settings and the source's fingerprint as it is now (`readers.fingerprint`:
    names, sizes and times of its files), so a changed source is a new stage and every stage after it too."""
    return DATA.dir(cfg, source=fingerprint(cfg.data.source, cfg.data.path))


def data_stage(cfg: Config) -> tuple[Split, Path]:
    """Stage 1: scan the source, split by labels, then stream it once into decoded uint8 image stores
    (`train/`, `test/`; layout in data/store.py) a batch at a time. Cached by the data settings and the source's
    fingerprint (`data_stage_dir`; the split has its own seed); `split.npz` is written last, so an interrupted
    stage is redone, never half-read."""
    d = data_stage_dir(cfg)
    with locked(d / ".lock"):  # one writer a stage: a second trial waits, then reuses it
        if DATA.done(d):
            return Split.load(d / "split.npz"), d
        dc = cfg.data
        catalog = scan(dc.source, dc.path)
        if dc.on_bad_image == "skip":
            catalog, bad = catalog.without_bad()
            if bad:
                more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
                log.warning(
                    "data: left out %d image(s) that do not decode (data.on_bad_image=skip): %s%s",
                    len(bad),
                    ", ".join(bad[:5]),
                    more,
                )
        try:  # nothing is lost on a bad image: split.npz is written last, so the stage is redone next time
            size, channels = image_shape(dc, catalog)
            log.info(
                "data: %d images of %d classes from %s -> %dpx x %d channel(s)",
                len(catalog),
                len(catalog.class_names),
                dc.path or dc.source,
                size,
                channels,
            )
            d.mkdir(parents=True, exist_ok=True)
            split = write_split(catalog, dc, size, channels, d / "split.npz")
        except BadImage as e:
            raise BadImage(f"{e} (data.on_bad_image=skip leaves such images out)") from None
        write_json(d / "summary.json", split.summary())
        class_grid(split.train.images, split.train.labels, 10, d / "train_grid.png")
        log.info("data: wrote %s", d)
        return split, d


def generator_stage(ctx: RunContext, cfg: Config, data_dir: Path) -> tuple[Path, dict]:
    """Stage 2: the class-conditional EDM generator, trained with Ray Train on the training split only;
    returns its folder and its quality check.

    Cached by data + generator settings + seed; an interrupted training resumes from its last checkpoint, and
    a trained generator whose quality check failed is checked again, not trained again. After training: a
    sample grid (one row per class) and the class accuracy of the samples, under the run's guidance policy.
    """
    d = GENERATOR.dir(cfg, {"data": data_dir})
    guide = guide_stage(ctx, cfg, data_dir)
    with locked(d / ".lock"):  # one writer a stage: a second trial waits, then reuses it
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "train.json").is_file():
            write_json(d / "train.json", train.fit(ctx, cfg, "generator", data_dir / "split.npz", d))
        check_guidance(cfg.sampler, d, guide)  # what the run's guidance needs, before anything samples from it
        c = check_dir(cfg, d, guide)
        quality = json.loads((c / "quality.json").read_text()) if (c / "quality.json").is_file() else {}
        # a check from before its real-image reference, or whose samples are gone, is made again (seconds)
        if "class_accuracy_real" in quality and (c / "quality_samples.npz").is_file():
            return d, quality
        c.mkdir(parents=True, exist_ok=True)
        quality = ctx.on_device(cfg, generator_quality, cfg, data_dir / "split.npz", d, guide, c)
        quality["train"] = json.loads((d / "train.json").read_text())
        quality["sampled_with"] = sampling_policy(cfg, guide)
        quality["grid"] = str(c / "samples.png")
        write_json(c / "quality.json", quality)
        log.info(
            "generator: class accuracy of samples %.3f, of held-out real images %.3f (grid %s)",
            quality["class_accuracy"],
            quality["class_accuracy_real"],
            c / "samples.png",
        )
        return d, quality


def sampling_policy(cfg: Config, guide: Path | None) -> str:
    """How the run draws samples (its sampler settings and guide network, if any), as a short digest: what a
    generator's quality check depends on besides the generator."""
    return digest({"sampler": settings(cfg, "sampler")["sampler"], "guide": guide.name if guide else None})


def check_dir(cfg: Config, gen_dir: Path, guide: Path | None) -> Path:
    """Where the generator's quality check under the run's sampling policy lives: the stage folder itself for the
    policy of its first check (recorded in its quality.json as "sampled_with"; a check from before that record
    stands for unguided sampling, the default it was made with), else `checks/<policy>/`, so a run that samples
    with other guidance gets a check and a readiness verdict of its own samples."""
    policy, top = sampling_policy(cfg, guide), gen_dir / "quality.json"
    if not top.is_file():
        return gen_dir
    recorded = json.loads(top.read_text()).get("sampled_with")
    if recorded == policy or (recorded is None and cfg.sampler.guidance == "none"):
        return gen_dir
    return gen_dir / "checks" / policy


def guide_stage(ctx: RunContext, cfg: Config, data_dir: Path) -> Path | None:
    """Stage 2b: autoguidance's guide network (`generator.guide.kind: network`), a generator stage of its own,
    keyed by its settings (`guide_config`: the main generator's with the guide's overrides); trained, not
    checked (its samples are never used alone). None: the run samples without a guide network."""
    if cfg.sampler.guidance != "autoguidance" or cfg.generator.guide.kind != "network":
        return None
    gcfg = guide_config(cfg)
    d = GENERATOR.dir(gcfg, {"data": data_dir})
    with locked(d / ".lock"):
        if not (d / "train.json").is_file():
            d.mkdir(parents=True, exist_ok=True)
            log.info("guide: training the guide network (generator with %s) -> %s", cfg.generator.guide.overrides, d)
            write_json(d / "train.json", train.fit(ctx, gcfg, "generator", data_dir / "split.npz", d, stage="guide"))
    return d


def sample_images(
    cfg: Config, gen_dir: Path, labels, weights, seeds: list[int], guide_dir: Path | None = None, device: str = "cpu"
):
    """Images of rows (classes, convex weights, seed) from the generator in `gen_dir` under the run's sampler
    settings and guidance policy (`guide_dir`: its guide network's stage, `guide_stage`), computed on `device`;
    uint8 (N, H, W, C) on the host."""
    net, guide = load_for_sampling(gen_dir, cfg.sampler, device, guide_dir)
    return generate(net, labels, weights, seeds, cfg.sampler, guide_net=guide)


QUALITY_CLASSES = 32  # classes the quality check samples and scores (a seed-fixed subset above that)


def generator_quality(
    cfg: Config,
    split_path: Path,
    gen_dir: Path,
    guide_dir: Path | None = None,
    out_dir: Path | None = None,
    device: str = "cpu",
    per_class: int = 20,
) -> dict:
    """Sample `per_class` images of (up to QUALITY_CLASSES seed-fixed) classes, save a grid and the samples
    (`quality_samples.npz`, for the recognizer-space diagnostics) in `out_dir` (default: the generator's folder),
    and score them with a pixel classifier fit on one half of those classes' real images; the other half, scored
    the same way, is the ceiling."""
    import torch

    split = Split.load(split_path)
    classes = quality_classes(cfg, split.train.num_classes)
    labels = torch.from_numpy(classes).repeat_interleave(per_class)
    seeds = [sample_seed(cfg.seed, int(c), i % per_class) for i, c in enumerate(labels)]
    images = sample_images(cfg, gen_dir, labels[:, None], torch.ones(len(labels), 1), seeds, guide_dir, device)
    out_dir = Path(out_dir or gen_dir)
    class_grid(images, labels.numpy(), 10, out_dir / "samples.png")
    np.savez(out_dir / "quality_samples.npz", images=images, labels=labels.numpy())
    real = np.flatnonzero(np.isin(split.train.labels, classes))  # only these classes' rows are read
    x, y = split.train.images[real], split.train.labels[real]
    a, b = halves(y, cfg.seed)
    clf = pixel_classifier(x[a], y[a], cfg.seed)
    return {
        **class_accuracy(clf, images, labels.numpy()),
        "class_accuracy_real": class_accuracy(clf, x[b], y[b])["class_accuracy"],
        "classes_scored": int(len(classes)),
        "classes": split.train.num_classes,
    }


def quality_classes(cfg: Config, n: int) -> np.ndarray:
    """The classes the generator's checks sample: all, or QUALITY_CLASSES of them, seed-fixed."""
    if n <= QUALITY_CLASSES:
        return np.arange(n)
    return np.sort(np.random.default_rng([cfg.seed, 11]).choice(n, QUALITY_CLASSES, replace=False))


def recognizer_diagnostics(cfg: Config, split_path: Path, checked: Path, rec_dir: Path, device: str = "cpu") -> dict:
    """The generator's samples of its quality check (in the folder `checked`: `check_dir`) in the baseline
    recognizer's embedding space, against the real images of the same classes
    (`evaluation.diagnostics.generator_diagnostics`: identity accuracy, FD, precision/recall, each beside its
    real-image reference)."""
    split = Split.load(split_path)
    samples = np.load(checked / "quality_samples.npz")
    real = np.flatnonzero(np.isin(split.train.labels, np.unique(samples["labels"])))
    net = Recognizer.load(rec_dir / "final", device)
    real_emb = embed_images(net, split.train.images[real], device)
    gen_emb = embed_images(net, samples["images"], device)
    return generator_diagnostics(real_emb, split.train.labels[real], gen_emb, samples["labels"], cfg.seed)


def diagnostics_stage(ctx: RunContext, cfg: Config, data_dir: Path, gen_dir: Path, rec_dir: Path) -> dict:
    """The generator's checks under the run's sampling policy as one flat dict: the pixel classifier's (with the
    generator stage) and the baseline recognizer's, computed once per (generator, sampling policy, baseline) and
    kept in that check's quality.json (`check_dir`) under "recognizer" -> the baseline's folder name."""
    checked = check_dir(cfg, gen_dir, guide_stage(ctx, cfg, data_dir))
    path = checked / "quality.json"
    quality = json.loads(path.read_text())
    space = quality.get("recognizer", {}).get(rec_dir.name)
    if space is None:
        space = ctx.on_device(cfg, recognizer_diagnostics, cfg, data_dir / "split.npz", checked, rec_dir)
        quality = merge_json(path, recognizer={**quality.get("recognizer", {}), rec_dir.name: space})
        log.info("%s; FD %.3g (real %.3g)", readiness_line(space), space["fd"], space["fd_real"])
    pixel = {k: quality[k] for k in ("class_accuracy", "class_accuracy_real", "classes_scored")}
    numbers = {k: v for k, v in space.items() if isinstance(v, (int, float))}
    return {**pixel, **numbers, "readiness": readiness(space)}


def check_ready(cfg: Config, quality: dict) -> None:
    """`generator.min_precision`: a generator whose samples' precision (in the baseline's embeddings) is below it
    stops the run before anything is generated, in one line; every stage written so far stays."""
    floor = cfg.generator.min_precision
    if floor is not None and quality["precision"] < floor:
        raise ScoreMixError(
            f"generator precision {quality['precision']:.3f} is below generator.min_precision {floor} (real images: "
            f"{quality['precision_real']:.3f}; {quality['readiness']}): not generating; the data, generator and "
            f"baseline stages are kept"
        )


def recognizer_stage(
    ctx: RunContext, cfg: Config, split: Split, data_dir: Path, out: Path | None = None, synthetic: Path | None = None
) -> tuple[Path, dict]:
    """Stages 3 and 6: train a recognizer with Ray Train (on real data, plus the `synthetic` image store for
    the augmented one), then evaluate it on the split's pairs, on the run's device. Writes `final/` (the
    model), `centres.npy` (class centres of the training images, for selection) and `metrics.json`.

    The baseline (out=None) is cached by data + recognizer settings + seed, shared by every strategy.
    """
    pretrained = cfg.recognizer.pretrained if out is None else None  # the augmented recognizer always trains
    d = out or baseline_dir(cfg, data_dir)
    with locked(d / ".lock"):  # one writer a stage: a second trial waits, then reuses it
        if (AUGMENTED if out else BASELINE).done(d):
            return d, with_benchmarks(ctx, cfg, d, json.loads((d / "metrics.json").read_text()))
        d.mkdir(parents=True, exist_ok=True)
        if pretrained is not None:
            train_metrics = from_pretrained(cfg, split, pretrained, d / "final")
        else:
            train_metrics = train.fit(ctx, cfg, "recognizer", data_dir / "split.npz", d, synthetic)
        metrics = ctx.on_device(cfg, evaluate_recognizer, cfg, data_dir / "split.npz", d)
        metrics["train"] = train_metrics
        rows = len(split.train.labels) + (len(ImageStore(synthetic)) if synthetic else 0)
        metrics["optimizer_steps"], metrics["epochs"] = optimizer_steps(cfg, rows), cfg.recognizer.epochs
        write_json(d / "metrics.json", metrics)
        log.info(
            "recognizer: verification accuracy %.4f +- %.4f, AUC %.4f (%s)",
            metrics["verification_accuracy"],
            metrics["verification_accuracy_std"],
            metrics["roc_auc"],
            d,
        )
        return d, with_benchmarks(ctx, cfg, d, metrics)


def baseline_dir(cfg: Config, data_dir: Path) -> Path:
    """Stage 3's folder: keyed by the recognizer settings, or, with `recognizer.pretrained`, by the checkpoint's
    fingerprint (its path is run-only: the same file elsewhere is the same baseline, a changed one a new one)."""
    path = cfg.recognizer.pretrained
    return BASELINE.dir(cfg, {"data": data_dir}, **({"pretrained": file_fingerprint(path)} if path else {}))


def from_pretrained(cfg: Config, split: Split, path: Path, final: Path) -> dict:
    """Stage 3 without training: the configured IResNet with the arcface_torch checkpoint at `path` as its
    backbone, saved as the stage's model (centres and evaluation follow as for a trained one)."""
    _, size, _, channels = split.train.images.shape
    net = Recognizer(cfg.recognizer, split.train.num_classes, size, channels)
    load_pretrained(net, path)
    net.eval().save(final)
    log.info("recognizer: loaded %s (%s) as the baseline, no training", path, arcface_name(net.meta) or "IResNet")
    return {"pretrained": str(path), "source": file_fingerprint(path)}


@dataclass(frozen=True)
class Shared:
    """Stages 1-3 as the later stages use them: computed once per (data, generator, recognizer, seed)."""

    split: Split
    data_dir: Path
    gen_dir: Path
    rec_dir: Path
    quality: dict  # the generator's checks (pixel classifier and baseline recognizer), flat, with references
    baseline: dict  # the baseline recognizer's metrics


def shared_stages(ctx: RunContext, cfg: Config, split: Split, data_dir: Path) -> Shared:
    """Stages 2-3 on stage 1's result (`data_stage`, the config already checked against it:
    `checks.check_with_data`), computed once per setting and reused."""
    gen_dir, _ = generator_stage(ctx, cfg, data_dir)
    rec_dir, baseline = recognizer_stage(ctx, cfg, split, data_dir)
    quality = diagnostics_stage(ctx, cfg, data_dir, gen_dir, rec_dir)
    return Shared(split, data_dir, gen_dir, rec_dir, quality, baseline)


def shared(ctx: RunContext, cfg: Config) -> Shared:
    """Stages 1-3, the config checked against the data (`checks.check_with_data`) before any training."""
    split, data_dir = data_stage(cfg)
    check_with_data(cfg, split)
    return shared_stages(ctx, cfg, split, data_dir)


def class_spaces(shared: Shared):
    """The generator's condition vectors and the baseline recognizer's class centres, same class order."""
    condition = load_generator(shared.gen_dir).condition_vectors().numpy()
    return Spaces(embedding=np.load(shared.rec_dir / "centres.npy"), condition=condition)


def select_stage(cfg: Config, shared: Shared):
    """Stage 4: rank class tuples with `selection.strategy`; writes `<run>/pairs.parquet`."""
    sc = cfg.selection
    sel = select(sc.strategy, class_spaces(shared), sc.count, sc.tuple_size, sc.max_uses_per_class, cfg.seed)
    path = sel.write(cfg.run_dir / "pairs.parquet", shared.split.train.class_names)
    log.info("select: %d tuples by %s -> %s", len(sel.tuples), sc.strategy, path)
    return sel, path


def generate_stage(ctx: RunContext, cfg: Config, shared: Shared, method, selection=None) -> Path:
    """Stage 5: the method's plan rendered by the Ray Data actor pool into Parquet shards.

    Content-addressed by the generation settings and the plan itself (which holds tuples, weights and seeds),
    the data, and the generator (with the sampler settings) and the recognizer where the method uses them
    (`Method.needs`): the same tuples give the same folder whichever strategy chose them, and an interrupted
    generation resumes in place. Actor counts are not in the key: they do not change the bytes.
    """
    split = shared.split
    plan = method.plan(PlanContext(cfg, split.train.num_classes, selection, split))
    uses = method.needs  # the key holds only what feeds the bytes: mixup's images do not depend on the generator
    gen_dir = shared.gen_dir if "generator" in uses else None
    rec_dir = shared.rec_dir if "recognizer" in uses else None
    guide = guide_stage(ctx, cfg, shared.data_dir) if "guide" in uses else None
    upstream = {"data": shared.data_dir, "generator": gen_dir, "recognizer": rec_dir}
    if guide:  # only then: the keys of stages generated without a guide network stay as they were
        upstream["guide"] = guide
    sampler = settings(cfg, "sampler")["sampler"] if gen_dir else None
    d = GENERATE.dir(cfg, upstream, sampler=sampler, plan=plan_digest(plan))
    with locked(d / ".lock"):  # one writer a stage: a second trial waits, then reuses it
        if GENERATE.done(d) and json.loads((d / "manifest.json").read_text())["complete"]:
            return d
        manifest = generate_shards(
            ctx, cfg, method.name, plan, shared.gen_dir, shared.data_dir / "split.npz", d, rec_dir, guide
        )
        write_json(d / "generation.json", {k: v for k, v in manifest.items() if k != "shards"})
        preview(d, split.train.images.shape[1], split.train.images.shape[3])
        return d


def augmented_stage(ctx: RunContext, cfg: Config, shared: Shared, synth_dir: Path) -> tuple[Path, dict]:
    """Stage 6: the same recognizer recipe on real + synthetic images, for the baseline's number of optimizer
    steps (`recognizer.match`); cached by recognizer settings and the synthetic set it saw."""
    store = synthetic_store(shared.split, synth_dir)
    matched = matched_epochs(cfg, len(shared.split.train.labels), len(ImageStore(store)))
    d = AUGMENTED.dir(cfg, {"data": shared.data_dir, "generate": synth_dir})
    return recognizer_stage(ctx, matched, shared.split, shared.data_dir, d, store)


MIXED_TUPLES = 512  # tuples the mixed-class checks embed (seed-fixed above that): all their rows, nothing more


def mixing_stage(ctx: RunContext, cfg: Config, shared: Shared, synth_dir: Path) -> dict:
    """Are the new classes of a generation new identities to the baseline recognizer? (`evaluation.diagnostics.
    mixed_diagnostics`), once per (generation, baseline), kept in `<generation>/mixing.json` by baseline."""
    path = synth_dir / "mixing.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    if shared.rec_dir.name not in done:
        store = synthetic_store(shared.split, synth_dir)
        result = ctx.on_device(
            cfg, mixing_diagnostics, cfg, shared.data_dir / "split.npz", shared.rec_dir, synth_dir, store
        )
        done = merge_json(path, **{shared.rec_dir.name: result})
        log.info(
            "mixing: mixed centre to parents cos %.3f (parents to each other %.3f), %.0f%% of samples taken for a "
            "parent; at the baseline's threshold TAR %.3f within a tuple, FAR %.3f across tuples",
            result["cos_to_parent"],
            result["cos_between_parents"],
            100 * result["assigned_to_parent"],
            result["tar"],
            result["far"],
        )
    return {k: v for k, v in done[shared.rec_dir.name].items() if isinstance(v, (int, float))}


def mixing_diagnostics(cfg: Config, split_path: Path, rec_dir: Path, synth_dir: Path, store_dir: Path, device="cpu"):
    """The baseline's view of a generation's new classes: their rows' embeddings (MIXED_TUPLES tuples at most),
    the parents of each (from the shards' `classes`), the real class centres and the baseline's threshold (the
    accuracy-best one on the split's verification pairs)."""
    split = Split.load(split_path)
    t = read_shards(synth_dir, ["label", "classes"])
    label, first = np.unique(np.asarray(t.column("label")), return_index=True)
    parents = np.asarray(t.column("classes").take(first).to_pylist(), np.int64)  # a row of each new class
    if len(label) > MIXED_TUPLES:
        keep = np.sort(np.random.default_rng([cfg.seed, 13]).choice(len(label), MIXED_TUPLES, replace=False))
        label, parents = label[keep], parents[keep]
    store = ImageStore(store_dir)
    rows = np.flatnonzero(np.isin(store.labels, label))
    net = Recognizer.load(rec_dir / "final", device)
    emb = np.concatenate(
        [embed_images(net, store.take(rows[lo : lo + 4096]), device) for lo in range(0, len(rows), 4096)]
    )
    test = embed(net, split.test.images, flip=cfg.recognizer.hflip)
    threshold = best_threshold(pair_scores(test, split.pairs), split.issame)
    centres = np.load(rec_dir / "centres.npy")
    return mixed_diagnostics(emb, np.searchsorted(label, store.labels[rows]), parents, centres, threshold, cfg.seed)


def optimizer_steps(cfg: Config, rows: int) -> int:
    """Steps of a recognizer's training on `rows` images (every rank takes one step per global batch)."""
    return (
        cfg.recognizer.epochs
        * schedule("recognizer", cfg.recognizer, rows, cfg.seed, 0, cfg.ray.num_workers).steps_per_epoch
    )


def matched_epochs(cfg: Config, real: int, synthetic: int) -> Config:
    """With `recognizer.match: steps`, the epochs over real + synthetic images whose steps come closest to the
    baseline's (epochs x steps per epoch on real images alone); else cfg unchanged."""
    if cfg.recognizer.match == "epochs" or synthetic == 0:
        return cfg
    per_epoch = schedule(
        "recognizer", cfg.recognizer, real + synthetic, cfg.seed, 0, cfg.ray.num_workers
    ).steps_per_epoch
    epochs = max(1, round(optimizer_steps(cfg, real) / per_epoch))
    rec = cfg.recognizer.model_copy(
        update={"epochs": epochs, "checkpoint_every": min(cfg.recognizer.checkpoint_every, epochs)}
    )
    return cfg.model_copy(update={"recognizer": rec})


def synthetic_store(split: Split, synth_dir: Path) -> Path:
    """The generated Parquet shards decoded once into an image store (`<generate stage>/decoded`), a row group
    at a time, so training reads real and synthetic rows alike."""
    d = synth_dir / "decoded"
    if not (d / "store.json").is_file():
        _, size, _, channels = split.train.images.shape
        decode_synthetic(synth_dir / "shards", d, size, channels)
    return d


DELTA_KEYS = [
    "verification_accuracy",
    "roc_auc",
    "tar_at_far_1e-1",
    "tar_at_far_1e-2",
    "tar_at_far_1e-3",
    "rank1_accuracy",
    "closed_set_accuracy",
]


def deltas(baseline: dict, augmented: dict) -> dict:
    """augmented - baseline for each metric both have, the benchmarks' headline numbers included
    ("lfw.verification_accuracy", "ijbc.tar_at_far_1e-6", ...)."""
    b, a = {**baseline, **numbers(baseline)}, {**augmented, **numbers(augmented)}
    keys = DELTA_KEYS + list(numbers(baseline))
    return {k: a[k] - b[k] for k in keys if b.get(k) is not None and a.get(k) is not None}


def alignment_stage(cfg: Config, shared: Shared) -> dict:
    """Stage 7 (part): how well the generator's condition space matches the recognizer's embedding space.
    It depends on the generator and the baseline alone, so it is computed once per (generator, baseline,
    seed) and cached, not redone in every trial that shares them."""
    path = ALIGNMENT.dir(cfg, {"generator": shared.gen_dir, "recognizer": shared.rec_dir}) / "alignment.json"
    if path.is_file():
        log.info("alignment: reusing %s", path.parent)
        return json.loads(path.read_text())
    sp = class_spaces(shared)
    result = alignment(sp.condition, sp.embedding, seed=cfg.seed)
    return write_json(path, result)  # concurrent trials may race here: each writes the same content, atomically


def write_run_config(cfg: Config) -> Path:
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.run_dir / "config.yaml"
    path.write_text(to_yaml(cfg))
    return path


def run(ctx: RunContext, cfg: Config) -> tuple[dict, dict]:
    """One experiment (`cfg` checked: `checks.check_config`): stages 1-3 (shared, cached), then select,
    generate, augmented recognizer, evaluate. Returns (stage summary, metrics), written to `<run>/stages.json`
    and `<run>/metrics.json` ({baseline, augmented, delta, alignment, generator, mixing})."""
    method = get_method(cfg.generation.method)
    sh = shared(ctx, cfg)
    baseline = {k: v for k, v in sh.baseline.items() if k != "train"}
    sel = None
    result = {
        "data": {"dir": str(sh.data_dir), **sh.split.summary()},
        "generator": {"dir": str(sh.gen_dir), **sh.quality},
        "recognizer": {"dir": str(sh.rec_dir)},
    }
    if "generator" in method.needs:
        check_ready(cfg, sh.quality)
    if method.new_classes:
        sel, pairs_path = select_stage(cfg, sh)
        result["select"] = {"pairs": str(pairs_path), "tuples": sel.tuples.tolist()}
    else:  # a label-preserving method selects nothing: no stale table from an earlier run of this name
        (cfg.run_dir / "pairs.parquet").unlink(missing_ok=True)
    synth_dir = generate_stage(ctx, cfg, sh, method, sel)
    result["generate"] = {"dir": str(synth_dir), "grid": str(synth_dir / "samples.png")}
    aug_dir, augmented = augmented_stage(ctx, cfg, sh, synth_dir)
    augmented = {k: v for k, v in augmented.items() if k != "train"}
    result["augmented"] = {"dir": str(aug_dir)}
    metrics = {
        "baseline": baseline,
        "augmented": augmented,
        "delta": deltas(baseline, augmented),
        "alignment": alignment_stage(cfg, sh),
        "generator": sh.quality,
        **({"mixing": mixing_stage(ctx, cfg, sh, synth_dir)} if method.new_classes else {}),
    }
    result["metrics"] = str(cfg.run_dir / "metrics.json")
    merge_json(cfg.run_dir / "metrics.json", **metrics)

    pair = {"baseline": (sh.rec_dir, baseline), "augmented": (aug_dir, augmented)}
    result["roc"] = [str(p) for p in roc_plot(cfg, pair, lambda name: cfg.run_dir / f"roc-{name}.png")]
    write_json(cfg.run_dir / "stages.json", result)
    return result, metrics


def run_tracked(
    ctx: RunContext, cfg: Config, models: tuple[str, ...] = ("generator", "baseline", "augmented")
) -> tuple[dict, dict, str]:
    """`run` as a live MLflow run under the context's run, if any (`tracking.live_run`: open from the start,
    the curves as stages train, the results and the reused stages' curves at the end), with the MLflow models
    of the stages named in `models` (a sweep's trial: its own recognizer or none, `tracking.sweep_models`):
    (stage summary, metrics, run id)."""
    with tracking.live_run(cfg, ctx.tracker, parent=ctx.run_id) as rid:
        write_run_config(cfg)
        result, metrics = run(ctx.reporting_to(run_id=rid), cfg)
        stages = {
            name: Path(result[key]["dir"])
            for name, key in (("generator", "generator"), ("baseline", "recognizer"), ("augmented", "augmented"))
        }
        tracking.log_results(ctx.tracker, rid, metrics, tracking.run_artifacts(cfg, result), stages)
        tracking.log_datasets(ctx.tracker, rid, tracking.datasets(cfg, result))
        tracking.log_models(ctx.tracker, cfg, rid, {k: d for k, d in stages.items() if k in models})
    return result, metrics, rid
