"""Cost of ScoreMix mixing: images/s of the K=2 mixed sampler vs the plain sampler at the same batch size.

The floor is 2.0 (one batched call of 2x the batch per denoiser evaluation); target: within 10% of it on
CPU. Also times the naive version (two separate network calls per evaluation). Uses an untrained network
of the default architecture: the cost does not depend on the weights.

    python benchmarks/mix_overhead.py [--size 16] [--batch 128] [--steps 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from scoremix_ray.config import GeneratorConfig
from scoremix_ray.core.diffusion.edm import build_denoiser
from scoremix_ray.core.diffusion.sampler import heun_sample, karras_sigmas, mixed_denoiser


def naive_mix(net, labels, weights):
    """Two network calls per evaluation: what a straightforward implementation does."""

    def denoise(x, sigma):
        s = torch.full((1,), float(sigma))
        return sum(weights[:, k, None, None, None] * net(x, s, labels[:, k]) for k in range(labels.shape[1]))

    return denoise


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = build_denoiser(GeneratorConfig(), 5, a.size, 1).eval()
    noise = torch.randn(a.batch, 1, a.size, a.size)
    sig = karras_sigmas(a.steps, 0.002, 80, 7)
    b = a.batch
    one = (torch.zeros(b, 1, dtype=torch.long), torch.ones(b, 1))
    two = (torch.stack([torch.zeros(b), torch.ones(b)], 1).long(), torch.full((b, 2), 0.5))
    with torch.inference_mode():
        t_plain = best_time(lambda: heun_sample(mixed_denoiser(net, *one), noise, sig), a.repeats)
        t_mix = best_time(lambda: heun_sample(mixed_denoiser(net, *two), noise, sig), a.repeats)
        t_naive = best_time(lambda: heun_sample(naive_mix(net, *two), noise, sig), a.repeats)
    print(f"{a.size}x{a.size}, batch {b}, {a.steps} Heun steps, {a.threads} threads")
    print(f"plain sampler       {b / t_plain:8.1f} images/s")
    print(
        f"ScoreMix K=2 (ours) {b / t_mix:8.1f} images/s   cost ratio vs plain {t_mix / t_plain:.2f} "
        f"(floor 2.00; {100 * (t_mix / t_plain / 2 - 1):+.0f}% from it; target within +10%)"
    )
    print(f"ScoreMix K=2 naive  {b / t_naive:8.1f} images/s   cost ratio vs plain {t_naive / t_plain:.2f}")
    print(f"ours vs naive: {t_naive / t_mix:.2f}x faster")


if __name__ == "__main__":
    main()
