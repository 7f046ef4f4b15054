"""Failures Ray recovers from by itself. A lost Train worker restarts and resumes from its last checkpoint to the
same weights, a lost generation actor's units are rendered once, a lost trial runs again: the 3-node cluster test
(tests/cluster_faults.py, nodes removed while they work). With no restarts left, a SIGKILLed worker is one line."""

import os
import signal
import subprocess
import threading
import time

from scoremix_ray.config import load_config
from scoremix_ray.pipeline import data_stage
from scoremix_ray.runtime.context import RunContext
from scoremix_ray.runtime.train import fit

GEN = [
    "data.image_size=8",
    "data.per_class=30",
    "generator.block_out_channels=16,32",
    "generator.steps=160",
    "generator.batch_size=16",
    "generator.checkpoint_every=40",
    "generator.log_every=40",
    "ray.cpus_per_worker=1",
    "ray.checkpoints_kept=5",  # all four kept: their times show which were written after the kill
]


def _train_workers(title: str = "ray::RayTrainWorker") -> list[int]:
    """Pids of this test session's live Ray workers whose title starts with `title` (the actor class; Train
    workers by default), this process among their ancestors (it started the session's Ray; another Ray on the
    machine has workers of that name)."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()[1:]]
    parent = {int(pid): int(ppid) for pid, ppid, *_ in rows}

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 1)
            if pid == os.getpid():
                return True
        return False

    return [int(pid) for pid, _, *args in rows if args and args[0].startswith(title) and ours(int(pid))]


def test_with_no_restarts_left_a_lost_worker_is_one_line_and_the_checkpoints_stay(ray_session, tmp_path):

    from scoremix_ray.foundations.errors import ScoreMixError

    cfg = load_config(None, [f"out_dir={tmp_path}", *GEN, "ray.max_failures=0"])
    ctx = RunContext(gpus=0, executor="ray")
    cfg = ctx.devices(cfg)
    _, data_dir = data_stage(cfg)
    d = tmp_path / "gen"
    errors: list = []

    def train():
        try:
            fit(ctx, cfg, "generator", data_dir / "split.npz", d)
        except ScoreMixError as e:
            errors.append(e)

    job = threading.Thread(target=train)
    job.start()
    first = d / "checkpoints" / "step_0000040" / "state.pt"
    deadline = time.monotonic() + 120
    while not first.is_file() and time.monotonic() < deadline and job.is_alive():
        time.sleep(0.05)
    os.kill(_train_workers()[0], signal.SIGKILL)
    job.join(timeout=120)
    assert len(errors) == 1, "the lost worker did not end the training"
    line = str(errors[0])
    assert "\n" not in line and line.startswith("generator: training failed after 0 restart(s) (ray.max_failures): ")
    assert f"checkpoints are kept in {d / 'checkpoints'}" in line and first.is_file()


def test_with_no_restarts_left_a_lost_generation_actor_is_one_line_and_its_units_stay(
    ray_session, tiny_generator, tmp_path
):
    """The generation pool runs without Ray's actor restarts (runtime/generate.py `_pool`: ray-project/ray#53727);
    with ray.max_failures=0 a SIGKILLed actor ends the stage in one line that counts what is missing, and what
    was written stays for the next run to resume from."""
    import numpy as np

    from scoremix_ray.config import Config
    from scoremix_ray.core.generation import missing_units
    from scoremix_ray.core.methods import PlanContext, get_method
    from scoremix_ray.core.selection.strategies import Selection
    from scoremix_ray.foundations.errors import ScoreMixError
    from scoremix_ray.runtime.generate import generate_shards

    cfg = Config.model_validate(
        {
            "data": {"image_size": 8},
            "sampler": {"steps": 20},
            "generation": {"per_tuple": 40, "unit_size": 4, "num_actors": 1},
            "ray": {"max_failures": 0},
        }
    )
    ctx = RunContext(gpus=0, executor="ray")
    cfg = ctx.devices(cfg)
    plan = get_method("scoremix").plan(
        PlanContext(cfg, 5, Selection("t", np.array([[0, 3], [1, 2], [2, 4]]), np.zeros(3)))
    )
    out, errors = tmp_path / "gen", []

    def generate():
        try:
            generate_shards(ctx, cfg, "scoremix", plan, tiny_generator[3], tmp_path / "none.npz", out)
        except ScoreMixError as e:
            errors.append(e)

    job = threading.Thread(target=generate)
    job.start()
    deadline = time.monotonic() + 120
    while not list((out / "shards").glob("unit-*.parquet")) and time.monotonic() < deadline and job.is_alive():
        time.sleep(0.05)
    os.kill(_train_workers("ray::MapWorker")[0], signal.SIGKILL)
    job.join(timeout=120)
    assert len(errors) == 1, "the lost actor did not end the stage"
    line, left = str(errors[0]), missing_units(out, len(plan), 4)
    assert "\n" not in line and line.startswith(
        f"generate: {len(left)} unit(s) still missing after 0 restart(s) of the actor pool (ray.max_failures): "
    )
    assert 0 < len(left) < 30 and list((out / "shards").glob("unit-*.parquet"))


def test_nodes_lost_on_a_three_node_cluster(tmp_path):
    """tests/cluster_faults.py in a process of its own (this session already holds a local Ray): the Train
    worker's node, a generation actor's node and a sweep trial's node each removed while they work."""
    import json
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    r = subprocess.run(
        [sys.executable, str(here / "cluster_faults.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=420,
        cwd=here.parent,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    train = report["train"]
    assert train["finished_step"] == 160 and train["weights_equal"] and train["alive_nodes"] == 2
    assert train["written_after_removal"] == ["step_0000080", "step_0000120", "step_0000160"]  # resumed from 40
    gen = report["generate"]
    assert gen["complete"] and gen["rows"] == gen["distinct_rows"] == gen["plan_rows"] == 72
    assert gen["same_bytes_as_uninterrupted"] and gen["shards_before_removal"] < 18
    sweep = report["sweep"]
    assert sweep["finished"] == ["scoremix-embedding-distant-s0", "scoremix-random-s0"] and not sweep["errors"]
    assert len(sweep["retried"]) == 1 and sweep["started_before_removal"]  # the lost one again, the other once
