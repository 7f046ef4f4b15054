"""Class-level stages at face-dataset scale (issue 16): seconds and peak memory at C classes.

Synthetic class spaces (C recognizer centres and C generator condition vectors, d dims each, seeded) and
synthetic labels stand in for a trained generator and baseline: these stages cost the same whatever the
weights. Measured, one stage after another in this process:
  - selection: every registered strategy (pairs by row blocks, triplets by the certified threshold search)
  - alignment: every metric with its permutation null (<= 2000 classes used, O(n^2) per permutation)
  - rank-1 identification over the unseen classes' test embeddings (chunked)
  - the partner search of a label-preserving method's plan (Diff-II: a same-class partner per row)
  - the generator quality check's classifier features on a class subset
Targets: every class-level stage under 60 s at 10,000 classes; peak RSS <= 1.5 GB.
NOT covered yet (issue 16 open): the streaming data stage, Ray Data ingestion in Ray Train, the synthetic
identity folder; this script says so in its JSON (`covers`).

    python benchmarks/scale.py [--classes 10000] [--dim 512] [--count 1000] [--test-images 16000]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(stages: dict, name: str, fn):
    t = time.perf_counter()
    out = fn()
    stages[name] = {"seconds": round(time.perf_counter() - t, 2), "peak_rss_mb": round(peak_rss_mb())}
    print(f"{name:<28} {stages[name]['seconds']:8.2f} s   peak RSS so far {stages[name]['peak_rss_mb']:6.0f} MB")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--count", type=int, default=1000, help="tuples each strategy selects")
    ap.add_argument("--test-images", type=int, default=16_000, help="rank-1 probes (unseen classes' images)")
    ap.add_argument("--budget", type=int, default=200_000, help="rows of the label-preserving plan")
    ap.add_argument("--per-class", type=int, default=16)
    a = ap.parse_args()

    from scoremix_ray.config import Config
    from scoremix_ray.data.readers import LabelledImages
    from scoremix_ray.evaluation.alignment import alignment
    from scoremix_ray.evaluation.quality import features
    from scoremix_ray.evaluation.verification import rank1_accuracy
    from scoremix_ray.methods import PlanContext, get_method
    from scoremix_ray.selection import STRATEGIES, select
    from scoremix_ray.selection.strategies import Spaces

    rng = np.random.default_rng(0)
    c, d = a.classes, a.dim
    # the condition space partly follows the embedding (as a generator's class embeddings might)
    emb = rng.normal(size=(c, d)).astype(np.float32)
    cond = (0.3 * emb @ rng.normal(size=(d, d)).astype(np.float32) / np.sqrt(d) + rng.normal(size=(c, d))).astype(np.float32)
    spaces = Spaces(embedding=emb, condition=cond)
    stages: dict = {}
    print(f"{c} classes, {d}-dim spaces, {a.count} tuples per strategy")
    for name in STRATEGIES:
        timed(stages, f"select {name}", lambda: select(name, spaces, a.count, seed=0))
    al = timed(stages, "alignment (100 permutations)", lambda: alignment(cond, emb, seed=0))
    print(f"{'':<28} cka_linear {al['cka_linear']:.3f} (null {al['cka_linear_null']:.3f}) on {al['classes_used']} classes")
    unseen = max(2, a.test_images // a.per_class)
    test_labels = np.repeat(np.arange(unseen), a.per_class)
    test_emb = emb[test_labels % c] + 0.8 * rng.normal(size=(len(test_labels), d)).astype(np.float32)
    test_emb /= np.linalg.norm(test_emb, axis=1, keepdims=True)
    timed(stages, f"rank-1 ({len(test_labels)} probes)", lambda: rank1_accuracy(test_emb, test_labels))
    labels = np.repeat(np.arange(c), a.per_class)

    class Split:  # only what a plan reads: the training labels (no images are touched by planning)
        train = LabelledImages(np.zeros((0, 1, 1, 1), np.uint8), labels, [str(i) for i in range(c)])

    cfg = Config.model_validate({"generation": {"method": "diffii", "budget": a.budget}})
    timed(stages, f"plan diffii ({a.budget} rows)", lambda: get_method("diffii").plan(PlanContext(cfg, c, None, Split())))
    imgs = rng.integers(0, 256, (32 * 20, 112, 112, 3), dtype=np.uint8)
    timed(stages, "quality features (32 cls)", lambda: features(imgs))
    peak = max(s["peak_rss_mb"] for s in stages.values())
    slowest = max(stages, key=lambda k: stages[k]["seconds"])
    print(f"slowest class-level stage: {slowest} {stages[slowest]['seconds']:.1f} s (target < 60 s); "
          f"peak RSS {peak:.0f} MB (target <= 1536 MB)")
    print(json.dumps({"classes": c, "images": int(len(labels)), "peak_rss_mb": peak, "stages": stages,
                      "covers": "class-level stages only; the data stage and Ray Train ingestion are not streaming yet"}))


if __name__ == "__main__":
    main()
