"""The generator's networks side by side on this machine: training images/s (one EDM loss step: forward,
backward, Adam, at batch 64) and sampling network evaluations/s (one denoiser call at batch 256), for
`generator.network` unet2d and edm2 at their default sizes, at 16 and 32 px. Then what autoguidance costs a
whole sampler call (64 images, 18 Heun steps, 16 px, per network): unguided, guided by a snapshot of the same
network (`generator.guide.kind: snapshot`) and by a guide network of half the width (`kind: network`, e.g.
overrides {edm2.channels: 16}), as images/s and as a ratio to unguided. Then whether channels_last or
torch.compile (inductor, CPU) pays for training at 16 px: images/s as a ratio to eager, and the compile's
seconds. Ends with one JSON line.

    python benchmarks/network_throughput.py [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from scoremix_ray.config import EDM2Config, GeneratorConfig, SamplerConfig
from scoremix_ray.core.diffusion.edm import build_denoiser, edm_loss
from scoremix_ray.core.diffusion.sampler import generate


def rate(fn, n: int, items: int) -> float:
    fn()  # warm-up: first-call allocations and kernel choices
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n * items / (time.perf_counter() - t0)


def measure(network: str, size: int, steps: int, how: str = "eager") -> dict:
    """`how`: eager, channels_last (the network's weights and the batch) or compile (`torch.compile` of the
    network: its first step, the compile, is timed apart)."""
    torch.manual_seed(0)
    cfg = GeneratorConfig(network=network)
    net = build_denoiser(cfg, 10, size, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    y, labels, gen = torch.rand(64, 1, size, size) * 2 - 1, torch.arange(64) % 10, torch.Generator().manual_seed(0)
    compile_s = 0.0
    if how == "channels_last":
        net, y = net.to(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)
    elif how == "compile":
        net.unet = torch.compile(net.unet)
        t0 = time.perf_counter()
        edm_loss(net.train(), y, labels, cfg, gen).backward()
        compile_s = time.perf_counter() - t0

    def train_step():
        opt.zero_grad(set_to_none=True)
        edm_loss(net.train(), y, labels, cfg, gen).backward()
        opt.step()

    x, sigma, big = torch.randn(256, 1, size, size), torch.full((256,), 1.0), torch.arange(256) % 10

    def sample_call():
        with torch.no_grad():
            net.eval()(x, sigma, big)

    out = {"params": sum(p.numel() for p in net.parameters()), "train_img_s": rate(train_step, steps, 64)}
    if how == "eager":
        out["sample_evals_s"] = rate(sample_call, max(2, steps // 4), 256)
    if how == "compile":
        out["compile_s"] = compile_s
    return out


def half_width(cfg: GeneratorConfig) -> GeneratorConfig:
    """The guide network of `cfg` at half its width."""
    if cfg.network == "edm2":
        return cfg.model_copy(update={"edm2": EDM2Config(channels=cfg.edm2.channels // 2)})
    return cfg.model_copy(update={"block_out_channels": tuple(c // 2 for c in cfg.block_out_channels)})


def guided_sampling(network: str, size: int = 16, n: int = 64) -> dict:
    """Images/s of one sampler call, unguided and under autoguidance by a same-size or a half-width guide."""
    torch.manual_seed(0)
    cfg = GeneratorConfig(network=network)
    net, same, small = (build_denoiser(c, 10, size, 1).eval() for c in (cfg, cfg, half_width(cfg)))
    labels, weights, seeds = torch.arange(n)[:, None] % 10, torch.ones(n, 1), list(range(n))
    out = {}
    for name, guide in (("unguided", None), ("snapshot_guide", same), ("half_width_guide", small)):
        scfg = SamplerConfig(batch_size=n, guidance="none" if guide is None else "autoguidance", guidance_scale=2.0)
        out[f"{name}_img_s"] = rate(lambda g=guide, s=scfg: generate(net, labels, weights, seeds, s, guide_net=g), 2, n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    figures = {}
    for size in (16, 32):
        u, e = measure("unet2d", size, a.steps), measure("edm2", size, a.steps)
        figures[f"{size}px"] = {"unet2d": u, "edm2": e}
        print(
            f"{size} px: unet2d {u['params'] / 1e6:.2f}M params, train {u['train_img_s']:.0f} img/s, sample "
            f"{u['sample_evals_s']:.0f} evals/s; edm2 {e['params'] / 1e6:.2f}M, train {e['train_img_s']:.0f} img/s "
            f"({e['train_img_s'] / u['train_img_s']:.2f}x), sample {e['sample_evals_s']:.0f} evals/s "
            f"({e['sample_evals_s'] / u['sample_evals_s']:.2f}x)"
        )
    for network in ("unet2d", "edm2"):
        g = guided_sampling(network)
        r = {k: g[f"{k}_img_s"] / g["unguided_img_s"] for k in ("snapshot_guide", "half_width_guide")}
        figures[f"guidance_16px_{network}"] = {"": g}
        print(
            f"autoguidance, {network} at 16 px: unguided {g['unguided_img_s']:.0f} img/s; a same-size guide "
            f"{g['snapshot_guide_img_s']:.0f} ({r['snapshot_guide']:.2f}x); a half-width guide network "
            f"{g['half_width_guide_img_s']:.0f} ({r['half_width_guide']:.2f}x)"
        )
    for network in ("unet2d", "edm2"):
        eager = figures["16px"][network]["train_img_s"]
        cl, comp = measure(network, 16, a.steps, "channels_last"), measure(network, 16, a.steps, "compile")
        figures[f"layout_16px_{network}"] = {"channels_last": cl, "compile": comp}
        print(
            f"training {network} at 16 px: channels_last {cl['train_img_s'] / eager:.2f}x eager, torch.compile "
            f"{comp['train_img_s'] / eager:.2f}x (after {comp['compile_s']:.0f} s of compiling)"
        )
    rounded = {s: {n: {k: round(v, 1) for k, v in d.items()} for n, d in f.items()} for s, f in figures.items()}
    print(json.dumps({"threads": a.threads, **rounded}))


if __name__ == "__main__":
    main()
