"""Node losses on a real multi-node Ray cluster on this one machine (Ray's `cluster_utils`: a head without CPUs
and two 1-CPU worker nodes), run in a process of its own (a test session already holds a local Ray):

    python tests/cluster_faults.py OUT_DIR

1. The node running the generator's Train worker is removed mid-training: the worker group restarts on the
   other node and resumes from the newest checkpoint; then the same training uninterrupted, for its weights.
2. A node is removed while two generation actors render: a new actor pool renders the units left on the other
   node (the pool runs without Ray's actor restarts, runtime/generate.py `_pool`).
Prints one JSON line of what happened; tests/test_faults.py asserts on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path


def raylets(cluster) -> dict[int, object]:
    """{raylet pid: node} of the cluster's live nodes."""
    return {p.process.pid: n for n in cluster.list_all_nodes() for p in n.all_processes.get("raylet", [])}


def workers(cluster, title: str) -> list[tuple[int, object]]:
    """(pid, node) of this cluster's worker processes whose title holds `title` (a worker's parent is its node's
    raylet; the test session's own Ray has workers of the same names)."""
    nodes = raylets(cluster)
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()[1:]]
    return [(int(pid), nodes[int(ppid)]) for pid, ppid, args in rows if title in args and int(ppid) in nodes]


def wait_for(path: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not path.exists():
        raise TimeoutError(f"{path} did not appear within {seconds} s")


def main(out: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    fast_failure_detection = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": fast_failure_detection})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    from scoremix_ray.runtime.context import RUNTIME_ENV

    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False, runtime_env=RUNTIME_ENV)
    cluster.wait_for_nodes()
    report: dict = {"nodes": len(nodes) + 1}
    try:
        report["train"] = train_scenario(cluster, out / "train")
        cluster.add_node(num_cpus=1)  # a node comes back (the autoscaler replacing a lost one)
        cluster.wait_for_nodes()
        report["generate"] = generate_scenario(cluster, out / "train" / "gen", out / "generate")
        cluster.add_node(num_cpus=1)  # (nodes are added between scenarios: a raylet starting on a loaded
        cluster.wait_for_nodes()  # 2-core box can time out)
        report["sweep"] = sweep_scenario(cluster, out / "sweep")
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(report))


def train_scenario(cluster, out: Path) -> dict:
    import torch

    from scoremix_ray.config import load_config
    from scoremix_ray.core.diffusion.edm import EDMDenoiser
    from scoremix_ray.pipeline import data_stage
    from scoremix_ray.runtime.context import RunContext
    from scoremix_ray.runtime.train import fit

    sets = [
        f"out_dir={out}",
        "data.image_size=8",
        "data.per_class=30",
        "generator.block_out_channels=16,32",
        "generator.steps=160",
        "generator.batch_size=16",
        "generator.checkpoint_every=40",
        "generator.log_every=40",
        "ray.cpus_per_worker=1",
        "ray.checkpoints_kept=5",
        "ray.use_gpu=false",
    ]
    ctx = RunContext(gpus=0, executor="ray")
    cfg = ctx.devices(load_config(None, sets))
    _, data_dir = data_stage(cfg)
    d = out / "gen"
    done: list = []
    t0 = time.monotonic()
    job = threading.Thread(target=lambda: done.append(fit(ctx, cfg, "generator", data_dir / "split.npz", d)))
    job.start()
    wait_for(d / "checkpoints" / "step_0000040" / "state.pt")
    ((_, node),) = workers(cluster, "ray::RayTrainWorker")
    cluster.remove_node(node, allow_graceful=False)
    removed_at = time.time()
    job.join(timeout=300)
    later = [p.name for p in sorted((d / "checkpoints").iterdir()) if (p / "state.pt").stat().st_mtime > removed_at]
    plain = RunContext(gpus=0, executor="process")
    fit(plain, plain.devices(cfg), "generator", data_dir / "split.npz", out / "plain")
    a, b = EDMDenoiser.load(d / "final").state_dict(), EDMDenoiser.load(out / "plain" / "final").state_dict()
    return {
        "finished_step": done[0]["step"] if done else None,
        "written_after_removal": later,
        "weights_equal": a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a),
        "seconds": round(time.monotonic() - t0, 1),
        "alive_nodes": sum(n["Alive"] for n in __import__("ray").nodes()),
    }


def generate_scenario(cluster, gen_dir: Path, out: Path) -> dict:
    """Two actors (0.5 CPU each) render 18 units on two 1-CPU nodes; once a shard is written the node of one
    actor is removed: every unit is written once, and the rows are what one uninterrupted pass writes."""
    import numpy as np
    import pyarrow.parquet as pq

    from scoremix_ray.config import Config
    from scoremix_ray.core.methods import PlanContext, get_method
    from scoremix_ray.core.selection.strategies import Selection
    from scoremix_ray.runtime.context import RunContext
    from scoremix_ray.runtime.generate import generate_shards

    cfg = Config.model_validate(
        {
            "data": {"image_size": 8},
            "generator": {"block_out_channels": [16, 32]},
            "sampler": {"steps": 40},
            "generation": {"per_tuple": 24, "unit_size": 4, "num_actors": 2, "actor_cpus": 0.5},
            "ray": {"use_gpu": False},
        }
    )
    ctx = RunContext(gpus=0, executor="ray")
    cfg = ctx.devices(cfg)
    plan = get_method("scoremix").plan(
        PlanContext(cfg, 5, Selection("t", np.array([[0, 3], [1, 2], [2, 4]]), np.zeros(3)))
    )
    done: list = []
    t0 = time.monotonic()
    job = threading.Thread(
        target=lambda: done.append(generate_shards(ctx, cfg, "scoremix", plan, gen_dir, Path("none.npz"), out))
    )
    job.start()
    deadline = time.monotonic() + 120
    while not list((out / "shards").glob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    actors = workers(cluster, "MapWorker")
    before = len(list((out / "shards").glob("*.parquet")))
    cluster.remove_node(actors[0][1], allow_graceful=False)  # a new pool renders the rest on the node left
    job.join(timeout=300)
    elapsed = time.monotonic() - t0

    def rows(folder: Path) -> list[tuple]:
        tables = [
            pq.read_table(f, columns=["classes", "index", "image"]) for f in (folder / "shards").glob("*.parquet")
        ]
        return sorted(
            (tuple(c), i, img) for t in tables for c, i, img in zip(*(t.column(k).to_pylist() for k in t.column_names))
        )

    flat = rows(out)
    alone = RunContext(gpus=0, executor="process")
    one = alone.devices(cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"num_actors": 1})}))
    generate_shards(alone, one, "scoremix", plan, gen_dir, Path("none.npz"), out.with_name("uninterrupted"))
    return {
        "actors": len(actors),
        "shards_before_removal": before,
        "complete": bool(done and done[0]["complete"]),
        "plan_rows": len(plan),
        "rows": len(flat),
        "distinct_rows": len({r[:2] for r in flat}),
        "same_bytes_as_uninterrupted": flat == rows(out.with_name("uninterrupted")),
        "seconds": round(elapsed, 1),
    }


def sweep_scenario(cluster, out: Path) -> dict:
    """A 2-trial sweep on two 1-CPU nodes; once a trial is running, the node of a trial process is removed:
    that trial runs again on the node left (Tune's failure handling), the other is untouched, both finish."""
    from conftest import TINY_RUN

    from scoremix_ray import pipeline
    from scoremix_ray.config import load_config
    from scoremix_ray.runtime.context import RunContext
    from tuning.sweep import run_sweep

    base = load_config(None, [f"out_dir={out}", *TINY_RUN, f"ray.address={cluster.address}", "ray.use_gpu=false"])
    # the shared stages (data, generator, baseline) in this process first: the sweep finds them cached, and the
    # scenario's time goes to the trials (two Ray Train start-ups less)
    pipeline.shared(RunContext(executor="process"), base.model_copy(update={"out_dir": out.resolve()}))
    done: list = []
    t0 = time.monotonic()
    job = threading.Thread(target=lambda: done.append(run_sweep(base, ["random", "embedding-distant"], [0], name="n")))
    job.start()
    deadline = time.monotonic() + 180
    started = []
    while not started and time.monotonic() < deadline:
        started = [d.name for d in out.glob("scoremix-*-s0") if (d / "config.yaml").is_file()]
        time.sleep(0.05)
    trials = workers(cluster, "ImplicitFunc")
    cluster.remove_node(trials[0][1], allow_graceful=False)  # the trial runs again on the node left
    job.join(timeout=300)
    rows = done[0]["trials"] if done else []
    return {
        "started_before_removal": started,
        "trial_processes": len(trials),
        "finished": sorted(t["name"] for t in rows if not t["error"]),
        "errors": [t["error"].strip().splitlines()[-1] for t in rows if t["error"]],
        # Tune keeps an error.txt in the folder of a trial an attempt of which failed
        "retried": sorted(
            next(n for n in ("scoremix-random-s0", "scoremix-embedding-distant-s0") if n in e.parent.name)
            for e in (out / "ray_tune" / "n").glob("*/error.txt")
        ),
        "seconds": round(time.monotonic() - t0, 1),
    }


if __name__ == "__main__":
    main(Path(sys.argv[1]))
