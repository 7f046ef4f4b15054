"""Generator training throughput: Ray Train (TorchTrainer) vs the same loop in a plain process.

Prints steady-state images/s of each (the loop's last report window, start-up excluded), their ratio, and
the wall times with start-up. Same model, data, batch and threads in both.

    python benchmarks/train_throughput.py [--steps 150] [--workers 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from scoremix_ray.config import load_config
    from scoremix_ray.core.data.batches import InMemory
    from scoremix_ray.core.diffusion.train import train_generator
    from scoremix_ray.pipeline import data_stage
    from scoremix_ray.runtime.context import start
    from scoremix_ray.runtime.train import fit

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cfg = load_config(
        None,
        [
            f"out_dir={tmp}",
            f"generator.steps={a.steps}",
            "generator.log_every=50",
            f"generator.checkpoint_every={a.steps}",
            f"ray.num_workers={a.workers}",
            f"ray.cpus_per_worker={a.threads / a.workers}",
        ],
    )
    split, data_dir = data_stage(cfg)

    torch.set_num_threads(a.threads)
    rates: list[float] = []
    t = time.perf_counter()
    train_generator(
        InMemory(split.train.images, split.train.labels),
        split.train.num_classes,
        cfg.generator,
        0,
        tmp / "plain",
        report=lambda m, c: rates.append(m["images_per_s"]),
    )
    wall_plain = time.perf_counter() - t
    plain = rates[-1]  # the last report window: steady state, as for Ray below

    import ray

    ray.init(num_cpus=a.threads, include_dashboard=False, log_to_driver=False)
    t = time.perf_counter()
    ctx, cfg = start(cfg)
    rayrate = fit(ctx, cfg, "generator", data_dir / "split.npz", tmp / "ray")["images_per_s"]  # last report window
    wall_ray = time.perf_counter() - t
    ray.shutdown()
    print(f"{a.steps} steps, batch {cfg.generator.batch_size}, 16x16, {a.threads} threads; Ray: {a.workers} worker(s)")
    print(f"plain process : {plain:7.1f} images/s   wall {wall_plain:6.1f} s")
    print(f"Ray Train     : {rayrate:7.1f} images/s   wall {wall_ray:6.1f} s (start-up included)")
    print(f"ratio Ray/plain: throughput {rayrate / plain:.2f}, wall time {wall_ray / wall_plain:.2f}")


if __name__ == "__main__":
    main()
