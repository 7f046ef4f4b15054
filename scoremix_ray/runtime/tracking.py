"""MLflow: one live run per experiment; a sweep or a study is a parent run with a child run per trial.

A run opens when its job starts (RUNNING, the config as params) and closes when the job ends: FINISHED,
FAILED with the error, or KILLED on Ctrl-C / SIGTERM (`live_run`). While a stage trains, its loss, learning
rate and images/s reach the open run with their step (`train.<stage>.<metric>`: generator, baseline,
augmented), so the UI draws the curves as they grow; a run that reuses a cached stage gets that stage's
curve from its `history.jsonl` at the end. A driver killed outright (SIGKILL) leaves its runs RUNNING;
rerunning the same sweep reopens them (a child is found by its parent and name), never duplicates them.

One writer per SQLite store: SQLite lets one process write at a time (the others wait, then fail with
"database is locked"), so while a job runs, every write of every process (the driver, Tune trials, Ray
Train workers) goes through one Ray actor per store, placed on the driver's node (where the file is) and
ended with the job (`writer`). A tracking server (`tracking.tracking_uri: http://...`) serialises writes
itself: every process writes to it directly. Default store: `sqlite:///<out_dir>/mlflow.db`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoremix_ray.config import Config, flatten
from scoremix_ray.core.evaluation.benchmarks import numbers
from scoremix_ray.foundations.checkpoints import read_history
from scoremix_ray.foundations.interrupts import STOP_REQUESTED
from scoremix_ray.runtime.export import generator_model, recognizer_model

log = logging.getLogger("scoremix_ray")

METRIC_SECTIONS = ("baseline", "augmented", "delta", "alignment", "generator", "mixing")
CURVES = ("loss", "train_accuracy", "lr", "images_per_s")  # what a training curve logs of the loop's metrics


def tracking_uri(cfg: Config) -> str:
    return cfg.tracking.tracking_uri or f"sqlite:///{(Path(cfg.out_dir) / 'mlflow.db').resolve()}"


@functools.cache
def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def client(cfg: Config):
    """A client for reading (any process may read while the writer writes)."""
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    return _client(tracking_uri(cfg))


def experiment_id(mc, name: str) -> str:
    exp = mc.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else mc.create_experiment(name)


def flat_metrics(metrics: dict) -> dict[str, float]:
    """{"baseline": {"roc_auc": 0.8}} -> {"baseline.roc_auc": 0.8}; numbers only (None = not measurable)."""
    out = {}
    for section in METRIC_SECTIONS:
        values = metrics.get(section) or {}
        for k, v in {**values, **numbers(values)}.items():  # the benchmarks' headline numbers too
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{section}.{k}".replace("@", "_at_")] = float(v)
    return out


# --- the writes: module-level functions of a client, run by the writer actor or in the calling process ---


def _open(mc, experiment: str, name: str, params: dict, tags: dict, find: str | None) -> str:
    """A RUNNING run; with `find` (an MLflow filter), the newest run it matches is reopened instead."""
    from mlflow.entities import Param, RunTag

    exp = experiment_id(mc, experiment)
    found = (
        mc.search_runs([exp], filter_string=find, order_by=["attributes.start_time DESC"], max_results=1)
        if find
        else []
    )
    if found:  # params stay as logged (the same config); the last attempt's error goes
        rid = found[0].info.run_id
        if "scoremix.error" in found[0].data.tags:
            mc.delete_tag(rid, "scoremix.error")
        mc.update_run(rid, status="RUNNING")
        return rid
    rid = mc.create_run(exp, run_name=name, tags=tags).info.run_id
    items = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mc.log_batch(rid, params=items[i : i + 100], tags=[RunTag("scoremix.logged", "0")])
    return rid


def _log_points(mc, run_id: str, points: list[tuple[str, float, int]]) -> None:
    """(key, value, step) points, in batches of MLflow's limit (1000 metrics)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, int(step)) for k, v, step in points]
    for i in range(0, len(items), 1000):
        mc.log_batch(run_id, metrics=items[i : i + 1000])


def _log_metrics(mc, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    _log_points(mc, run_id, [(k, v, step) for k, v in metrics.items()])


def _log_curve(mc, run_id: str, name: str, history: list[dict]) -> None:
    """A stage's whole curve (`history.jsonl` rows) under `train.<name>.`, each row at its step."""
    _log_points(mc, run_id, [(f"train.{name}.{k}", row[k], row["step"]) for row in history for k in CURVES if k in row])


def _finish(mc, run_id: str, status: str, error: str | None) -> None:
    if error:
        mc.set_tag(run_id, "scoremix.error", error[-5000:])
    mc.set_terminated(run_id, status)


def _results(mc, run_id: str, metrics: dict[str, float], artifacts: list[str], curves: dict[str, list[dict]]) -> None:
    """The end of a run: its metrics (step 0), the curves of the stages it reused (not logged live), its files."""
    have = mc.get_run(run_id).data.metrics
    for name, history in curves.items():
        if f"train.{name}.loss" not in have:
            _log_curve(mc, run_id, name, history)
    _log_metrics(mc, run_id, metrics)
    for path in artifacts:
        mc.log_artifact(run_id, path)
    mc.set_tag(run_id, "scoremix.logged", "1")


def _children(mc, parent: str) -> dict[str, tuple[str, str]]:
    """{run name: (run id, status)} of a parent's children."""
    exp = mc.get_run(parent).info.experiment_id
    runs = mc.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=50000)
    return {r.info.run_name: (r.info.run_id, r.info.status) for r in runs}


def _child_status(mc, parent: str, name: str) -> str | None:
    exp = mc.get_run(parent).info.experiment_id
    runs = mc.search_runs(
        [exp], filter_string=_child(parent, name), order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0].info.status if runs else None


def _ping(mc) -> None:
    return None


class _Writer:
    """The one writer of a SQLite store, as a Ray actor: runs the write functions above, one at a time, in
    the order each process sent them."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self.mc = MlflowClient(tracking_uri=uri)

    def do(self, fn: Callable, *args: Any) -> Any:
        return fn(self.mc, *args)


@dataclass(frozen=True)
class Tracker:
    """Where a job's MLflow writes go: `actor` names the store's writer actor (SQLite), None = this process
    writes itself (a tracking server, or no job running). Picklable: trials and Train workers get a copy."""

    uri: str
    actor: str | None = None

    def do(self, fn: Callable, *args: Any, wait: bool = True) -> Any:
        """`fn(client, *args)` by the store's writer; `wait=False` sends it and goes on (a training curve's
        points: the writer keeps their order)."""
        if self.actor is not None:
            import ray

            try:
                ref = ray.get_actor(self.actor).do.remote(fn, *args)
                return ray.get(ref) if wait else None
            except (ValueError, ray.exceptions.RayActorError, ray.exceptions.RaySystemError):
                pass  # the writer is gone with its job (a run's last word on a kill): write from here
        return fn(_client(self.uri), *args)


@contextmanager
def writer(cfg: Config) -> Iterator[Tracker]:
    """The job's Tracker: for a SQLite store, start its writer actor on this node (or join the one an
    enclosing job started) and end it, after its queued writes, when the job ends."""
    uri = tracking_uri(cfg)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    if not uri.startswith("sqlite:"):
        yield Tracker(uri)
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = "mlflow-writer-" + hashlib.sha256(uri.encode()).hexdigest()[:12]
    try:
        ray.get_actor(name)
        yield Tracker(uri, name)  # an enclosing job of this driver owns it
        return
    except ValueError:
        pass
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(_Writer).options(name=name, num_cpus=0, scheduling_strategy=here).remote(uri)
    try:
        yield Tracker(uri, name)
    finally:
        # this process's queued writes are done (workers and trials flushed theirs as they ended)
        with contextlib.suppress(ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            ray.get(actor.do.remote(_ping), timeout=120)
        ray.kill(actor)


def _tags(cfg: Config, parent: str | None) -> dict[str, str]:
    return {
        "scoremix.strategy": cfg.selection.strategy,
        "scoremix.method": cfg.generation.method,
        "scoremix.seed": str(cfg.seed),
        "scoremix.run_dir": str(cfg.run_dir),
        **({"mlflow.parentRunId": parent} if parent else {}),
    }


def _child(parent: str, name: str) -> str:
    """The filter that finds a parent's child by name (a resumed sweep's trial)."""
    return f"tags.mlflow.parentRunId = '{parent}' and attributes.run_name = '{name}'"


@contextmanager
def live_run(
    cfg: Config, tracker: Tracker, parent: str | None = None, tags: dict | None = None, find: str | None = None
) -> Iterator[str]:
    """An MLflow run open while the block runs (yields its id): RUNNING with the flattened config as params,
    then FINISHED; FAILED with the traceback as the `scoremix.error` tag; KILLED on Ctrl-C or SIGTERM. Under
    `parent`, a child of the same name is reopened (a resumed sweep); `find` (an MLflow filter) reopens another
    run it matches (a resumed sweep's parent). The stages trained inside send their curves to it when the
    block hands its id on (`RunContext.reporting_to`)."""
    rid = tracker.do(
        _open,
        cfg.tracking.experiment,
        cfg.name,
        flatten(cfg),
        {**_tags(cfg, parent), **(tags or {})},
        _child(parent, cfg.name) if parent else find,
    )
    log.info("mlflow: run %s (%s) open in %s", rid, cfg.name, tracker.uri)
    status, error = "FAILED", None
    try:
        yield rid  # SIGTERM arrives as Ctrl-C (`foundations.interrupts`, installed where the process starts)
        status = "FINISHED"
    except KeyboardInterrupt:
        status, error = "KILLED", "stopped by " + ("SIGTERM" if STOP_REQUESTED.is_set() else "Ctrl-C")
        raise
    except SystemExit as e:  # Ray's own SIGTERM handler exits the driver
        status, error = ("FINISHED", None) if e.code in (0, None) else ("KILLED", f"exited with {e.code}")
        raise
    except BaseException as e:
        error = "".join(traceback.format_exception(e))
        raise
    finally:
        tracker.do(_finish, rid, status, error)


class _Curve:
    """The live curve of a stage trained on a Ray Train worker (`checkpoints.Monitor`): each log point goes
    to the open run as `<prefix>train.<stage>.<metric>` at its step, sent without waiting."""

    def __init__(self, track: dict, stage: str):
        self.tracker, self.run_id = Tracker(track["uri"], track["actor"]), track["run_id"]
        self.prefix = f"{track['prefix']}train.{stage}."

    def __call__(self, metrics: dict, step: int) -> None:
        values = {self.prefix + k: v for k, v in metrics.items() if k in CURVES or "." in k}  # "lfw.verification_..."
        self.tracker.do(_log_metrics, self.run_id, values, step, wait=False)

    def flush(self) -> None:
        """What was sent is written before the worker ends."""
        self.tracker.do(_ping)


def monitor(track: dict | None, stage: str) -> _Curve | None:
    """The curve's sender for the run `track` (`RunContext.curve` where the training was started); None: no run."""
    return _Curve(track, stage) if track else None


def log_results(tracker: Tracker, run_id: str, metrics: dict, artifacts: list[Path], stages: dict[str, Path]) -> None:
    """The end of a run: its metrics, its files, and the curves of the stages it reused (`stages`: curve
    name -> stage folder with a `history.jsonl`)."""
    curves = {name: read_history(d) for name, d in stages.items()}
    tracker.do(_results, run_id, flat_metrics(metrics), [str(p) for p in artifacts if Path(p).is_file()], curves)


def _log_model(mc, run_id: str, path: str, name: str, registered: str | None) -> None:
    """A saved MLflow model folder into the run's artifacts at `name`, and a new version of `registered`."""
    from mlflow.exceptions import MlflowException

    mc.log_artifacts(run_id, path, name)
    if registered:
        try:
            mc.create_registered_model(registered)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mc.create_model_version(registered, source=f"runs:/{run_id}/{name}", run_id=run_id)


def log_models(tracker: Tracker, cfg: Config, run_id: str, stages: dict[str, Path]) -> None:
    """The run's models (`stages`: generator, baseline, augmented folders) as MLflow models with signatures
    (`mlflow_models`), at artifact paths "<stage>_model"; registered, when `tracking.registered_model` names
    it, as <name> (the augmented recognizer), <name>-baseline and <name>-generator."""
    if not cfg.tracking.log_models:
        return
    name = cfg.tracking.registered_model
    for stage, d in stages.items():
        path = generator_model(d) if stage == "generator" else recognizer_model(d)
        registered = None if name is None else name if stage == "augmented" else f"{name}-{stage}"
        tracker.do(_log_model, run_id, str(path), f"{stage}_model", registered)


def run_artifacts(cfg: Config, result: dict | None = None) -> list[Path]:
    """The files a run logs: resolved config, metrics, pairs table, the synthetic sample grid, the ROC plots."""
    files = [cfg.run_dir / "config.yaml", cfg.run_dir / "metrics.json", cfg.run_dir / "pairs.parquet"]
    if result and "generate" in result:
        files.append(Path(result["generate"]["grid"]))
    return files + [Path(p) for p in (result or {}).get("roc", [])]


def log_run(
    cfg: Config,
    metrics: dict | None,
    artifacts: list[Path] = (),
    parent: str | None = None,
    status: str = "FINISHED",
    error: str | None = None,
) -> str:
    """A finished (or failed) experiment logged after the fact, by this process (reports, imports, tests)."""
    tracker = Tracker(tracking_uri(cfg))
    client(cfg)  # the folder of the default store
    rid = tracker.do(
        _open,
        cfg.tracking.experiment,
        cfg.name,
        flatten(cfg),
        _tags(cfg, parent),
        _child(parent, cfg.name) if parent else None,
    )
    log_results(tracker, rid, metrics or {}, list(artifacts), {})
    tracker.do(_finish, rid, status, error)
    return rid


def children(tracker: Tracker, parent: str) -> dict[str, tuple[str, str]]:
    """{trial name: (MLflow run id, status)} under a sweep's parent run."""
    return tracker.do(_children, parent)


def child_status(tracker: Tracker, parent: str, name: str) -> str | None:
    """The status of a sweep's trial `name` as an earlier attempt left it (None: never opened)."""
    return tracker.do(_child_status, parent, name)


def finish(tracker: Tracker, run_id: str, status: str, error: str | None = None) -> None:
    tracker.do(_finish, run_id, status, error)


def load_runs(cfg: Config, experiment: str | None = None):
    """Every non-parent run of the experiment as a pandas DataFrame (MLflow's search_runs)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    df = mlflow.search_runs(experiment_names=[experiment or cfg.tracking.experiment])
    if len(df) and "tags.scoremix.kind" in df:
        df = df[df["tags.scoremix.kind"].isna()]  # parents (sweeps, studies) carry a kind; runs do not
    return df
