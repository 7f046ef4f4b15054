"""Classical, non-generative baselines on the same budget and path: mixup (Zhang et al. 2018) and CutMix
(Yun et al. 2019) between two real images of different classes.

Adaptation: the recognizer trains on hard labels (a margin softmax has no soft-label form here), so each
image takes the label of its dominant source: lambda ~ Beta(alpha, alpha) folded to [0.5, 1] is the share
of the labelled image. `classes`/`weights` record both sources and their shares: for CutMix the share of the
pixels each one has in the image made (the box of 1 - lambda, in whole pixels, as pasted).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from scoremix_ray.core.methods.base import PlanContext, RenderContext, register
from scoremix_ray.core.methods.common import blend, box_size, images_of, paste_box, row_rng, source_rows


def _share(seed: int, alpha: float) -> float:
    lam = row_rng(seed).beta(alpha, alpha)
    return float(max(lam, 1 - lam))


def _pasted_share(lam: float, shape: tuple[int, ...]) -> float:
    """The share of the labelled image once CutMix pastes its box of 1 - lam (whole pixels)."""
    bh, bw = box_size(shape[0], shape[1], 1 - lam)
    return 1 - bh * bw / (shape[0] * shape[1])


def _plan(name: str):
    def plan(ctx: PlanContext) -> pa.Table:
        rows = source_rows(ctx, name, partner="other")
        labels = ctx.split.train.labels
        lam = [_share(s, ctx.cfg.generation.mix_alpha) for s in rows.column("seed").to_pylist()]
        if name == "cutmix":
            lam = [_pasted_share(v, ctx.split.train.images.shape[1:3]) for v in lam]
        pairs = [
            [int(labels[a]), int(labels[b])]
            for a, b in zip(rows.column("source").to_numpy(), rows.column("partner").to_numpy())
        ]
        rows = rows.set_column(rows.schema.get_field_index("classes"), "classes", pa.array(pairs, pa.list_(pa.int64())))
        return rows.set_column(
            rows.schema.get_field_index("weights"),
            "weights",
            pa.array([[w, 1 - w] for w in lam], pa.list_(pa.float64())),
        )

    return plan


def render_mixup(ctx: RenderContext, rows: pa.Table) -> np.ndarray:
    a, b = images_of(ctx, rows, "source"), images_of(ctx, rows, "partner")
    return np.stack([blend(x, y, w[0]) for x, y, w in zip(a, b, rows.column("weights").to_pylist())])


def render_cutmix(ctx: RenderContext, rows: pa.Table) -> np.ndarray:
    a, b = images_of(ctx, rows, "source"), images_of(ctx, rows, "partner")
    out = []
    for x, y, w, seed in zip(a, b, rows.column("weights").to_pylist(), rows.column("seed").to_pylist()):
        image, kept = paste_box(x, y, 1 - _share(seed, ctx.cfg.generation.mix_alpha), row_rng(seed))
        assert kept == w[0], (kept, w)  # the plan recorded this very box's share
        out.append(image)
    return np.stack(out)


register("mixup", _plan("mixup"), render_mixup, new_classes=False, needs=("real_images",))
register("cutmix", _plan("cutmix"), render_cutmix, new_classes=False, needs=("real_images",))
