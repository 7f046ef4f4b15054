"""DiffuseMix (Islam et al., CVPR 2024) on the project's class-conditional generator.

Per real image: a generated counterpart (partial noising to `generation.edit_strength` of the trajectory,
then class-conditional denoising: SDEdit), joined with the original by a random horizontal or vertical half
split with a short linear ramp (the authors' ~20 px at 224 px, i.e. ~10% of the side), then blended with a
seeded IFS fractal at `generation.fractal_weight` (0.2). Label preserved.
Adaptation: the authors edit with an instruction-guided text-to-image model and style prompts; offline we
have only the class-conditional generator, so the "edit" is conditioned on the image's own class.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from scoremix_ray.core.methods.base import PlanContext, RenderContext, register
from scoremix_ray.core.methods.common import blend, half_split, images_of, renoise_and_denoise, row_rng, source_rows
from scoremix_ray.core.methods.fractals import ifs_fractal


def plan(ctx: PlanContext) -> pa.Table:
    return source_rows(ctx, "diffusemix")


def render(ctx: RenderContext, rows: pa.Table) -> np.ndarray:
    g = ctx.cfg.generation
    orig = images_of(ctx, rows, "source")
    seeds = rows.column("seed").to_pylist()
    gen = renoise_and_denoise(ctx, orig, rows.column("label").to_numpy(), seeds, g.edit_strength)
    size, ramp = orig.shape[1], max(1, round(0.1 * orig.shape[1]))
    out = []
    for o, c, seed in zip(orig, gen, seeds):
        rng = row_rng(seed)
        hybrid = half_split(o, c, vertical=bool(rng.integers(2)), a_first=bool(rng.integers(2)), ramp=ramp)
        out.append(blend(ifs_fractal(seed, size, o.shape[2]), hybrid, g.fractal_weight))
    return np.stack(out)


register("diffusemix", plan, render, new_classes=False, needs=("generator", "guide", "real_images"))
