"""Starting or joining Ray."""

from __future__ import annotations

import logging

from scoremix_ray.config import RayConfig

log = logging.getLogger("scoremix_ray")


def ensure_ray(cfg: RayConfig) -> None:
    """Join `ray.address` ("auto" inside `ray job submit`) or start a local Ray; no-op if already up."""
    import ray

    if ray.is_initialized():
        return
    ray.init(address=cfg.address, log_to_driver=True, configure_logging=False)
    log.info("ray: %s", ray.cluster_resources())
