"""Face-dataset scale (issue 16): seconds and peak memory of every stage at C identities.

Data-level stages, on a synthetic identity folder built in a temp dir (seeded colour blobs, RGB PNG, C
classes x M images at S px; default 10,000 x 16 x 112):
  - the data stage (scan, split, stream into uint8 stores), driver RSS
  - one recognizer epoch of a tiny network through Ray Train, streamed by Ray Data (the data exceed
    ray.cache_mb), RSS of every process (the Train worker, Ray Data's readers)
  - a tiny generator (a few steps, streamed), then the plan and generation of a few hundred ScoreMix images
  - evaluation of the recognizer on the split (embeddings streamed)
Peak RSS of any process is sampled every 0.2 s with psutil (the Ray workers are not this process's children).

Class-level stages: synthetic class spaces (C recognizer centres and C generator condition vectors, d dims each,
seeded) and synthetic labels stand in for a trained generator and baseline: these stages cost the same whatever the
weights. Measured, one stage after another in this process:
  - selection: every registered strategy (pairs by row blocks, triplets by the certified threshold search)
  - alignment: every metric with its permutation null (<= 2000 classes used, O(n^2) per permutation)
  - rank-1 identification over the unseen classes' test embeddings (chunked)
  - the partner search of a label-preserving method's plan (Diff-II: a same-class partner per row)
  - the generator quality check's classifier features on a class subset
Targets: every class-level stage under 60 s at 10,000 classes; peak RSS of any process <= 1.5 GB at
10k x 16 x 112^2 (the uint8 data alone are 6 GB); memory flat when the data double.

    python benchmarks/scale.py [--classes 10000] [--per-class 16] [--size 112] [--no-data] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ProcessPeaks(threading.Thread):
    """Samples the RSS of every process on the box every 0.2 s (Ray's workers are not our children); `take()`
    gives (max RSS MB, its process, max RSS less shared pages MB) since the last take."""

    def __init__(self):
        super().__init__(daemon=True)
        self._lock, self._halt = threading.Lock(), threading.Event()
        self._reset()

    def _reset(self):
        self.peak, self.who, self.private = 0.0, "", 0.0

    def run(self):
        while not self._halt.wait(0.2):
            self.sample()

    def sample(self):
        import psutil

        for p in psutil.process_iter(["name", "memory_info"]):
            mi = p.info["memory_info"]
            if mi is None:
                continue
            with self._lock:
                if mi.rss / 2**20 > self.peak:
                    self.peak, self.who = mi.rss / 2**20, f"{p.info['name']} ({p.pid})"
                self.private = max(self.private, (mi.rss - mi.shared) / 2**20)

    def take(self) -> tuple[float, str, float]:
        self.sample()  # a stage shorter than the period still gets one sample
        with self._lock:
            out = (self.peak, self.who, self.private)
            self._reset()
        return out


PEAKS: ProcessPeaks | None = None


def timed(stages: dict, name: str, fn):
    if PEAKS:
        PEAKS.take()
    t = time.perf_counter()
    out = fn()
    stages[name] = {"seconds": round(time.perf_counter() - t, 2), "peak_rss_mb": round(peak_rss_mb())}
    extra = ""
    if PEAKS:
        peak, who, private = PEAKS.take()
        stages[name].update(any_process_mb=round(peak), process=who, any_process_private_mb=round(private))
        extra = f"   any process {peak:6.0f} MB ({who}; {private:.0f} MB not shared)"
    print(
        f"{name:<28} {stages[name]['seconds']:8.2f} s   driver peak {stages[name]['peak_rss_mb']:6.0f} MB{extra}",
        flush=True,
    )
    return out


def _blob_class(job) -> None:
    """One identity: three colour blobs at seed-fixed places and colours; its images jitter them."""
    from PIL import Image

    root, c, m, size = job
    rng = np.random.default_rng([7, c])
    colours, centres = rng.uniform(0, 255, (3, 3)), rng.uniform(0.25, 0.75, (3, 2)) * size
    yy, xx = np.mgrid[:size, :size]
    d = Path(root) / f"id{c:05d}"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(m):
        img = np.full((size, size, 3), 30.0)
        for k in range(3):
            cy, cx = centres[k] + rng.normal(0, 0.03 * size, 2)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < (size * (0.1 + 0.04 * k)) ** 2] = colours[k] + rng.normal(0, 8, 3)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i:03d}.png")


def blob_folder(root: Path, classes: int, per_class: int, size: int) -> Path:
    import multiprocessing

    with multiprocessing.Pool(os.cpu_count()) as pool:
        pool.map(_blob_class, [(str(root), c, per_class, size) for c in range(classes)], chunksize=64)
    return root


def data_level(a, stages: dict, work: Path) -> int:
    """The data, training, generation and evaluation stages on a synthetic identity folder; returns images."""
    from scoremix_ray.config import Config
    from scoremix_ray.core.evaluation.recognizer import evaluate_recognizer
    from scoremix_ray.core.methods import get_method
    from scoremix_ray.pipeline import Shared, data_stage, generate_stage, select_stage
    from scoremix_ray.runtime.context import start
    from scoremix_ray.runtime.train import fit

    root = work / "faces"
    if not (root / f"id{a.classes - 1:05d}").is_dir():
        timed(stages, "build identity folder", lambda: blob_folder(root, a.classes, a.per_class, a.size))
    cfg = Config.model_validate(
        {
            "out_dir": str(work / "out"),
            "seed": 0,
            "data": {"source": "folder", "path": str(root), "num_pairs": 3000},
            "generator": {
                "block_out_channels": [8, 16],
                "steps": 4,
                "batch_size": 16,
                "warmup_steps": 1,
                "checkpoint_every": 4,
                "log_every": 2,
            },
            "recognizer": {"widths": [8, 16], "blocks": [1, 1], "embedding_dim": 64, "epochs": 1, "batch_size": 32},
            "sampler": {"steps": 4, "batch_size": 16},
            "selection": {"count": a.gen_classes},
            "generation": {"per_tuple": a.gen_per_class, "unit_size": 16},
            "ray": {"cpus_per_worker": 1, "cache_mb": a.cache_mb},
        }
    )
    split, data_dir = timed(stages, "data stage", lambda: data_stage(cfg))
    print(f"{'':<28} {split.summary()}")
    ctx, cfg = start(cfg, ray=True)
    rec_dir, gen_dir = work / "out" / "rec", work / "out" / "gen"
    timed(stages, "recognizer 1 epoch (Train)", lambda: fit(ctx, cfg, "recognizer", data_dir / "split.npz", rec_dir))
    timed(stages, "evaluation", lambda: evaluate_recognizer(cfg, data_dir / "split.npz", rec_dir))
    timed(stages, "generator 4 steps (Train)", lambda: fit(ctx, cfg, "generator", data_dir / "split.npz", gen_dir))
    shared = Shared(split, data_dir, gen_dir, rec_dir, {}, {})
    sel, _ = timed(stages, "pairs of the trained models", lambda: select_stage(cfg, shared))
    n_gen = a.gen_classes * a.gen_per_class
    method = get_method(cfg.generation.method)
    timed(stages, f"generate {n_gen} images", lambda: generate_stage(ctx, cfg, shared, method, sel))
    return len(split.train.labels) + len(split.test.labels)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--count", type=int, default=1000, help="tuples each strategy selects")
    ap.add_argument("--test-images", type=int, default=16_000, help="rank-1 probes (unseen classes' images)")
    ap.add_argument("--budget", type=int, default=200_000, help="rows of the label-preserving plan")
    ap.add_argument("--per-class", type=int, default=16, help="images per identity of the folder")
    ap.add_argument("--size", type=int, default=112, help="pixels of the folder's images")
    ap.add_argument("--gen-classes", type=int, default=10, help="ScoreMix classes generated")
    ap.add_argument("--gen-per-class", type=int, default=30)
    ap.add_argument("--cache-mb", type=int, default=1024, help="ray.cache_mb: above it training streams")
    ap.add_argument("--no-data", action="store_true", help="class-level stages only")
    ap.add_argument("--keep", type=Path, help="work folder kept between runs (the identity folder is reused)")
    a = ap.parse_args()
    global PEAKS
    PEAKS = ProcessPeaks()
    PEAKS.start()
    stages: dict = {}
    images = 0
    if not a.no_data:
        work = a.keep or Path(tempfile.mkdtemp(prefix="scale-"))
        print(f"identity folder: {a.classes} classes x {a.per_class} images at {a.size} px in {work}")
        try:
            images = data_level(a, stages, work)
        finally:
            if a.keep is None:
                shutil.rmtree(work, ignore_errors=True)

    from scoremix_ray.config import Config
    from scoremix_ray.core.data.readers import LabelledImages
    from scoremix_ray.core.evaluation.alignment import alignment
    from scoremix_ray.core.evaluation.quality import features
    from scoremix_ray.core.evaluation.verification import rank1_accuracy
    from scoremix_ray.core.methods import PlanContext, get_method
    from scoremix_ray.core.selection import STRATEGIES, select
    from scoremix_ray.core.selection.strategies import Spaces

    rng = np.random.default_rng(0)
    c, d = a.classes, a.dim
    # the condition space partly follows the embedding (as a generator's class embeddings might)
    emb = rng.normal(size=(c, d)).astype(np.float32)
    cond = (0.3 * emb @ rng.normal(size=(d, d)).astype(np.float32) / np.sqrt(d) + rng.normal(size=(c, d))).astype(
        np.float32
    )
    spaces = Spaces(embedding=emb, condition=cond)
    print(f"{c} classes, {d}-dim spaces, {a.count} tuples per strategy")
    for name in STRATEGIES:
        timed(stages, f"select {name}", lambda: select(name, spaces, a.count, seed=0))
    al = timed(stages, "alignment (100 permutations)", lambda: alignment(cond, emb, seed=0))
    print(
        f"{'':<28} cka_linear {al['cka_linear']:.3f} (null {al['cka_linear_null']:.3f}) on {al['classes_used']} classes"
    )
    unseen = max(2, a.test_images // a.per_class)
    test_labels = np.repeat(np.arange(unseen), a.per_class)
    test_emb = emb[test_labels % c] + 0.8 * rng.normal(size=(len(test_labels), d)).astype(np.float32)
    test_emb /= np.linalg.norm(test_emb, axis=1, keepdims=True)
    timed(stages, f"rank-1 ({len(test_labels)} probes)", lambda: rank1_accuracy(test_emb, test_labels))
    labels = np.repeat(np.arange(c), a.per_class)

    class Split:  # only what a plan reads: the training labels (no images are touched by planning)
        train = LabelledImages(np.zeros((0, 1, 1, 1), np.uint8), labels, [str(i) for i in range(c)])

    cfg = Config.model_validate({"generation": {"method": "diffii", "budget": a.budget}})
    timed(
        stages, f"plan diffii ({a.budget} rows)", lambda: get_method("diffii").plan(PlanContext(cfg, c, None, Split()))
    )
    imgs = rng.integers(0, 256, (32 * 20, 112, 112, 3), dtype=np.uint8)
    timed(stages, "quality features (32 cls)", lambda: features(imgs))
    peak = max(max(s["peak_rss_mb"], s.get("any_process_mb", 0)) for s in stages.values())
    class_level = [k for k in stages if k.startswith(("select ", "alignment", "rank-1", "plan ", "quality"))]
    slowest = max(class_level, key=lambda k: stages[k]["seconds"])
    print(
        f"slowest class-level stage: {slowest} {stages[slowest]['seconds']:.1f} s (target < 60 s); "
        f"peak RSS of any process {peak:.0f} MB (target <= 1536 MB)"
    )
    print(
        json.dumps(
            {
                "classes": c,
                "images": images,
                "image_size": None if a.no_data else a.size,
                "peak_rss_mb": round(peak),
                "stages": stages,
            }
        )
    )


if __name__ == "__main__":
    main()
