"""The orchestrator: a Tune sweep on 2 CPUs with MLflow child runs, a failing trial, the report, a shared MLflow
server over HTTP, `ray job submit` against a local cluster, cluster.yaml."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import TINY_RUN

from scoremix_ray.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def test_cluster_yaml_validates_and_listens_on_loopback():
    from ray.autoscaler._private.util import prepare_config, validate_config

    text = (ROOT / "cluster.yaml").read_text()
    cfg = yaml.safe_load(text)
    validate_config(prepare_config(cfg))  # Ray's own schema check (no cloud access needed)
    assert cfg["provider"]["type"] == "aws" and "gpu_worker" in cfg["available_node_types"]
    spot = cfg["available_node_types"]["gpu_spot_worker"]["node_config"]
    assert spot["InstanceMarketOptions"]["MarketType"] == "spot" and "ray.max_failures" in text
    assert any("pip install" in c and "scoremix-ray" in c for c in cfg["setup_commands"])
    assert any("/mnt/shared" in c for c in cfg["setup_commands"])  # shared storage on every node
    head = " ".join(cfg["head_start_ray_commands"] + cfg["head_setup_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--host 127.0.0.1" in head and "0.0.0.0" not in text
    assert "aws_secret_access_key" not in text.lower() and "AKIA" not in text
    bad = {**cfg, "available_node_types": {**cfg["available_node_types"], "gpu_worker": {"resources": {}}}}
    with pytest.raises(Exception):  # noqa: B017 -- Ray raises its schema validator's own error type
        validate_config(prepare_config(bad))


def test_the_onprem_cluster_yaml_validates_with_token_auth_and_the_venv_on_path():
    """cluster-onprem.yaml (its whole path runs in tests/cluster_path.py): Ray's schema, the token copied to every
    node and required (RAY_AUTH_MODE=token at every `ray start`), the venv first on PATH where Ray starts (a job's
    `scoremix-ray`), the MLflow server and dashboard on the head's loopback."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    for name in ("cluster-onprem.yaml", "cluster.yaml"):
        text = (ROOT / name).read_text()
        cfg = yaml.safe_load(text)
        validate_config(prepare_config(cfg))
        assert any("auth_token" in k for k in cfg["file_mounts"]), name
        # the venv on the login PATH, whole (an unquoted " #" in YAML would end the command there)
        assert any(c.endswith("# scoremix venv' >> ~/.bashrc") for c in cfg["setup_commands"]), name
        for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
            if "ray start" in c:
                assert "RAY_AUTH_MODE=token" in c and "venv/bin:$PATH" in c, (name, c)
        assert "0.0.0.0" not in text, name
    onprem = yaml.safe_load((ROOT / "cluster-onprem.yaml").read_text())
    assert onprem["provider"]["type"] == "local" and onprem["provider"]["worker_ips"]
    assert "--host 127.0.0.1" in " ".join(onprem["head_setup_commands"])


def test_sweep_with_a_failing_trial_then_report_and_notebook(tiny_sweep, monkeypatch):
    from scoremix_ray.foundations.errors import ScoreMixError
    from scoremix_ray.report import strategy_table
    from scoremix_ray.runtime.tracking import client, load_runs
    from tuning.sweep import run_sweep

    tmp_path, base, summary = tiny_sweep
    trials = {t["name"]: t for t in summary["trials"]}
    assert len(trials) == 3
    failed = [n for n, t in trials.items() if t["error"]]
    assert failed == ["scoremix-condition-close-s0"] and "File exists" in trials[failed[0]]["error"]
    ok = trials["scoremix-random-s0"]
    assert 0 <= ok["augmented.verification_accuracy"] <= 1 and "delta.verification_accuracy" in ok
    # stages 1-3 were computed once: one generator and one baseline recognizer for both strategies
    assert len(list(tmp_path.glob("stages/generator-*"))) == 1 and len(list(tmp_path.glob("stages/recognizer-*"))) == 1
    # MLflow: a parent with three children (one FAILED, with its error), params, metrics, artifacts
    mc = client(base)
    parent = mc.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    runs = load_runs(base)
    assert len(runs) == 3 and set(runs["tags.mlflow.parentRunId"]) == {summary["parent_run_id"]}
    assert sorted(runs["status"]) == ["FAILED", "FINISHED", "FINISHED"]
    done = runs[runs["status"] == "FINISHED"].iloc[0]
    assert (
        done["params.recognizer.head"] == "arcface"
        and done["metrics.alignment.cka_linear_null"] == done["metrics.alignment.cka_linear_null"]
    )
    arts = {a.path for a in mc.list_artifacts(done["run_id"])}
    assert {"samples.png", "pairs.parquet", "metrics.json", "config.yaml", "roc-ijbc.png"} <= arts
    # MLflow models, with signatures: the shared ones once, on the parent; the best trial's recognizer on its run
    assert {"generator_model", "baseline_model"} <= {a.path for a in mc.list_artifacts(parent.info.run_id)}
    finished = runs[runs["status"] == "FINISHED"]
    names = [t["name"] for t in summary["trials"] if not t["error"]]  # trial order: the first of equals is best
    best = max(names, key=lambda n: trials[n]["augmented.verification_accuracy"])
    assert parent.data.tags["scoremix.best_trial"] == best
    with_model = [
        r.run_id for r in finished.itertuples() if "augmented_model" in {a.path for a in mc.list_artifacts(r.run_id)}
    ]
    assert with_model == list(finished[finished["tags.mlflow.runName"] == best]["run_id"])
    # the benchmarks: their headline numbers for both recognizers and the paired difference, in every trial
    for key in (
        "tiny_bin.verification_accuracy",
        "bins.verification_accuracy",
        "ijbc.tar_at_far_1e-6",
        "tinyface.rank1",
    ):
        assert 0 <= ok[f"augmented.{key}"] <= 1 and ok[f"delta.{key}"] == pytest.approx(
            ok[f"augmented.{key}"] - ok[f"baseline.{key}"]
        ), key
    assert done["metrics.baseline.ijbc.tar_at_far_1e-4"] == done["metrics.baseline.ijbc.tar_at_far_1e-4"]
    bad = runs[runs["status"] == "FAILED"].iloc[0]
    assert "File exists" in bad["tags.scoremix.error"]
    # live curves: each stage's loss, learning rate and images/s at their steps (generator: every log_every=10
    # of 30 steps; recognizers: each epoch, 3 for the baseline, fewer for the augmented one that trains the
    # baseline's optimizer steps over more images). The shared stages trained before the trials went live to
    # the parent; each child has its augmented recognizer's curve live and the shared stages' replayed
    steps = lambda rid, key: [m.step for m in mc.get_metric_history(rid, key)]  # noqa: E731
    assert steps(parent.info.run_id, "train.generator.loss") == [10, 20, 30]
    assert steps(parent.info.run_id, "train.baseline.lr") == [1, 2, 3]
    metrics = json.loads((Path(ok["run_dir"]) / "metrics.json").read_text())
    aug, real = metrics["augmented"], metrics["baseline"]
    assert (
        abs(aug["optimizer_steps"] - real["optimizer_steps"]) <= aug["optimizer_steps"] / aug["epochs"]
    )  # within an epoch
    epochs = list(range(1, aug["epochs"] + 1))
    assert len(epochs) < real["epochs"] == 3
    for key, expected in (
        ("train.augmented.loss", epochs),
        ("train.augmented.images_per_s", epochs),
        ("train.generator.loss", [10, 20, 30]),
        ("train.baseline.train_accuracy", [1, 2, 3]),
    ):
        assert steps(done["run_id"], key) == expected, key
    info = mc.get_run(done["run_id"]).info  # open while the trial ran, not logged after it:
    trained = json.loads((Path(done["tags.scoremix.run_dir"]) / "stages.json").read_text())["augmented"]["dir"]
    assert info.start_time < (Path(trained) / "final" / "model.pt").stat().st_mtime * 1000 < info.end_time
    table = strategy_table(base)
    assert set(table["strategy"]) == {"random", "embedding-distant"} and list(table["runs"]) == [1, 1]
    # a grid value the data cannot satisfy stops the whole sweep after the data stage, before any training
    with pytest.raises(ScoreMixError, match="selection.count=50 exceeds the 10 possible"):
        run_sweep(base, ["random"], [0], grid={"selection.count": ["2", "50"]}, name="impossible")
    assert not list(tmp_path.glob("ray_tune/impossible"))
    # the same command again: the finished trials are skipped, the failed one fails again; exit 1 naming it
    from typer.testing import CliRunner

    from scoremix_ray.cli import app

    monkeypatch.chdir(tmp_path.parent)  # --out relative to where the command runs, not to a Tune trial's folder
    sets = [a for s in [f"out_dir={tmp_path.name}", *TINY_RUN] for a in ("--set", s)]
    r = CliRunner().invoke(
        app,
        ["sweep", "--strategies", "random,embedding-distant,condition-close", "--seeds", "0", "--name", "tiny", *sets],
    )
    assert r.exit_code == 1, r.output[-3000:]
    assert "3 trials, 1 failed (scoremix-condition-close-s0), 2 finished in an earlier attempt" in r.output
    assert "failed: scoremix-condition-close-s0: FileExistsError" in r.output  # its own folder, not a trial's
    # and once the disk is fixed: only the failed trial runs, under the same MLflow runs
    (tmp_path / "scoremix-condition-close-s0").unlink()
    again = run_sweep(base, ["random", "embedding-distant", "condition-close"], [0], name="tiny")
    assert again["parent_run_id"] == summary["parent_run_id"]
    assert {t["name"]: (bool(t.get("earlier")), t["error"]) for t in again["trials"]} == {
        "scoremix-random-s0": (True, None),
        "scoremix-embedding-distant-s0": (True, None),
        "scoremix-condition-close-s0": (False, None),
    }
    runs = load_runs(base)
    assert len(runs) == 3 and sorted(runs["status"]) == ["FINISHED"] * 3  # the failed child reopened, not a fourth
    assert again["trials"][0]["augmented.verification_accuracy"] == ok["augmented.verification_accuracy"]
    # the notebook runs on this sweep's store in the tiny study test (tests/test_study.py), which adds a study


def test_shared_mlflow_server_over_http(ray_session, tmp_path):
    from scoremix_ray.runtime.tracking import client, live_run, log_run, on_loopback, writer

    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", 90)
        cfg = load_config(
            None, [f"out_dir={tmp_path / 'client'}", f"tracking.tracking_uri=http://127.0.0.1:{port}", "name=over-http"]
        )
        (tmp_path / "metrics.json").write_text(json.dumps({"baseline": {"roc_auc": 0.8}}))
        rid = log_run(cfg, {"baseline": {"roc_auc": 0.8}, "augmented": {"roc_auc": 0.85}}, [tmp_path / "metrics.json"])
        run = client(cfg).get_run(rid)  # read back over HTTP
        assert run.data.metrics == {"baseline.roc_auc": 0.8, "augmented.roc_auc": 0.85}
        assert run.data.params["name"] == "over-http"
        assert [a.path for a in client(cfg).list_artifacts(rid)] == ["metrics.json"]
        assert not (tmp_path / "client" / "mlflow.db").exists()  # nothing went to the local default store
        # a server on this node's loopback (a cluster head's) is reached by this node's processes only: the job's
        # writes go through the writer actor here; a server elsewhere serialises writes itself (direct writes)
        with writer(cfg) as tracker:
            assert tracker.actor is not None
            with live_run(cfg, tracker) as live:
                assert client(cfg).get_run(live).info.status == "RUNNING"
        assert client(cfg).get_run(live).info.status == "FINISHED"
        assert on_loopback("http://localhost:5000") and not on_loopback("http://mlflow.lab.example:5000")
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)


def test_ray_job_submit_runs_the_sweep(tiny_sweep):
    """`ray start --head` a separate local cluster, submit a one-trial sweep with --working-dir. It writes into
    the tiny sweep's folder with one of its trial configs, so every stage is reused (what a second sweep on a
    cluster does) and the test pays for the job machinery, not for training again."""
    out = tiny_sweep[0]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    port, dash = _free_port(), _free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    temp = Path("/tmp") / f"rayjob{port}"  # Ray's socket paths must stay short
    try:
        subprocess.run(
            [
                ray_bin,
                "start",
                "--head",
                f"--port={port}",
                "--num-cpus=2",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}",
                f"--temp-dir={temp}",
                # the session's Ray already holds the default agent ports (52365, ...)
                f"--dashboard-agent-listen-port={_free_port()}",
                f"--dashboard-agent-grpc-port={_free_port()}",
                f"--metrics-export-port={_free_port()}",
                f"--runtime-env-agent-port={_free_port()}",
                "--disable-usage-stats",
            ],
            check=True,
            env=env,
            capture_output=True,
        )
        address = f"http://127.0.0.1:{dash}"
        _wait_http(address, 60)
        sets = [a for s in TINY_RUN for a in ("--set", s)]
        for _ in range(20):  # the dashboard answers before its job agent is ready
            r = subprocess.run(
                [
                    ray_bin,
                    "job",
                    "submit",
                    "--address",
                    address,
                    "--working-dir",
                    str(ROOT),
                    "--",
                    "python",
                    "-m",
                    "scoremix_ray",
                    "sweep",
                    "--strategies",
                    "random",
                    "--seeds",
                    "0",
                    "--out",
                    str(out),
                    "--name",
                    "job",
                    *sets,
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=420,
            )
            if "try again later" not in r.stderr:
                break
            time.sleep(3)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        assert "1 trials, 0 failed" in r.stdout
        summary = json.loads((out / "job.json").read_text())
        ok = next(t for t in tiny_sweep[2]["trials"] if t["name"] == "scoremix-random-s0")
        assert summary["trials"][0]["augmented.verification_accuracy"] == ok["augmented.verification_accuracy"]
        assert "reusing" in r.stdout + r.stderr
    finally:
        _stop_cluster(temp)


def _stop_cluster(temp: Path) -> None:
    """Stop only that cluster (`ray stop` would also stop the test session's Ray): its processes carry
    its temp dir on their command line; its workers exit with their raylet."""
    import psutil

    procs = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
    for p in procs:
        p.kill()
    psutil.wait_procs(procs, timeout=20)


def test_concurrency_leaves_room_for_inner_work():
    from tuning.sweep import TRIAL_CPU, concurrency, fit_to_cluster, inline_trial, trial_work

    def cfg(*sets):
        return load_config(None, ["ray.use_gpu=false", *sets])

    base = cfg()  # 1 Train worker x 2 CPUs: a trial's work is 2 CPUs
    fitted = fit_to_cluster(base, 2.0)
    assert fitted.ray.cpus_per_worker + TRIAL_CPU <= 2.0 and concurrency([fitted], 2.0) == 1
    small = cfg("ray.cpus_per_worker=1", "generation.actor_gpus=0")
    assert concurrency([small], 2.0) == 2 and concurrency([small], 16.0) == 16  # 1 + 16 * 0.01 <= 16
    assert fit_to_cluster(small, 2.0).ray.cpus_per_worker == 1
    # an inline trial (1 worker, 1 actor, CPUs) holds its work's CPUs itself: n x work <= CPUs
    assert (
        inline_trial(small)
        and concurrency([small], 2.0, inline=True) == 2
        and concurrency([fitted], 2.0, inline=True) == 1
    )
    # GPUs count too: 2 Train workers on a GPU each, or 4 actors x 0.25 GPU, or the evaluation task's 1 GPU
    gpu = cfg(
        "ray.use_gpu=true",
        "ray.num_workers=2",
        "ray.cpus_per_worker=4",
        "generation.num_actors=4",
        "generation.actor_gpus=0.25",
    )
    assert trial_work(gpu) == {"CPU": 8.0, "GPU": 2.0}
    assert (
        concurrency([gpu], 64.0, 8.0) == 4 and concurrency([gpu], 16.0, 8.0) == 2 and concurrency([gpu], 64.0, 0) == 1
    )
    packed = cfg("ray.use_gpu=true", "ray.cpus_per_worker=1", "generation.num_actors=2", "generation.actor_gpus=0.5")
    assert trial_work(packed) == {"CPU": 1.0, "GPU": 1.0} and concurrency([packed], 16.0, 1.0) == 1
    assert not inline_trial(gpu) and not inline_trial(packed)  # GPU or several workers: Ray Train and Ray Data


# a trial that works a few seconds on the tiny sweep's cached stages (96 images of 32 sampler steps), so a
# signal sent once its run is seen RUNNING lands while it works
SLOW_TRIAL = ("generation.per_tuple=48", "sampler.steps=32")


def _cli_process(out: Path, *args: str, sets: tuple[str, ...] = ()) -> subprocess.Popen:
    """`python -m scoremix_ray ...` as its own driver on the test session's Ray, in its own process group;
    `sets` after the tiny settings."""
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "RAY_USAGE_STATS_ENABLED": "0"}
    sets = [a for s in [*TINY_RUN, "ray.address=auto", *sets] for a in ("--set", s)]
    return subprocess.Popen(
        [sys.executable, "-m", "scoremix_ray", *args, "--out", str(out), *sets],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for(what, seconds: float, proc: subprocess.Popen):
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = what()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read()[-3000:])
        time.sleep(0.5)
    proc.kill()
    raise TimeoutError(proc.stdout.read()[-3000:])


def _runs(base, filter_string: str):
    from scoremix_ray.runtime.mlflow_store import experiment_id
    from scoremix_ray.runtime.tracking import client

    mc = client(base)
    return mc.search_runs([experiment_id(mc, base.tracking.experiment)], filter_string=filter_string)


def test_a_sweep_killed_outright_resumes_where_it_stopped(tiny_sweep):
    """SIGKILL the driver of a 2-trial sweep (one trial at a time) once its first trial's MLflow run is
    FINISHED; the same sweep again runs only the other trial, under the same parent, with no duplicate child.
    The first (random) finds all its stages in the tiny sweep's cache and ends within seconds; the second has a
    generation and a Ray Train fit to do (over 10 s), so the kill lands while it works."""
    from tuning.sweep import run_sweep

    out, base, _ = tiny_sweep
    args = ["sweep", "--strategies", "random,condition-distant", "--seeds", "0", "--name", "killed"]
    proc = _cli_process(out, *args, sets=("ray.cpus_per_worker=2",))  # one trial at a time
    parent = _wait_for(lambda: _runs(base, "attributes.run_name = 'killed'"), 120, proc)[0].info.run_id
    first = _wait_for(
        lambda: _runs(base, f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'FINISHED'"), 240, proc
    )
    os.kill(proc.pid, 9)
    proc.wait(30)
    assert len(first) == 1
    before = {r.info.run_name: r.info.status for r in _runs(base, f"tags.mlflow.parentRunId = '{parent}'")}
    assert before[first[0].info.run_name] == "FINISHED" and "FINISHED" not in [
        s for n, s in before.items() if n != first[0].info.run_name
    ]
    resumed = load_config(None, [f"out_dir={out}", *TINY_RUN, "ray.address=auto", "ray.cpus_per_worker=2"])
    summary = run_sweep(resumed, ["random", "condition-distant"], [0], name="killed")
    assert summary["parent_run_id"] == parent
    earlier = {t["name"] for t in summary["trials"] if t.get("earlier")}
    assert earlier == {first[0].info.run_name} and not [t for t in summary["trials"] if t["error"]]
    children = _runs(base, f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == ["scoremix-condition-distant-s0", "scoremix-random-s0"]
    assert {r.info.status for r in children} == {"FINISHED"}
    assert next(r for r in children if r.info.run_id == first[0].info.run_id).info.end_time == first[0].info.end_time


def test_a_stopped_sweep_marks_its_runs_killed(tiny_sweep):
    """SIGTERM to a sweep's driver while a trial runs: the parent and the open child are KILLED (Tune's own
    Ctrl-C handling would have ended fit() as if the sweep were done), exit code 130."""
    out, base, _ = tiny_sweep
    proc = _cli_process(
        out, "sweep", "--strategies", "embedding-close", "--seeds", "0", "--name", "stopped-sweep", sets=SLOW_TRIAL
    )
    parent = _wait_for(lambda: _runs(base, "attributes.run_name = 'stopped-sweep'"), 120, proc)[0].info.run_id
    _wait_for(lambda: _runs(base, f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'"), 240, proc)
    os.killpg(proc.pid, 15)
    assert proc.wait(120) == 130, proc.stdout.read()[-3000:]
    assert _runs(base, "attributes.run_name = 'stopped-sweep'")[0].info.status == "KILLED"
    assert [r.info.status for r in _runs(base, f"tags.mlflow.parentRunId = '{parent}'")] == ["KILLED"]


def test_a_stopped_run_is_marked_killed_and_a_failed_one_failed(tiny_sweep, tmp_path):
    """SIGTERM (what `ray job stop` sends) to `run` while it works: the MLflow run it opened at the start is
    KILLED, exit code 130. A run that raises is FAILED with its error."""
    from typer.testing import CliRunner

    from scoremix_ray.cli import app

    fresh = load_config(None, [f"out_dir={tmp_path}"])
    proc = _cli_process(tmp_path, "run", sets=("name=stopped",))  # a fresh folder: a generator to train
    _wait_for(lambda: _runs(fresh, "attributes.run_name = 'stopped' and attributes.status = 'RUNNING'"), 120, proc)
    time.sleep(3)  # into the work
    os.killpg(proc.pid, 15)
    assert proc.wait(120) == 130, proc.stdout.read()[-3000:]  # seen: 2.7 s after SIGTERM, in Ray Train
    run = _runs(fresh, "attributes.run_name = 'stopped'")[0]
    assert run.info.status == "KILLED" and run.data.tags["scoremix.error"] == "stopped by SIGTERM"
    assert run.data.params["selection.strategy"] == "embedding-distant"  # the config, from the start
    out, base, _ = tiny_sweep
    (out / "failing").write_text("a file where the run folder goes")
    sets = [a for s in [*TINY_RUN, "name=failing"] for a in ("--set", s)]
    r = CliRunner().invoke(app, ["run", "--out", str(out), *sets])
    assert isinstance(r.exception, FileExistsError)
    run = _runs(base, "attributes.run_name = 'failing'")[0]
    assert run.info.status == "FAILED" and "FileExistsError" in run.data.tags["scoremix.error"]


def test_a_sweep_is_the_same_sweep_from_anywhere():
    """The resume key holds what the trials compute, not where or on how many workers."""
    from tuning.sweep import sweep_key, trial_configs

    def key(*sets, strategies=("random", "embedding-distant"), name="s"):
        base = load_config(None, [*TINY_RUN, *sets])
        return sweep_key(name, trial_configs(base, list(strategies), [0], ["scoremix"]))

    here = key()
    assert (
        key(
            "out_dir=/elsewhere",
            "ray.address=auto",
            "ray.cpus_per_worker=2",
            "generation.num_actors=4",
            "tracking.tracking_uri=http://127.0.0.1:5000",
        )
        == here
    )
    assert key(strategies=("embedding-distant", "random")) == here
    assert key("generation.per_tuple=9") != here and key(strategies=("random",)) != here and key(name="t") != here


def test_min_precision_stops_a_run_before_it_generates(tiny_sweep):
    """generator.min_precision above what the generator reaches: the run stops in one line naming the figures,
    after the shared stages (reused) and before any selection or generation; below it, the gate is silent."""
    from scoremix_ray import pipeline
    from scoremix_ray.config import with_overrides
    from scoremix_ray.foundations.errors import ScoreMixError
    from scoremix_ray.runtime.context import RunContext

    out, base, _ = tiny_sweep
    cfg = with_overrides(base, ["name=gated", "generator.min_precision=1.0"])
    before = sorted(p.name for p in (out / "stages").iterdir())
    with pytest.raises(ScoreMixError, match=r"generator precision 0\.\d+ is below generator.min_precision 1.0 \(real"):
        pipeline.run(RunContext(), cfg)
    assert sorted(p.name for p in (out / "stages").iterdir()) == before  # nothing new was computed
    assert not (cfg.run_dir / "pairs.parquet").exists()
    quality = pipeline.shared(RunContext(), cfg).quality
    assert quality["readiness"] in ("ready", "marginal", "not ready")
    pipeline.check_ready(with_overrides(cfg, ["generator.min_precision=0.0"]), quality)  # no error
