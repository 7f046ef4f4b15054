"""What the label-preserving methods share: the equal image budget spread over the real training images,
seeded per-row randomness, partial noising/denoising on the generator, and the image-mixing operations."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from scoremix_ray.core.data.images import to_model
from scoremix_ray.core.diffusion.sampler import (
    heun_integrate,
    karras_sigmas,
    policy_denoiser,
    sample_seed,
    seeded_noise,
    to_images,
)
from scoremix_ray.core.methods.base import PlanContext, RenderContext


def budget(ctx: PlanContext) -> int:
    g = ctx.cfg.generation
    return g.budget or ctx.cfg.selection.count * g.per_tuple


def method_key(name: str) -> int:
    """A noise stream per method, apart from the class streams (small ints) and tuple streams (>= 2^32)."""
    return 2**40 + int(np.frombuffer(name.encode().ljust(8, b"\0")[:8], np.uint64)[0] % 2**20)


def source_rows(ctx: PlanContext, name: str, partner: str | None = None) -> pa.Table:
    """`budget` rows over the real training images (a seed-fixed order, round-robin so every image is used
    about equally), label = the source's label. `partner`: "same" (another image of the class) or "other"
    (an image of another class) for methods that combine two real images."""
    labels = ctx.split.train.labels
    n, total = len(labels), budget(ctx)
    order = np.random.default_rng([ctx.cfg.seed, method_key(name)]).permutation(n)
    src = order[np.arange(total) % n]
    seeds = [sample_seed(ctx.cfg.seed, method_key(name), r) for r in range(total)]
    cols = {
        "label": labels[src],
        "classes": [[int(labels[s])] for s in src],
        "weights": [[1.0]] * total,
        "weights_end": [None] * total,
        "seed": seeds,
        "index": np.arange(total),
        "source": src,
    }
    if partner is not None:
        by_class = np.argsort(labels, kind="stable")  # image indices grouped by class: one sort, O(log N) a row
        grouped = labels[by_class]
        cols["partner"] = [
            draw_partner(grouped, by_class, int(s), int(labels[s]), seed, partner) for s, seed in zip(src, seeds)
        ]
    return pa.table(
        {
            "label": pa.array(cols["label"], pa.int64()),
            "classes": pa.array(cols["classes"], pa.list_(pa.int64())),
            "weights": pa.array(cols["weights"], pa.list_(pa.float64())),
            "weights_end": pa.array(cols["weights_end"], pa.list_(pa.float64())),
            "seed": pa.array(cols["seed"], pa.int64()),
            "index": pa.array(cols["index"], pa.int64()),
            "source": pa.array(cols["source"], pa.int64()),
            **({"partner": pa.array(cols["partner"], pa.int64())} if partner else {}),
        }
    )


def draw_partner(grouped: np.ndarray, by_class: np.ndarray, s: int, c: int, seed: int, partner: str) -> int:
    """A uniform draw, from the row's seed, among the other images of image s's class c ("same"; s itself if
    it is alone) or among the images of every other class ("other"), by position in `by_class` (the image
    indices grouped by class, `grouped` their labels): O(log N) per row instead of a scan of all N labels."""
    lo, hi = int(np.searchsorted(grouped, c, "left")), int(np.searchsorted(grouped, c, "right"))
    rng = np.random.default_rng(seed)
    if partner == "same":
        if hi - lo == 1:
            return s
        r = int(rng.integers(hi - lo - 1))
        r += r >= int(np.searchsorted(by_class[lo:hi], s))  # skip s itself (members are in index order)
        return int(by_class[lo + r])
    r = int(rng.integers(len(grouped) - (hi - lo)))
    return int(by_class[r if r < lo else r + hi - lo])  # skip the block of s's class


def row_rng(seed: int) -> np.random.Generator:
    """Randomness of one row (split direction, mixing weight, box...), apart from its noise stream."""
    return np.random.default_rng([seed, 1])


def images_of(ctx: RenderContext, rows: pa.Table, column: str) -> np.ndarray:
    return ctx.split.train.images[rows.column(column).to_numpy()]


def strength_index(steps: int, strength: float) -> int:
    """First schedule index of a partial trajectory: strength 1 starts at sigma_max, small strengths late."""
    return int(round((1.0 - strength) * (steps - 1)))


def class_denoiser(ctx: RenderContext, labels: np.ndarray, guided: bool = True, guidance_scale: float | None = None):
    """D(x; sigma, c) of each row's own class under the run's guidance policy (`sampler.guidance`)."""
    lab = torch.tensor(labels, dtype=torch.long)[:, None]
    return policy_denoiser(
        ctx.net, lab, torch.ones(len(lab), 1), ctx.cfg.sampler, ctx.guide, guided=guided, guidance_scale=guidance_scale
    )


def model_input(ctx: RenderContext, images: np.ndarray) -> torch.Tensor:
    """uint8 images (host) -> model space on the generator's device."""
    return torch.from_numpy(to_model(images)).to(ctx.device)


def schedule(ctx: RenderContext) -> torch.Tensor:
    s = ctx.cfg.sampler
    return karras_sigmas(s.steps, s.sigma_min, s.sigma_max, s.rho)


def renoise_and_denoise(
    ctx: RenderContext, images: np.ndarray, labels: np.ndarray, seeds: list[int], strength: float
) -> np.ndarray:
    """SDEdit on the EDM generator: x = image + sigma_k * noise, then Heun from sigma_k to 0 conditioned on
    the image's class: a generated counterpart that keeps the image's layout."""
    sig = schedule(ctx)
    k = strength_index(ctx.cfg.sampler.steps, strength)
    x0 = model_input(ctx, images)
    x = x0 + float(sig[k]) * seeded_noise(seeds, tuple(x0.shape[1:])).to(ctx.device)  # drawn on the CPU, then moved
    return to_images(heun_integrate(class_denoiser(ctx, labels), x, sig[k:]))


# --- image mixing (uint8 in, uint8 out) ------------------------------------------------------------------


def blend(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    """w a + (1 - w) b."""
    return np.clip(np.rint(w * a.astype(np.float64) + (1 - w) * b.astype(np.float64)), 0, 255).astype(np.uint8)


def half_split(a: np.ndarray, b: np.ndarray, vertical: bool, a_first: bool, ramp: int) -> np.ndarray:
    """a on one half, b on the other, joined by a linear ramp of `ramp` pixels across the middle."""
    size = a.shape[1] if vertical else a.shape[0]
    pos = np.arange(size) + 0.5
    second = np.clip((pos - (size / 2 - ramp / 2)) / max(ramp, 1e-9), 0, 1)  # 0 on the first half, 1 on the second
    wa = 1 - second if a_first else second  # the weight of a
    m = wa[None, :, None] if vertical else wa[:, None, None]
    return np.clip(np.rint(m * a + (1 - m) * b), 0, 255).astype(np.uint8)


def patch_swap(a: np.ndarray, b: np.ndarray, grid: int, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """a with each cell of a grid x grid partition replaced by b's cell with probability p."""
    out = a.copy()
    edges = np.linspace(0, a.shape[0], grid + 1).astype(int)
    for i in range(grid):
        for j in range(grid):
            if rng.random() < p:
                out[edges[i] : edges[i + 1], edges[j] : edges[j + 1]] = b[
                    edges[i] : edges[i + 1], edges[j] : edges[j + 1]
                ]
    return out


def box_size(h: int, w: int, area: float) -> tuple[int, int]:
    """CutMix's box for `area` (share of an h x w image), floored to whole pixels: the box never covers more
    than `area`, so the labelled image keeps at least 1 - area (>= 1/2)."""
    return int(h * np.sqrt(area)), int(w * np.sqrt(area))


def paste_box(a: np.ndarray, b: np.ndarray, area: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """CutMix: a with a random box of about `area` (share of the image) taken from b; returns the image and
    the share of a that remains."""
    h, w = a.shape[:2]
    bh, bw = box_size(h, w, area)
    y, x = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
    out = a.copy()
    out[y : y + bh, x : x + bw] = b[y : y + bh, x : x + bw]
    return out, 1 - bh * bw / (h * w)
