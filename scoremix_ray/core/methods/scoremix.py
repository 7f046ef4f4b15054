"""ScoreMix (arXiv 2506.10226): each selected tuple becomes new class `num_real + rank`, sampled by the
mixed denoiser D_mix = sum_k w_k D(x; sigma, c_k) along one reverse trajectory (`diffusion/sampler.py`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from scoremix_ray.core.diffusion.sampler import generate, sample_seed, tuple_key
from scoremix_ray.core.methods.base import PlanContext, RenderContext, register
from scoremix_ray.foundations.errors import ScoreMixError


def mixing_weights(weights: tuple[float, ...] | None, k: int, what: str = "generation.weights") -> list[float]:
    if weights is None:
        return [1.0 / k] * k
    if len(weights) != k:  # the config checked them against its strategy; a --pairs file may hold other tuples
        raise ScoreMixError(f"{what} has {len(weights)} values for tuples of {k} classes")
    return [float(w) for w in weights]


def plan(ctx: PlanContext) -> pa.Table:
    sel, g = ctx.selection, ctx.cfg.generation
    if sel is None:
        raise ScoreMixError("scoremix needs selected tuples (run select first or pass --pairs)")
    k = sel.tuples.shape[1]
    w = mixing_weights(g.weights, k)
    w_end = None if g.weights_end is None else mixing_weights(g.weights_end, k, "generation.weights_end")
    rows = {"label": [], "classes": [], "weights": [], "weights_end": [], "seed": [], "index": []}
    for rank, classes in enumerate(sel.tuples.tolist()):
        key = tuple_key(classes)
        for i in range(g.per_tuple):
            rows["label"].append(ctx.num_real_classes + rank)
            rows["classes"].append(classes)
            rows["weights"].append(w)
            rows["weights_end"].append(w_end)
            rows["seed"].append(sample_seed(ctx.cfg.seed, key, i))
            rows["index"].append(i)
    return pa.table(
        {
            "label": pa.array(rows["label"], pa.int64()),
            "classes": pa.array(rows["classes"], pa.list_(pa.int64())),
            "weights": pa.array(rows["weights"], pa.list_(pa.float64())),
            "weights_end": pa.array(rows["weights_end"], pa.list_(pa.float64())),
            "seed": pa.array(rows["seed"], pa.int64()),
            "index": pa.array(rows["index"], pa.int64()),
        }
    )


def render(ctx: RenderContext, rows: pa.Table) -> np.ndarray:
    labels = torch.tensor(rows.column("classes").to_pylist())
    weights = torch.tensor(rows.column("weights").to_pylist(), dtype=torch.float32)
    ends = rows.column("weights_end").to_pylist()
    w_end = None if ends[0] is None else torch.tensor(ends, dtype=torch.float32)
    scfg = ctx.cfg.sampler.model_copy(update={"batch_size": len(rows)})  # the unit is one network batch
    return generate(ctx.net, labels, weights, rows.column("seed").to_pylist(), scfg, w_end, ctx.guide)


register("scoremix", plan, render, new_classes=True, needs=("generator", "guide"))
