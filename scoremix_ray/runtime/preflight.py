"""Before a long job on a cluster: does every node see what the job will need? One Ray task per alive node
(pinned to it, no CPU held) checks what that node's workers would use, and each failure is one line naming the
node and the thing:

- `out_dir`: the driver writes a marker file there; every node must read it and write its own beside it (a
  folder on a disk of the head only passes the head, and fails every worker, which would write where no one reads);
- the tracking store: a SQLite store lives in `out_dir` (covered above); a server on the driver's loopback is
  reached by the driver's node only, through the writer actor (`tracking.on_loopback`), so the driver checks it;
  any other server must answer every node's `/health`;
- the token: a worker process that runs at all came up under the cluster's token (a node of a token cluster
  without it cannot join); a node whose workers run without token auth is said in a warning (it works, but
  anyone who reaches its ports can run code there), not counted as a failure;
- the project's Python: scoremix-ray, torch and Ray importable on every node at the driver's versions, and the
  Python version the same (a job's pickled functions and configs cross between them).

`scoremix-ray preflight` runs it alone; `run`, `sweep` and `study` run it first when they join a cluster of more
than one node (a second or two), and stop before any work when it fails.
"""

from __future__ import annotations

import logging
import os
import platform
import urllib.request
import uuid
from importlib.metadata import version
from pathlib import Path

from scoremix_ray.config import Config
from scoremix_ray.foundations.errors import ScoreMixError, first_line
from scoremix_ray.runtime.tracking import on_loopback, tracking_uri

log = logging.getLogger("scoremix_ray")


def environment() -> dict:
    """What a node's worker runs with: the versions that must match the driver's, and its token mode."""
    return {
        "python": platform.python_version(),
        "scoremix-ray": version("scoremix-ray"),
        "torch": version("torch"),
        "ray": version("ray"),
        "auth_mode": os.environ.get("RAY_AUTH_MODE", "unset"),
    }


def node_check(out_dir: str, marker: str, health: str | None) -> dict:
    """On one node: the environment, whether the driver's marker is visible in `out_dir` and this node can write
    beside it, and whether the tracking server's `health` URL answers (None: not this node's to check)."""
    out = {"env": environment(), "host": platform.node(), "problems": []}
    folder = Path(out_dir)
    if not (folder / marker).is_file():
        out["problems"].append(f"out_dir {out_dir} is not the driver's folder here (its marker {marker} is missing)")
    else:
        try:
            (folder / f"{marker}.{os.getpid()}").write_text("seen")
            (folder / f"{marker}.{os.getpid()}").unlink()
        except OSError as e:
            out["problems"].append(f"out_dir {out_dir} is not writable here: {first_line(e)}")
    if health:
        try:
            urllib.request.urlopen(health, timeout=10).read()
        except OSError as e:
            out["problems"].append(f"tracking server {health} does not answer here: {first_line(e)}")
    return out


def preflight(cfg: Config) -> list[str]:
    """Every alive node of the Ray cluster this process joined, checked (`node_check`): the failures, one line
    each ("node <ip> (<host>): ..."); an empty list when every node is ready. Logs one line per node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    out_dir = Path(cfg.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = f".preflight-{uuid.uuid4().hex[:12]}"
    (out_dir / marker).write_text("driver")
    uri = tracking_uri(cfg)
    remote_server = uri.startswith("http") and not on_loopback(uri)
    health = f"{uri.rstrip('/')}/health" if uri.startswith("http") else None
    failures = []
    try:
        if health and not remote_server:  # reached through the writer actor on this node only
            failures += [f"driver: {p}" for p in node_check(str(out_dir), marker, health)["problems"]]
        task = ray.remote(num_cpus=0, max_retries=0)(node_check)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        refs = [
            task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                str(out_dir), marker, health if remote_server else None
            )
            for n in nodes
        ]
        want = environment()
        for n, ref in zip(nodes, refs):
            where = f"node {n['NodeManagerAddress']}"
            try:
                found = ray.get(ref, timeout=120)
            except Exception as e:  # noqa: BLE001 -- a node whose worker cannot start is the finding itself
                failures.append(f"{where}: a worker could not run there: {first_line(e)}")
                continue
            where += f" ({found['host']})"
            failures += [f"{where}: {p}" for p in found["problems"]]
            env = found["env"]
            for k in ("python", "scoremix-ray", "torch", "ray"):
                if env[k] != want[k]:
                    failures.append(f"{where}: {k} {env[k]}, the driver has {want[k]} (install the same on every node)")
            if env["auth_mode"] != "token":  # it works, but anyone who reaches its ports can run code there
                log.warning("preflight: %s runs without token auth (start its Ray with RAY_AUTH_MODE=token)", where)
            log.info("preflight: %s: %s", where, "ready" if not found["problems"] else "not ready")
    finally:
        (out_dir / marker).unlink(missing_ok=True)
    return failures


def require_ready(cfg: Config) -> None:
    """`preflight` as a job's first step: a ScoreMixError listing the failures, before any work."""
    failures = preflight(cfg)
    if failures:
        raise ScoreMixError(f"preflight: {len(failures)} problem(s): " + "; ".join(failures))


def on_a_cluster(cfg: Config) -> None:
    """`require_ready` when this process's Ray has more than one alive node (a cluster; a local Ray needs none)."""
    import ray

    if ray.is_initialized() and sum(n["Alive"] for n in ray.nodes()) > 1:
        require_ready(cfg)
