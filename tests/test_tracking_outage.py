"""The tracking server down for 60 s in the middle of a sweep, then back (`pytest -m e2e`, its own step of
`.ci/run`: ~3.5 min, most of it the outage). Every trial finishes, and every metric and curve point is in the
server exactly once: the writes wait out the outage (MLflow's client retries a request for ~4 min,
MLFLOW_HTTP_REQUEST_MAX_RETRIES) and land when the server is back."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_RUN
from mlflow_ui import free_port, start_server, stop_server

from scoremix_ray.foundations.checkpoints import read_history
from scoremix_ray.runtime.tracking import flat_metrics

OUTAGE_S = 60


def _runs(mc, where: str) -> list:
    """The runs of the sweep's experiment (the only one besides MLflow's Default) that match `where`."""
    ids = [e.experiment_id for e in mc.search_experiments() if e.name != "Default"]
    return mc.search_runs(ids, where) if ids else []


@pytest.mark.e2e
def test_a_sweep_outlives_its_tracking_server_down_for_a_minute(tmp_path):
    from mlflow.tracking import MlflowClient

    port, store, out = free_port(), tmp_path / "server.db", tmp_path / "out"
    uri = f"http://127.0.0.1:{port}"
    server = start_server(store, port, tmp_path / "artifacts")
    sets = [a for s in [*TINY_RUN, "recognizer.epochs=6"] for a in ("--set", s)]
    sweep = subprocess.Popen(
        [sys.executable, "-m", "scoremix_ray", "sweep", "--strategies", "random,embedding-distant,embedding-close"]
        + ["--seeds", "0", "--name", "outage", "--out", str(out), "--tracking-uri", uri, *sets],
        stdout=(tmp_path / "sweep.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        mc = MlflowClient(uri)
        deadline = time.monotonic() + 400
        while not [r for r in _runs(mc, "attributes.status = 'RUNNING'") if r.info.run_name != "outage"]:
            assert sweep.poll() is None and time.monotonic() < deadline, (tmp_path / "sweep.log").read_text()[-3000:]
            time.sleep(0.5)
        stop_server(server)  # a trial's run is open: the server goes down in the middle of the sweep
        down_at = time.time()
        time.sleep(OUTAGE_S)
        server = start_server(store, port, tmp_path / "artifacts")
        back_at = time.time()
        assert sweep.wait(600) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if sweep.poll() is None:
            sweep.kill()
        stop_server(server)
    server = start_server(store, port, tmp_path / "artifacts")  # read back what landed
    try:
        mc = MlflowClient(uri)
        summary = json.loads((out / "outage.json").read_text())
        trials = {r.info.run_name: r for r in _runs(mc, f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'")}
        assert sorted(trials) == sorted(t["name"] for t in summary["trials"]) and len(trials) == 3
        # the outage fell inside the sweep's trials, not before or after them
        assert min(r.info.start_time for r in trials.values()) / 1000 < down_at
        assert max(r.info.end_time for r in trials.values()) / 1000 > back_at
        for name, run in trials.items():
            assert run.info.status == "FINISHED", name
            run_dir = out / name
            want = flat_metrics(json.loads((run_dir / "metrics.json").read_text()))
            assert {k: run.data.metrics[k] for k in want} == pytest.approx(want)  # none lost
            stages = json.loads((run_dir / "stages.json").read_text())
            for stage, key in (("augmented", "augmented"), ("baseline", "recognizer"), ("generator", "generator")):
                steps = [row["step"] for row in read_history(Path(stages[key]["dir"]))]
                logged = [m.step for m in mc.get_metric_history(run.info.run_id, f"train.{stage}.loss")]
                assert sorted(logged) == sorted(steps), (name, stage)  # each point once: none lost, none doubled
    finally:
        stop_server(server)
