"""The run context: what a command decides once, where it starts, and hands to every stage.

    ctx, cfg = context.start(cfg, ray=True)        # Ray joined or started, GPUs counted, devices resolved
    with tracking.writer(cfg) as tracker:
        pipeline.run_tracked(ctx.reporting_to(tracker), cfg)

It holds the answers that used to hide in module globals: the Ray session (its address; started once, by
`start` or by the first stage that needs Ray), the devices ('auto' resolved against the cluster's GPUs when the
command started), the executor (whether 1-worker CPU work runs in this process or on Ray Train / Ray Data /
a GPU task) and the MLflow run that the curves of the stages trained under it go to, as a plain id. It is a
frozen, picklable value: a sweep hands it to its trials, a trial derives its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from scoremix_ray.config import Config
from scoremix_ray.foundations.errors import ScoreMixError, first_line
from scoremix_ray.foundations.interrupts import sigterm_interrupts
from scoremix_ray.runtime.mlflow_store import Tracker

log = logging.getLogger("scoremix_ray")

# "ray": training on TorchTrainer workers, generation on a Ray Data actor pool, evaluation on a 1-GPU task when
# the run uses GPUs. "process": 1-worker CPU training and 1-actor CPU generation in this process, without a
# TorchTrainer or an actor pool of their own (a sweep trial that holds their CPUs: their start-up was most of a
# small trial's cost); bigger or GPU work still goes to Ray.
Executor = Literal["ray", "process"]


@dataclass(frozen=True)
class RunContext:
    """Where a command's work runs and where it logs, decided once where the command starts (`start`)."""

    gpus: float = 0.0  # the cluster's GPUs when the command started: what `ray.use_gpu: auto` resolves to
    address: str | None = None  # the Ray cluster to join (`ray.address`); None: a local Ray, started when needed
    executor: Executor = "ray"
    tracker: Tracker | None = None  # where MLflow writes go; None: nothing is tracked
    run_id: str | None = None  # the open MLflow run the curves go to (or its future: `Tracker.submit`)
    prefix: str = ""  # before the curves' metric names (a sweep's shared stages: one set per fold and seed)
    connect_timeout_s: float = 20.0  # how long joining `address` may take (`connect_timeout_s`)

    def devices(self, cfg: Config) -> Config:
        """`ray.use_gpu: auto` -> whether the cluster has GPUs; `generation.actor_gpus: auto` -> 1 GPU per actor
        when the run uses GPUs, else 0. Explicit values are kept. Devices are in no stage's cache key."""
        use_gpu = self.gpus > 0 if cfg.ray.use_gpu == "auto" else cfg.ray.use_gpu
        actor_gpus = cfg.generation.actor_gpus
        if actor_gpus == "auto":
            actor_gpus = 1.0 if use_gpu else 0.0
        if (use_gpu, actor_gpus) == (cfg.ray.use_gpu, cfg.generation.actor_gpus):
            return cfg
        ray = cfg.ray.model_copy(update={"use_gpu": use_gpu})
        return cfg.model_copy(
            update={"ray": ray, "generation": cfg.generation.model_copy(update={"actor_gpus": actor_gpus})}
        )

    def reporting_to(self, tracker: Tracker | None = None, run_id: str | None = None, prefix: str = "") -> RunContext:
        """The same context, its stages' curves sent to `run_id` through `tracker` (kept when not given)."""
        return replace(self, tracker=tracker or self.tracker, run_id=run_id, prefix=prefix)

    def ray(self) -> None:
        """Join or start the context's Ray (a no-op once it is up): the executors call it before Ray work."""
        ensure_ray(self.address, self.connect_timeout_s)

    def in_process(self, workers: int, gpus: float) -> bool:
        """Whether work for `workers` Train workers or generation actors (`gpus`: the GPUs they use) runs in
        this process: under the "process" executor, 1 of them on the CPU."""
        return self.executor == "process" and workers == 1 and not gpus

    def on_device(self, cfg: Config, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args, device)` where the run computes: in this process on the CPU, or, when the run uses GPUs, as a
        Ray task holding one GPU (the driver of `ray job submit` often sits on a CPU head node, and a Tune trial
        holds no GPU of its own). `fn` must be a module-level function (Ray ships it by reference)."""
        if not resolved(cfg).ray.use_gpu:
            return fn(*args, "cpu")
        import ray

        self.ray()
        # a task whose node dies is run again elsewhere (it writes nothing but its result)
        task = ray.remote(num_gpus=1, num_cpus=1, max_retries=cfg.ray.max_failures)(fn)
        return ray.get(task.remote(*args, "cuda"))

    @property
    def curve(self) -> dict | None:
        """Where a Train worker sends its stage's curve: {"uri", "actor", "run_id", "prefix"}; None: nowhere."""
        if self.tracker is None or self.run_id is None:
            return None
        return {"uri": self.tracker.uri, "actor": self.tracker.actor, "run_id": self.run_id, "prefix": self.prefix}


def start(cfg: Config, ray: bool = False, executor: Executor = "ray") -> tuple[RunContext, Config]:
    """A command's context and its config with the devices resolved. Ray is joined now when `ray.address` names
    a cluster (its GPUs decide 'auto') or when `ray` says the command needs it at once (a tracked job's MLflow
    writer, a sweep); otherwise a local Ray starts with the first work that needs it (a cached stage needs
    none), and 'auto' counts this machine's GPUs, the ones that Ray would find."""
    if ray or cfg.ray.address:
        ensure_ray(cfg.ray.address, cfg.connect_timeout_s)
    ctx = RunContext(
        gpus=cluster_gpus(), address=cfg.ray.address, executor=executor, connect_timeout_s=cfg.connect_timeout_s
    )
    return ctx, ctx.devices(cfg)


# Ray settings of every worker this job starts: passed to `ray.init` (a test's Ray passes the same), never
# written to os.environ. RAY_CHDIR_TO_TRIAL_DIR=0: Tune would run each trial in a folder of its own; kept in the
# job's working folder, a relative path a trial reads (data.path, a benchmark's, recognizer.pretrained) means
# what it means to the driver. RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0: Ray Train's watcher actor only tells a
# training function that asks (`ray.train.get_preemption_info`; ours resume from step checkpoints instead), and
# it is created with its workers' handles as object-store arguments and max_restarts=-1, which core_worker
# reports as an ERROR at every training start (ray-project/ray#53727).
RUNTIME_ENV = {
    "worker_process_setup_hook": "scoremix_ray.foundations.progress.worker_setup",  # a light import
    "env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"},
}


def ensure_ray(address: str | None, timeout_s: float = 20.0) -> None:
    """Join `address` ("auto" inside `ray job submit`) or start a local Ray (None); no-op if already up. A
    cluster that does not answer within `timeout_s` is one line naming it (Ray itself retries for minutes)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        reach_ray(address, timeout_s)
    try:
        ray.init(address=address, log_to_driver=True, configure_logging=False, runtime_env=RUNTIME_ENV)
    except ConnectionError as e:  # "auto" with no cluster running here
        raise ScoreMixError(f"cannot join the Ray cluster at ray.address={address}: {first_line(e)}") from None
    sigterm_interrupts()  # ray.init's handler exits at once (and its core worker's dumps stacks)
    log.info("ray: %s", ray.cluster_resources())


def reach_ray(address: str, timeout_s: float) -> None:
    """The GCS port of `address` (host:port, ray://host:port, or "auto" through RAY_ADDRESS and the address
    file of the cluster started on this machine) accepts a connection within `timeout_s`."""
    import socket
    import tempfile
    from pathlib import Path

    target = address.removeprefix("ray://")
    if target == "auto":
        target = os.environ.get("RAY_ADDRESS", "")
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if not target and current.is_file():
            target = current.read_text().strip()
        if not target or target == "auto":
            return  # Ray says in one line that no cluster runs here
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ScoreMixError(f"ray.address={address}: expected host:port (or auto, or ray://host:port)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ScoreMixError(
            f"cannot reach the Ray cluster at {target} ({e.strerror or e}, waited up to {timeout_s:g} s): check "
            f"that it is up (`ray status` on its head node) and ray.address (the head's GCS port, 6379 by "
            f"default); the limit is connect_timeout_s"
        ) from None


def cluster_gpus() -> float:
    """GPUs of the Ray cluster this process is part of; without Ray, those a local Ray would find here."""
    import ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get("GPU", 0.0))
    import torch

    return float(torch.cuda.device_count())


def resolved(cfg: Config) -> Config:
    """`cfg` itself, once its devices are resolved: the Ray layer must never read 'auto' as a GPU."""
    if "auto" in (cfg.ray.use_gpu, cfg.generation.actor_gpus):
        raise ValueError("devices not resolved: pass the config through RunContext.devices where the command starts")
    return cfg
