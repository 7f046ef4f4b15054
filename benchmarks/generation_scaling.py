"""Distributed generation (stage 5): Ray Data actor pool vs the same sampler in a plain loop.

Prints, measured in one run:
  - images/s of 1 actor vs the plain loop in this process (target ratio >= 0.9)
  - scaling from 1 to 2 actors on this box (2 actors share the cores: expect ~1.0 on 2 CPUs, ~2 with 2 GPUs)
  - the driver's peak memory at N tuples vs 10 N tuples (target: flat; the images go straight to disk)
  - once the actor is warm (units after its first, on the 10 N run): `ratio_steady_1actor` (target >= 0.9)
Ends with one JSON line of these figures.
Uses an untrained generator of the default architecture: the cost does not depend on the weights.

    python benchmarks/generation_scaling.py [--tuples 8] [--per-tuple 32] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
from pathlib import Path
import numpy as np, ray
from scoremix_ray.config import Config
from scoremix_ray.runtime.context import start
from scoremix_ray.runtime.generate import generate_shards
from scoremix_ray.core.methods import PlanContext, get_method
from scoremix_ray.core.selection.strategies import Selection
tuples, per_tuple, steps, actors, gen_dir, out = sys.argv[1:7]
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
cfg = Config.model_validate({"sampler": {"steps": int(steps)},
                             "generation": {"per_tuple": int(per_tuple), "num_actors": int(actors)}})
rng = np.random.default_rng(0)
sel = Selection("bench", np.sort(np.stack([rng.choice(5, 2, replace=False) for _ in range(int(tuples))]), 1),
                np.zeros(int(tuples)))
plan = get_method("scoremix").plan(PlanContext(cfg, 5, sel))
m = generate_shards(*start(cfg), "scoremix", plan, Path(gen_dir), Path("none.npz"), Path(out))
print(json.dumps({"images_per_s": m["images_per_s"], "steady_images_per_s": m["steady_images_per_s"],
                  "seconds": m["seconds"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def ray_run(tuples: int, per_tuple: int, steps: int, actors: int, gen_dir: Path, tmp: Path) -> dict:
    out = tmp / f"gen-{tuples}-{actors}-{time.time_ns()}"
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(tuples), str(per_tuple), str(steps), str(actors), str(gen_dir), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tuples", type=int, default=8)
    ap.add_argument("--per-tuple", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    a = ap.parse_args()

    import numpy as np
    import torch

    from scoremix_ray.config import Config, GeneratorConfig
    from scoremix_ray.core.diffusion.edm import build_denoiser
    from scoremix_ray.core.generation import render_unit, units, write_plan
    from scoremix_ray.core.methods import PlanContext, RenderContext, get_method
    from scoremix_ray.core.selection.strategies import Selection

    tmp = Path(tempfile.mkdtemp(prefix="scoremix-bench-"))
    torch.manual_seed(0)
    net = build_denoiser(GeneratorConfig(), 5, 16, 1).eval()
    net.save(tmp / "gen" / "final")
    # the plain loop: same plan, same units, one process, all cores
    torch.set_num_threads(2)
    cfg = Config.model_validate({"sampler": {"steps": a.steps}, "generation": {"per_tuple": a.per_tuple}})
    rng = np.random.default_rng(0)
    sel = Selection(
        "bench", np.sort(np.stack([rng.choice(5, 2, replace=False) for _ in range(a.tuples)]), 1), np.zeros(a.tuples)
    )
    method = get_method("scoremix")
    plan = method.plan(PlanContext(cfg, 5, sel))
    write_plan(tmp / "plain", plan)
    ctx = RenderContext(cfg, net)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for u, lo, hi in units(len(plan), cfg.generation.unit_size):
            render_unit(ctx, method, plan, u, lo, hi, tmp / "plain")
    plain = len(plan) / (time.perf_counter() - t0)

    one = ray_run(a.tuples, a.per_tuple, a.steps, 1, tmp / "gen", tmp)
    two = ray_run(a.tuples, a.per_tuple, a.steps, 2, tmp / "gen", tmp)
    big = ray_run(10 * a.tuples, a.per_tuple, a.steps, 1, tmp / "gen", tmp)
    n = len(plan)
    print(f"16x16, {a.tuples} tuples x {a.per_tuple} images = {n} images, {a.steps} Heun steps, K=2")
    print(f"plain loop (one process, 2 threads): {plain:8.1f} images/s")
    print(
        f"Ray Data, 1 actor:                   {one['images_per_s']:8.1f} images/s   "
        f"ratio {one['images_per_s'] / plain:.2f} (target >= 0.9)"
    )
    print(
        f"Ray Data, 2 actors:                  {two['images_per_s']:8.1f} images/s   "
        f"scaling 1->2 {two['images_per_s'] / one['images_per_s']:.2f}"
    )
    print(
        f"Ray Data, 1 actor, {10 * a.tuples} tuples: {big['images_per_s']:8.1f} images/s   "
        f"ratio {big['images_per_s'] / plain:.2f} "
        f"(start-up amortised)"
    )
    print(
        f"driver peak RSS: {one['peak_rss_mb']:.0f} MB at {a.tuples} tuples, {big['peak_rss_mb']:.0f} MB at "
        f"{10 * a.tuples} tuples   ratio {big['peak_rss_mb'] / one['peak_rss_mb']:.2f} (target: flat, ~1.0)"
    )
    print(
        f"Ray Data, 1 actor, once warm:        {big['steady_images_per_s']:8.1f} images/s   ratio "
        f"{big['steady_images_per_s'] / plain:.2f} (target >= 0.9; units after the first, {10 * a.tuples} tuples)"
    )
    print("(Ray Data's rate includes actor start-up and the generator load inside the timed call)")
    print(
        json.dumps(
            {
                "plain_images_per_s": round(plain, 2),
                "ratio_1actor": round(one["images_per_s"] / plain, 3),
                "ratio_steady_1actor": round(big["steady_images_per_s"] / plain, 3),
                "ratio_1actor_10x": round(big["images_per_s"] / plain, 3),
                "scaling_1_to_2": round(two["images_per_s"] / one["images_per_s"], 3),
                "driver_rss_ratio_10x": round(big["peak_rss_mb"] / one["peak_rss_mb"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
