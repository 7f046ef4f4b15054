"""Starting or joining Ray; running a function where the run computes (a 1-GPU task on GPU runs)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from scoremix_ray.config import Config

log = logging.getLogger("scoremix_ray")


def ensure_ray(address: str | None) -> None:
    """Join `address` ("auto" inside `ray job submit`) or start a local Ray (None); no-op if already up."""
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address, log_to_driver=True, configure_logging=False)
    log.info("ray: %s", ray.cluster_resources())


def cluster_gpus() -> float:
    """GPUs of the Ray cluster this process is part of; without Ray, those a local Ray would find here."""
    import ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get("GPU", 0.0))
    import torch

    return float(torch.cuda.device_count())


def on_device(ctx, cfg: Config, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args, device)` where the run computes (`cfg` with its devices resolved: `RunContext.devices`): in
    this process on the CPU, or, when the run uses GPUs, as a Ray task holding one GPU (the driver of `ray job
    submit` often sits on a CPU head node, and a Tune trial holds no GPU of its own). `fn` must be a
    module-level function (Ray ships it by reference)."""
    if not resolved(cfg).ray.use_gpu:
        return fn(*args, "cpu")
    import ray

    ctx.ray()
    return ray.get(ray.remote(num_gpus=1, num_cpus=1)(fn).remote(*args, "cuda"))


def resolved(cfg: Config) -> Config:
    """`cfg` itself, once its devices are resolved: the Ray layer must never read 'auto' as a GPU."""
    if "auto" in (cfg.ray.use_gpu, cfg.generation.actor_gpus):
        raise ValueError("devices not resolved: pass the config through RunContext.devices where the command starts")
    return cfg
