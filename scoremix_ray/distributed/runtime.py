"""Starting or joining Ray; deciding where work runs (GPUs when the cluster has them, unless told otherwise)."""

from __future__ import annotations

import logging
from typing import Any, Callable

from scoremix_ray.config import Config, RayConfig

log = logging.getLogger("scoremix_ray")


def ensure_ray(cfg: RayConfig) -> None:
    """Join `ray.address` ("auto" inside `ray job submit`) or start a local Ray; no-op if already up."""
    import ray

    if ray.is_initialized():
        return
    ray.init(address=cfg.address, log_to_driver=True, configure_logging=False)
    log.info("ray: %s", ray.cluster_resources())


def cluster_gpus() -> float:
    """GPUs of the Ray cluster this process is part of; without Ray, those a local Ray would find here."""
    import ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get("GPU", 0.0))
    import torch

    return float(torch.cuda.device_count())


def resolve_devices(cfg: Config) -> Config:
    """`ray.use_gpu: auto` -> whether the cluster has GPUs; `generation.actor_gpus: auto` -> 1 GPU per actor when
    the run uses GPUs, else 0. Explicit values are kept. Devices are in no stage's cache key."""
    use_gpu = cfg.ray.use_gpu
    if use_gpu == "auto":
        use_gpu = cluster_gpus() > 0
    actor_gpus = cfg.generation.actor_gpus
    if actor_gpus == "auto":
        actor_gpus = 1.0 if use_gpu else 0.0
    if (use_gpu, actor_gpus) == (cfg.ray.use_gpu, cfg.generation.actor_gpus):
        return cfg
    return cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"use_gpu": use_gpu}),
                                  "generation": cfg.generation.model_copy(update={"actor_gpus": actor_gpus})})  # fmt: skip


def on_device(cfg: Config, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args, device)` where the run computes: in this process on the CPU, or, when the run uses GPUs, as a
    Ray task holding one GPU (the driver of `ray job submit` often sits on a CPU head node, and a Tune trial
    holds no GPU of its own). `fn` must be a module-level function (Ray ships it by reference)."""
    cfg = resolve_devices(cfg)
    if not cfg.ray.use_gpu:
        return fn(*args, "cpu")
    import ray

    ensure_ray(cfg.ray)
    return ray.get(ray.remote(num_gpus=1, num_cpus=1)(fn).remote(*args, "cuda"))


# Set by a sweep trial that holds the resources of its own work (`tuning.sweep`): a 1-worker training and a
# 1-actor generation then run in the trial's process, without a TorchTrainer or an actor pool of their own
# (their start-up was most of a small trial's cost); bigger work still goes to Ray Train and Ray Data.
_INLINE = False


def run_inline(on: bool) -> None:
    global _INLINE
    _INLINE = on


def inline_training(cfg: Config) -> bool:
    """Whether this process trains `cfg` itself: in an inline trial, 1 worker, on the CPU."""
    cfg = resolve_devices(cfg)
    return _INLINE and cfg.ray.num_workers == 1 and not cfg.ray.use_gpu


def inline_generation(cfg: Config) -> bool:
    cfg = resolve_devices(cfg)
    return _INLINE and cfg.generation.num_actors == 1 and not cfg.generation.actor_gpus
