"""The MLflow writes, and the one writer of a SQLite store.

SQLite lets one process write at a time (the others wait, then fail with "database is locked"), so while a job
runs, every write of every process (the driver, Tune trials, Ray Train workers) goes through one Ray actor per
store (`Writer`, started by `tracking.writer`); with a tracking server every process writes directly
(`Tracker`). The writes are module-level functions of a client, so the actor runs them by reference. This
module imports nothing of the project and nothing heavy: it is all the writer actor's process loads.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CURVES = ("loss", "train_accuracy", "lr", "images_per_s")  # what a training curve logs of the loop's metrics


@functools.cache
def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# MLflow 3's UI opens an experiment in the view its kind names; without the tag it guesses, and on runs with no
# model of MLflow's own it guesses GenAI (traces, sessions, token usage)
KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(mc, name: str) -> str:
    exp = mc.get_experiment_by_name(name)
    if exp is None:
        return mc.create_experiment(name, tags=KIND)
    for k, v in KIND.items():
        if exp.tags.get(k) != v:  # an experiment from before the tag
            mc.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def child_filter(parent: str, name: str) -> str:
    """The filter that finds a parent's child by name (a resumed sweep's trial)."""
    return f"tags.mlflow.parentRunId = '{parent}' and attributes.run_name = '{name}'"


# --- the writes: module-level functions of a client, run by the writer actor or in the calling process ---


def open_run(mc, experiment: str, name: str, params: dict, tags: dict, find: str | None) -> str:
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


def log_points(mc, run_id: str, points: list[tuple[str, float, int]]) -> None:
    """(key, value, step) points, in batches of MLflow's limit (1000 metrics)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, int(step)) for k, v, step in points]
    for i in range(0, len(items), 1000):
        mc.log_batch(run_id, metrics=items[i : i + 1000])


def log_metrics(mc, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    log_points(mc, run_id, [(k, v, step) for k, v in metrics.items()])


def log_curve(mc, run_id: str, name: str, history: list[dict]) -> None:
    """A stage's whole curve (`history.jsonl` rows) under `train.<name>.`, each row at its step."""
    log_points(mc, run_id, [(f"train.{name}.{k}", row[k], row["step"]) for row in history for k in CURVES if k in row])


def finish_run(mc, run_id: str, status: str, error: str | None) -> None:
    if error:
        mc.set_tag(run_id, "scoremix.error", error[-5000:])
    mc.set_terminated(run_id, status)


def log_end(mc, run_id: str, metrics: dict[str, float], artifacts: list[str], curves: dict[str, list[dict]]) -> None:
    """The end of a run: its metrics (step 0), the curves of the stages it reused (not logged live), its files."""
    have = mc.get_run(run_id).data.metrics
    for name, history in curves.items():
        if f"train.{name}.loss" not in have:
            log_curve(mc, run_id, name, history)
    log_metrics(mc, run_id, metrics)
    for path in artifacts:
        mc.log_artifact(run_id, path)
    mc.set_tag(run_id, "scoremix.logged", "1")


def log_datasets(mc, run_id: str, datasets: list[dict]) -> None:
    """The run's inputs as MLflow datasets (the UI's Dataset column): each {name, digest, source, profile,
    context}; a dataset the run already lists (a resumed trial) is not added again."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    have = {(i.dataset.name, i.dataset.digest) for i in mc.get_run(run_id).inputs.dataset_inputs}
    inputs = [
        DatasetInput(
            Dataset(d["name"], d["digest"], "local", json.dumps({"uri": d["source"]}), None, json.dumps(d["profile"])),
            [InputTag("mlflow.data.context", d["context"])],
        )
        for d in datasets
        if (d["name"], d["digest"]) not in have
    ]
    if inputs:
        mc.log_inputs(run_id, datasets=inputs)


def tag(mc, run_id: str, key: str, value: str) -> None:
    mc.set_tag(run_id, key, value)


def children_of(mc, parent: str) -> dict[str, tuple[str, str]]:
    """{run name: (run id, status)} of a parent's children."""
    exp = mc.get_run(parent).info.experiment_id
    runs = mc.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=50000)
    return {r.info.run_name: (r.info.run_id, r.info.status) for r in runs}


def status_of_child(mc, parent: str, name: str) -> str | None:
    exp = mc.get_run(parent).info.experiment_id
    runs = mc.search_runs(
        [exp], filter_string=child_filter(parent, name), order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0].info.status if runs else None


def log_model_dir(mc, run_id: str, path: str, name: str, registered: str | None) -> None:
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


def ping(mc) -> None:
    return None


class Writer:
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
        return fn(client_for(self.uri), *args)

    def submit(self, fn: Callable, *args: Any) -> Any:
        """`fn(client, *args)` started by the store's writer without waiting: its result as a Ray object ref,
        which the writer resolves when a later write names it (a write's top-level argument) and `resolve` reads.
        Without a writer actor the write is done here and its value returned."""
        if self.actor is not None:
            import ray

            try:
                return ray.get_actor(self.actor).do.remote(fn, *args)
            except ValueError:  # no writer (gone with its job): write from here
                pass
        return fn(client_for(self.uri), *args)

    @staticmethod
    def resolve(value: Any) -> Any:
        """The value of what `submit` returned (waits for the write); any other value as it is."""
        if type(value).__name__ == "ObjectRef":  # without importing Ray where none is used
            import ray

            return ray.get(value)
        return value
