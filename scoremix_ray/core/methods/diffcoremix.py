"""DiffCoRe-Mix (Islam et al. 2025) on the project's class-conditional generator.

Per real image: `generation.filter_candidates` class-conditional generated candidates of its class; a
hard-cosine filter keeps a candidate only if its baseline-recognizer embedding has cosine >= tau (0.6) with
the class centre (the authors use CLIP image embeddings against a real image; the recognizer is the
embedding this project has). The first kept candidate is mixed with the natural image, pixel-wise (convex
blend, weight ~ U(0.3, 0.7)) or patch-wise (4x4 grid, each cell swapped with probability 0.5), each with
probability 1/2. When every candidate of an image is discarded, k new ones are drawn (fresh seeds), up to
`generation.filter_rounds` rounds; an image with none above tau after that takes its best candidate (the real
image is never passed off as a mix). The stats count the candidates drawn, the discards and the rows whose
candidate passed the filter: the effective budget. Label preserved.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from scoremix_ray.core.diffusion.sampler import generate, sample_seed
from scoremix_ray.core.methods.base import PlanContext, RenderContext, register
from scoremix_ray.core.methods.common import blend, images_of, patch_swap, row_rng, source_rows
from scoremix_ray.core.recognition.train import embed


def plan(ctx: PlanContext) -> pa.Table:
    return source_rows(ctx, "diffcoremix")


def keep_mask(ctx: RenderContext, candidates: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hard-cosine filter: (cosine to the class centre, kept?)."""
    cos = np.einsum("nd,nd->n", embed(ctx.recognizer, candidates), ctx.centres[labels])
    return cos, cos >= ctx.cfg.generation.filter_tau


def render(ctx: RenderContext, rows: pa.Table):
    import torch

    g = ctx.cfg.generation
    natural = images_of(ctx, rows, "source")
    labels = rows.column("label").to_numpy()
    seeds = rows.column("seed").to_pylist()
    k = g.filter_candidates
    chosen, best = [None] * len(rows), [(-np.inf, None)] * len(rows)  # a passing candidate; the best one seen
    drawn = discarded = 0
    for rnd in range(g.filter_rounds):
        todo = [r for r in range(len(rows)) if chosen[r] is None]
        if not todo:
            break
        cand_seeds = [sample_seed(seeds[r], j, rnd) for r in todo for j in range(k)]  # k candidates per row
        cand_labels = np.repeat(labels[todo], k)
        cands = generate(
            ctx.net,
            torch.as_tensor(cand_labels)[:, None],
            torch.ones(len(cand_labels), 1),
            cand_seeds,
            ctx.cfg.sampler.model_copy(update={"batch_size": len(cand_seeds)}),
            guide_net=ctx.guide,
        )
        cos, kept = keep_mask(ctx, cands, cand_labels)
        drawn, discarded = drawn + len(cand_seeds), discarded + int((~kept).sum())
        for i, r in enumerate(todo):
            hits = np.flatnonzero(kept[i * k : (i + 1) * k])
            if len(hits):
                chosen[r] = cands[i * k + hits[0]]
            j = int(np.argmax(cos[i * k : (i + 1) * k]))
            if cos[i * k + j] > best[r][0]:
                best[r] = (cos[i * k + j], cands[i * k + j])
    out = []
    for r, (nat, seed) in enumerate(zip(natural, seeds)):
        gen = chosen[r] if chosen[r] is not None else best[r][1]
        rng = row_rng(seed)
        out.append(blend(nat, gen, rng.uniform(0.3, 0.7)) if rng.random() < 0.5 else patch_swap(nat, gen, 4, rng))
    passed = sum(c is not None for c in chosen)
    stats = {
        "candidates": drawn,
        "discarded": discarded,
        "rows_passing_filter": passed,
        "rows_below_tau": len(rows) - passed,
    }
    return np.stack(out), stats


register("diffcoremix", plan, render, new_classes=False, needs=("generator", "guide", "recognizer", "real_images"))
