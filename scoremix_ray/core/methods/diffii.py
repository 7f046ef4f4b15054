"""Diff-II (2025) on the project's class-conditional generator.

Per real image and a second real image of the same class: both are inverted to noise level sigma_k
(`generation.inversion_strength` of the trajectory) by running the deterministic EDM ODE backward (Heun,
ascending sigmas; the authors use DDIM inversion), spherically interpolated at a random angle t ~ U(0, 1),
and denoised in two stages: the first `generation.guided_fraction` of the remaining steps guided (the run's
guidance kind, `sampler.guidance`, e.g. autoguidance from the generator's earlier checkpoint, at Diff-II's own
scale `generation.guidance_scale`; the authors use a context prompt with CFG), the rest unguided; with
`sampler.guidance: none` both stages are unguided. Label preserved.
Adaptation: no text-to-image model offline, so concept learning (textual inversion + LoRA) is replaced by
the generator's own class condition.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from scoremix_ray.core.diffusion.sampler import heun_integrate, to_images
from scoremix_ray.core.methods.base import PlanContext, RenderContext, register
from scoremix_ray.core.methods.common import (
    class_denoiser,
    images_of,
    model_input,
    row_rng,
    schedule,
    source_rows,
    strength_index,
)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation per sample: sin((1-t) w)/sin(w) a + sin(t w)/sin(w) b, w the angle between
    the flattened a and b (linear where they are parallel)."""
    af, bf = a.flatten(1).double(), b.flatten(1).double()
    cos = (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1)).clamp_min(1e-12)
    w = torch.arccos(cos.clamp(-1, 1))
    t = t.double()
    sw = torch.sin(w)
    lin = sw.abs() < 1e-6
    ca = torch.where(lin, 1 - t, torch.sin((1 - t) * w) / torch.where(lin, 1.0, sw))
    cb = torch.where(lin, t, torch.sin(t * w) / torch.where(lin, 1.0, sw))
    return (ca[:, None] * af + cb[:, None] * bf).reshape(a.shape).to(a.dtype)


def invert(ctx: RenderContext, images: np.ndarray, labels: np.ndarray, k: int) -> torch.Tensor:
    """Clean images (taken as at sigma_min) -> their ODE state at sigma_k."""
    sig = schedule(ctx)
    up = torch.flip(sig[k:-1], [0])  # sigma_min ... sigma_k
    return heun_integrate(class_denoiser(ctx, labels, guided=False), model_input(ctx, images), up)


def regenerate(ctx: RenderContext, z: torch.Tensor, labels: np.ndarray, k: int) -> np.ndarray:
    """From sigma_k down to 0: guided for the first `guided_fraction` of the steps (the run's guidance kind,
    `sampler.guidance`, at Diff-II's own scale `generation.guidance_scale`), then unguided."""
    sig = schedule(ctx)[k:]
    split = int(round(ctx.cfg.generation.guided_fraction * (len(sig) - 1)))
    if split > 0:
        z = heun_integrate(
            class_denoiser(ctx, labels, guidance_scale=ctx.cfg.generation.guidance_scale), z, sig[: split + 1]
        )
    return to_images(heun_integrate(class_denoiser(ctx, labels, guided=False), z, sig[split:]))


def plan(ctx: PlanContext) -> pa.Table:
    return source_rows(ctx, "diffii", partner="same")


def render(ctx: RenderContext, rows: pa.Table) -> np.ndarray:
    labels = rows.column("label").to_numpy()
    k = strength_index(ctx.cfg.sampler.steps, ctx.cfg.generation.inversion_strength)
    za = invert(ctx, images_of(ctx, rows, "source"), labels, k)
    zb = invert(ctx, images_of(ctx, rows, "partner"), labels, k)
    t = torch.tensor([row_rng(s).uniform() for s in rows.column("seed").to_pylist()]).to(za.device)
    return regenerate(ctx, slerp(za, zb, t), labels, k)


register("diffii", plan, render, new_classes=False, needs=("generator", "guide", "real_images"))
