"""DiffCoRe-Mix (Islam et al. 2025) on the project's class-conditional generator.

Per real image: `generation.filter_candidates` class-conditional generated candidates of its class; a
hard-cosine filter keeps a candidate only if its baseline-recognizer embedding has cosine >= tau (0.6) with
the class centre (the authors use CLIP image embeddings against a real image; the recognizer is the
embedding this project has). The first kept candidate is mixed with the natural image, pixel-wise (convex
blend, weight ~ U(0.3, 0.7)) or patch-wise (4x4 grid, each cell swapped with probability 0.5), each with
probability 1/2. When every candidate is discarded, the natural image is mixed with itself (it stays as
it is) and the discard is counted. Label preserved.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from scoremix_ray.diffusion.sampler import generate, sample_seed
from scoremix_ray.methods import PlanContext, RenderContext, register
from scoremix_ray.methods.common import blend, images_of, patch_swap, row_rng, source_rows


def plan(ctx: PlanContext) -> pa.Table:
    return source_rows(ctx, "diffcoremix")


def keep_mask(ctx: RenderContext, candidates: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hard-cosine filter: (cosine to the class centre, kept?)."""
    from scoremix_ray.recognition.train import embed

    cos = np.einsum("nd,nd->n", embed(ctx.recognizer, candidates), ctx.centres[labels])
    return cos, cos >= ctx.cfg.generation.filter_tau


def render(ctx: RenderContext, rows: pa.Table):
    import torch

    g = ctx.cfg.generation
    natural = images_of(ctx, rows, "source")
    labels = rows.column("label").to_numpy()
    seeds = rows.column("seed").to_pylist()
    k = g.filter_candidates
    cand_seeds = [sample_seed(s, j, 0) for s in seeds for j in range(k)]  # k candidates per row
    cand_labels = np.repeat(labels, k)
    cands = generate(ctx.net, torch.as_tensor(cand_labels)[:, None], torch.ones(len(cand_labels), 1), cand_seeds,
                     ctx.cfg.sampler.model_copy(update={"batch_size": len(cand_seeds)}), guide_net=ctx.guide)  # fmt: skip
    _, kept = keep_mask(ctx, cands, cand_labels)
    kept = kept.reshape(-1, k)
    out, discarded, fallback = [], int((~kept).sum()), 0
    for r, (nat, seed) in enumerate(zip(natural, seeds)):
        hits = np.flatnonzero(kept[r])
        if len(hits) == 0:
            fallback += 1
            gen = nat
        else:
            gen = cands[r * k + hits[0]]
        rng = row_rng(seed)
        out.append(blend(nat, gen, rng.uniform(0.3, 0.7)) if rng.random() < 0.5 else patch_swap(nat, gen, 4, rng))
    stats = {"candidates": int(kept.size), "discarded": discarded, "rows_without_candidate": fallback}
    return np.stack(out), stats


register("diffcoremix", plan, render, new_classes=False, needs=("generator", "guide", "recognizer", "real_images"))
