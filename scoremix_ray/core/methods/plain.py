"""The generative control: class-conditional samples of the existing classes, added to their own classes
with the same image budget as ScoreMix. It tells whether a gain comes from new classes or from more images.
Sample (class c, index i) is the plain sampler's image for that class and index (`scoremix-ray sample`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from scoremix_ray.core.diffusion.sampler import sample_seed
from scoremix_ray.core.methods.base import PlanContext, register
from scoremix_ray.core.methods.common import budget
from scoremix_ray.core.methods.scoremix import render


def plan(ctx: PlanContext) -> pa.Table:
    n, total = ctx.num_real_classes, budget(ctx)
    labels = np.arange(total) % n  # classes in turn: the budget is spread evenly
    index = np.arange(total) // n
    return pa.table(
        {
            "label": pa.array(labels, pa.int64()),
            "classes": pa.array([[int(c)] for c in labels], pa.list_(pa.int64())),
            "weights": pa.array([[1.0]] * total, pa.list_(pa.float64())),
            "weights_end": pa.array([None] * total, pa.list_(pa.float64())),
            "seed": pa.array([sample_seed(ctx.cfg.seed, int(c), int(i)) for c, i in zip(labels, index)], pa.int64()),
            "index": pa.array(index, pa.int64()),
        }
    )


register("plain", plan, render, new_classes=False, needs=("generator", "guide"))
