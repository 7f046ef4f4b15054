"""GPU figures: sampler, training and Ray Data throughput at the embedded default and at webface-like sizes.

Measured in one run on one CUDA GPU (untrained networks: the cost does not depend on the weights):
  - sampler images/s, plain (K=1) and ScoreMix (K=2, one batched call per evaluation), fp32 and bf16, and the
    mixing cost ratio t(K=2) / t(K=1) (floor 2.0: twice the batch per call; target <= 2.1);
  - generator and recognizer training images/s (the project's own loops, steady-state window), fp32 and bf16;
  - Ray Data generation with one GPU actor vs the same units in a plain loop on the GPU (target >= 0.9);
  - with --generator DIR (a trained generator stage, e.g. runs/stages/generator-*): class accuracy of its
    samples in fp32 and bf16 (the pixel classifier of the quality check), i.e. what bf16 costs in fidelity.
Sizes: "default" (16x16x1, the embedded digits' UNet), "webface-64" and "webface-112" (RGB, the UNet and the
IResNet-50 of configs/webface.yaml), batch 256. The last line is one JSON object with every figure.

    python benchmarks/gpu.py                      # on a CUDA machine
    python benchmarks/gpu.py --smoke              # tiny sizes on whatever device: checks the script, not speed
    python benchmarks/gpu.py --only quality --generator runs/stages/generator-XXXX --device cpu
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZES = {  # name: (image size, channels, generator overrides, recognizer overrides)
    "default": (16, 1, {}, {}),
    "webface-64": (
        64,
        3,
        {"block_out_channels": (128, 256, 256, 256), "layers_per_block": 2, "attention": True},
        {"widths": (64, 128, 256, 512), "blocks": (3, 4, 14, 3), "embedding_dim": 512},
    ),
    "webface-112": (
        112,
        3,
        {"block_out_channels": (128, 256, 256, 256), "layers_per_block": 2, "attention": True},
        {"widths": (64, 128, 256, 512), "blocks": (3, 4, 14, 3), "embedding_dim": 512},
    ),
}
SMOKE = {"default": (8, 1, {"block_out_channels": (16, 32)}, {"widths": (8, 16), "blocks": (1, 1)})}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_rate(fn, images: int, device: torch.device, repeats: int) -> float:
    """images/s of the fastest of `repeats` timed calls after one warm-up call."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return images / best


def sampler_figures(size, channels, gen_over, batch, steps, device, repeats) -> dict:
    from scoremix_ray.config import GeneratorConfig
    from scoremix_ray.core.diffusion.edm import build_denoiser
    from scoremix_ray.core.diffusion.sampler import heun_sample, karras_sigmas, mixed_denoiser

    torch.manual_seed(0)
    net = build_denoiser(GeneratorConfig(**gen_over), 100, size, channels).to(device).eval()
    noise = torch.randn(batch, channels, size, size).to(device)
    sig = karras_sigmas(steps, 0.002, 80, 7)
    one = (torch.zeros(batch, 1, dtype=torch.long), torch.ones(batch, 1))
    two = (torch.stack([torch.zeros(batch), torch.ones(batch)], 1).long(), torch.full((batch, 2), 0.5))
    out = {}
    with torch.inference_mode():
        for precision in ("fp32", "bf16"):
            plain = best_rate(
                lambda: heun_sample(mixed_denoiser(net, *one, precision=precision), noise, sig), batch, device, repeats
            )
            mixed = best_rate(
                lambda: heun_sample(mixed_denoiser(net, *two, precision=precision), noise, sig), batch, device, repeats
            )
            out[precision] = {"plain_images_per_s": plain, "mixed_images_per_s": mixed, "mix_cost_ratio": plain / mixed}
    return out


def training_figures(size, channels, gen_over, rec_over, batch, steps, device, tmp: Path) -> dict:
    """The project's own loops on random uint8 data; images/s of the last report window (start-up excluded)."""
    from scoremix_ray.config import GeneratorConfig, RecognizerConfig
    from scoremix_ray.core.data.batches import InMemory
    from scoremix_ray.core.diffusion.train import train_generator
    from scoremix_ray.core.recognition.train import train_recognizer

    rng = np.random.default_rng(0)
    n = batch * steps
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, 100, n)
    out = {}
    for precision in ("fp32", "bf16"):
        rates: list[float] = []
        gcfg = GeneratorConfig(
            **gen_over, batch_size=batch, steps=2 * steps, log_every=steps, checkpoint_every=10**9, precision=precision
        )
        train_generator(
            InMemory(images, labels),
            100,
            gcfg,
            0,
            tmp / f"gen-{size}-{precision}",
            device=str(device),
            report=lambda m, c: rates.append(m["images_per_s"]),
        )
        rcfg = RecognizerConfig(**rec_over, batch_size=batch, epochs=2, checkpoint_every=1, precision=precision)
        rec_rates: list[float] = []
        train_recognizer(
            InMemory(images, labels),
            100,
            rcfg,
            0,
            tmp / f"rec-{size}-{precision}",
            device=str(device),
            report=lambda m, c: rec_rates.append(m["images_per_s"]),
        )
        out[precision] = {"generator_train_images_per_s": rates[-1], "recognizer_train_images_per_s": rec_rates[-1]}
    return out


def ray_data_figures(size, channels, gen_over, batch, steps, device, units: int, tmp: Path) -> dict:
    """One actor holding the GPU (or the CPU) through Ray Data vs the same units rendered in a plain loop."""
    import ray

    from scoremix_ray.config import Config, GeneratorConfig
    from scoremix_ray.core.diffusion.edm import build_denoiser
    from scoremix_ray.core.generation import render_unit, write_plan
    from scoremix_ray.core.generation import units as cut
    from scoremix_ray.core.methods import PlanContext, RenderContext, get_method
    from scoremix_ray.core.selection.strategies import Selection
    from scoremix_ray.runtime.context import RunContext
    from scoremix_ray.runtime.generate import generate_shards

    torch.manual_seed(0)
    net = build_denoiser(GeneratorConfig(**gen_over), 100, size, channels).eval()
    net.save(tmp / "gen" / "final")
    gpu = device.type == "cuda"
    cfg = Config.model_validate(
        {
            "data": {"image_size": size, "channels": channels},
            "sampler": {"steps": steps},
            "generation": {
                "per_tuple": batch,
                "unit_size": batch,
                "num_actors": 1,
                "actor_cpus": 1,
                "actor_gpus": 1 if gpu else 0,
            },
            "ray": {"use_gpu": gpu},
        }
    )
    sel = Selection("bench", np.array([[i % 100, (i + 1) % 100] for i in range(units)]), np.zeros(units))
    method = get_method("scoremix")
    plan = method.plan(PlanContext(cfg, 100, sel))
    write_plan(tmp / "plain", plan)
    ctx = RenderContext(cfg, net.to(device))
    render_unit(ctx, method, plan, 0, 0, batch, tmp / "warm")  # warm-up (cuDNN autotune, allocator)
    sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        for u, lo, hi in cut(len(plan), batch):
            render_unit(ctx, method, plan, u, lo, hi, tmp / "plain")
    sync(device)
    plain = len(plan) / (time.perf_counter() - t)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    m = generate_shards(RunContext(), cfg, "scoremix", plan, tmp / "gen", tmp / "none.npz", tmp / "ray")
    return {
        "plain_loop_images_per_s": plain,
        "ray_data_images_per_s": m["images_per_s"],
        "ray_data_steady_images_per_s": m["steady_images_per_s"],
        "ratio_1actor": m["images_per_s"] / plain,
        "ratio_steady_1actor": m["steady_images_per_s"] / plain,
        "images": len(plan),
        "actor_devices": m["devices"],
    }


def quality_figures(gen_dir: Path, config: Path | None, device: torch.device, per_class: int) -> dict:
    """Class accuracy of the generator's samples, fp32 vs bf16 sampling, same seeds, the config's sampler."""
    from scoremix_ray.config import load_config
    from scoremix_ray.core.data import Split
    from scoremix_ray.core.diffusion.sampler import generate, sample_seed
    from scoremix_ray.core.diffusion.train import load_generator
    from scoremix_ray.core.evaluation.quality import class_accuracy, pixel_classifier
    from scoremix_ray.pipeline import data_stage_dir

    cfg = load_config(config)
    data = gen_dir.parent / data_stage_dir(cfg).name / "split.npz"  # the config's data stage, beside the generator
    if not data.is_file():
        raise SystemExit(f"no data stage of this config beside {gen_dir} (expected {data}); pass its --config")
    split = Split.load(data)
    net = load_generator(gen_dir, device=str(device))
    n = net.num_classes
    labels = torch.arange(n).repeat_interleave(per_class)
    seeds = [sample_seed(0, int(c), i % per_class) for i, c in enumerate(labels)]
    clf = pixel_classifier(split.train.images, split.train.labels, 0)
    out = {}
    for precision in ("fp32", "bf16"):
        scfg = cfg.sampler.model_copy(update={"precision": precision})
        images = generate(net, labels[:, None], torch.ones(len(labels), 1), seeds, scfg)
        out[precision] = class_accuracy(clf, images, labels.numpy())["class_accuracy"]
        out[f"{precision}_images"] = images
    diff = np.abs(out.pop("fp32_images").astype(int) - out.pop("bf16_images").astype(int))
    return {
        "class_accuracy_fp32": out["fp32"],
        "class_accuracy_bf16": out["bf16"],
        "samples": int(len(labels)),
        "mean_abs_pixel_diff": float(diff.mean()),
        "sampler_steps": cfg.sampler.steps,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8, help="Heun steps timed per sampler call")
    ap.add_argument("--train-steps", type=int, default=20, help="steps per training report window")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--only", default="sampler,train,raydata", help="sections: sampler,train,raydata,quality")
    ap.add_argument("--generator", type=Path, help="a trained generator stage, for the quality section")
    ap.add_argument("--config", type=Path, help="the config whose sampler the quality section uses")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs, not a figure")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    device = torch.device(a.device)
    sizes = SMOKE if a.smoke else {k: SIZES[k] for k in a.sizes.split(",")}
    batch, steps, train_steps = (8, 2, 2) if a.smoke else (a.batch, a.steps, a.train_steps)
    sections = set(a.only.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="scoremix-gpu-bench-"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device: {name}; batch {batch}; {steps} Heun steps per sampler call"
        + ("; SMOKE (not figures)" if a.smoke else "")
    )
    figures: dict = {"device": name, "batch": batch, "smoke": a.smoke, "sizes": {}}
    for key, (size, channels, gen_over, rec_over) in sizes.items():
        fig = figures["sizes"][key] = {"image": [size, size, channels]}
        if "sampler" in sections:
            fig["sampler"] = sampler_figures(size, channels, gen_over, batch, steps, device, a.repeats)
            for p, s in fig["sampler"].items():
                print(
                    f"{key:>12} {p}: sampler plain {s['plain_images_per_s']:9.1f} img/s, K=2 mixed "
                    f"{s['mixed_images_per_s']:9.1f} img/s, mixing cost ratio {s['mix_cost_ratio']:.2f} "
                    "(floor 2.0, target <= 2.1)"
                )
        if "train" in sections:
            fig["train"] = training_figures(size, channels, gen_over, rec_over, batch, train_steps, device, tmp)
            for p, s in fig["train"].items():
                print(
                    f"{key:>12} {p}: generator training {s['generator_train_images_per_s']:9.1f} img/s, "
                    f"recognizer training {s['recognizer_train_images_per_s']:9.1f} img/s"
                )
        if "raydata" in sections and key == "default":
            fig["raydata"] = ray_data_figures(size, channels, gen_over, batch, steps, device, 4 if a.smoke else 32, tmp)
            r = fig["raydata"]
            print(
                f"{key:>12} Ray Data 1 actor, once warm {r['ray_data_steady_images_per_s']:.1f} img/s vs plain loop "
                f"{r['plain_loop_images_per_s']:.1f} img/s: ratio {r['ratio_steady_1actor']:.2f} (target >= 0.9); "
                f"whole call with actor start {r['ray_data_images_per_s']:.1f} img/s (ratio {r['ratio_1actor']:.2f})"
            )
    if "quality" in sections:
        if a.generator is None:
            raise SystemExit("--only quality needs --generator DIR (a trained generator stage)")
        q = figures["quality"] = quality_figures(a.generator, a.config, device, a.per_class)
        print(
            f"class accuracy of {q['samples']} samples: fp32 {q['class_accuracy_fp32']:.3f}, bf16 "
            f"{q['class_accuracy_bf16']:.3f} (mean |pixel diff| {q['mean_abs_pixel_diff']:.2f} of 255)"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
