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
ended with the job (`writer`). The same for a tracking server on the driver's loopback (a cluster head's:
the other nodes cannot reach it). A tracking server elsewhere (`tracking.tracking_uri: http://...`)
serialises writes itself: every process writes to it directly. Default store: `sqlite:///<out_dir>/mlflow.db`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from scoremix_ray.config import Config, flatten
from scoremix_ray.core.evaluation.benchmarks import numbers
from scoremix_ray.foundations.checkpoints import read_history
from scoremix_ray.foundations.interrupts import STOP_REQUESTED
from scoremix_ray.runtime import mlflow_store as store
from scoremix_ray.runtime.export import generator_model, recognizer_model
from scoremix_ray.runtime.mlflow_store import CURVES, Tracker

log = logging.getLogger("scoremix_ray")

METRIC_SECTIONS = ("baseline", "augmented", "delta", "alignment", "generator", "mixing")


def tracking_uri(cfg: Config) -> str:
    return cfg.tracking.tracking_uri or f"sqlite:///{(Path(cfg.out_dir) / 'mlflow.db').resolve()}"


def ui_link(server: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of a run (or of the experiment's runs) in its model-training view: MLflow 3.17's UI
    opens every experiment as a GenAI app (traces, token usage) unless the link or its toggle says otherwise."""
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/{page}?workflowType=machine_learning"


def ui_hint(cfg: Config, run_id: str, runs_of_experiment: bool = False) -> str:
    """Where to look at `run_id` (or, `runs_of_experiment`, at its experiment's runs: a sweep's trials): the UI
    link on a tracking server, else the command that serves the store, then the link."""
    uri = tracking_uri(cfg)
    eid = client(cfg).get_run(run_id).info.experiment_id
    page = None if runs_of_experiment else run_id
    if uri.startswith("http"):
        return ui_link(uri, eid, page)
    return f"mlflow ui --backend-store-uri {uri}, then {ui_link('http://127.0.0.1:5000', eid, page)}"


def client(cfg: Config):
    """A client for reading (any process may read while the writer writes)."""
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    return store.client_for(tracking_uri(cfg))


def flat_metrics(metrics: dict) -> dict[str, float]:
    """{"baseline": {"roc_auc": 0.8}} -> {"baseline.roc_auc": 0.8}; numbers only (None = not measurable)."""
    out = {}
    for section in METRIC_SECTIONS:
        values = metrics.get(section) or {}
        for k, v in {**values, **numbers(values)}.items():  # the benchmarks' headline numbers too
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{section}.{k}".replace("@", "_at_")] = float(v)
    return out


def on_loopback(uri: str) -> bool:
    """A tracking server on this machine's loopback (a cluster head's, reached through SSH tunnels from outside):
    only processes on this node reach it, so the job's writes go through the writer actor here."""
    host = urlparse(uri).hostname or ""
    return uri.startswith("http") and (host == "localhost" or host.startswith("127.") or host == "::1")


@contextmanager
def writer(cfg: Config) -> Iterator[Tracker]:
    """The job's Tracker: for a SQLite store or a server on this node's loopback (`on_loopback`), start its
    writer actor on this node (or join the one an enclosing job started) and end it, after its queued writes,
    when the job ends."""
    uri = tracking_uri(cfg)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    if not (uri.startswith("sqlite:") or on_loopback(uri)):
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
    actor = ray.remote(store.Writer).options(name=name, num_cpus=0, scheduling_strategy=here).remote(uri)
    try:
        yield Tracker(uri, name)
    finally:
        # this process's queued writes are done (workers and trials flushed theirs as they ended)
        with contextlib.suppress(ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            ray.get(actor.do.remote(store.ping), timeout=120)
        ray.kill(actor)


def _tags(cfg: Config, parent: str | None) -> dict[str, str]:
    return {
        "scoremix.strategy": cfg.selection.strategy,
        "scoremix.method": cfg.generation.method,
        "scoremix.seed": str(cfg.seed),
        "scoremix.run_dir": str(cfg.run_dir),
        **({"mlflow.parentRunId": parent} if parent else {}),
    }


@contextmanager
def live_run(
    cfg: Config,
    tracker: Tracker,
    parent: str | None = None,
    tags: dict | None = None,
    find: str | None = None,
    wait: bool = True,
) -> Iterator[str]:
    """An MLflow run open while the block runs (yields its id): RUNNING with the flattened config as params,
    then FINISHED; FAILED with the traceback as the `scoremix.error` tag; KILLED on Ctrl-C or SIGTERM. Under
    `parent`, a child of the same name is reopened (a resumed sweep); `find` (an MLflow filter) reopens another
    run it matches (a resumed sweep's parent). The stages trained inside send their curves to it when the
    block hands its id on (`RunContext.reporting_to`). `wait=False`: the block starts while the writer opens the
    run, and gets its id as a future (`Tracker.submit`: the writer resolves it in later writes; `Tracker.resolve`
    reads it), so a sweep's trials start while the writer comes up."""
    rid = (tracker.do if wait else tracker.submit)(
        store.open_run,
        cfg.tracking.experiment,
        cfg.name,
        flatten(cfg),
        {**_tags(cfg, parent), **(tags or {})},
        store.child_filter(parent, cfg.name) if parent else find,
    )
    if isinstance(rid, str):
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
        tracker.do(store.finish_run, rid, status, error)


class _Curve:
    """The live curve of a stage trained on a Ray Train worker (`checkpoints.Monitor`): each log point goes
    to the open run as `<prefix>train.<stage>.<metric>` at its step, sent without waiting."""

    def __init__(self, track: dict, stage: str):
        self.tracker, self.run_id = Tracker(track["uri"], track["actor"]), track["run_id"]
        self.prefix = f"{track['prefix']}train.{stage}."

    def __call__(self, metrics: dict, step: int) -> None:
        values = {self.prefix + k: v for k, v in metrics.items() if k in CURVES or "." in k}  # "lfw.verification_..."
        self.tracker.do(store.log_metrics, self.run_id, values, step, wait=False)

    def flush(self) -> None:
        """What was sent is written before the worker ends."""
        self.tracker.do(store.ping)


def monitor(track: dict | None, stage: str) -> _Curve | None:
    """The curve's sender for the run `track` (`RunContext.curve` where the training was started); None: no run."""
    return _Curve(track, stage) if track else None


def log_results(tracker: Tracker, run_id: str, metrics: dict, artifacts: list[Path], stages: dict[str, Path]) -> None:
    """The end of a run: its metrics, its files, and the curves of the stages it reused (`stages`: curve
    name -> stage folder with a `history.jsonl`)."""
    curves = {name: read_history(d) for name, d in stages.items()}
    tracker.do(store.log_end, run_id, flat_metrics(metrics), [str(p) for p in artifacts if Path(p).is_file()], curves)


def datasets(cfg: Config, result: dict) -> list[dict]:
    """A run's data as MLflow datasets: the data stage it trained and evaluated on ("training", named for its
    source and split seed) and the synthetic classes it added ("synthetic"), each keyed by its stage folder."""
    data = result["data"]
    out = [
        {
            "name": f"{cfg.data.source}-split{cfg.data.split_seed}",
            "digest": Path(data["dir"]).name.rpartition("-")[2],
            "source": data["dir"],
            "profile": {k: v for k, v in data.items() if k != "dir"},
            "context": "training",
        }
    ]
    if "generate" in result:
        synth = Path(result["generate"]["dir"])
        rows = (
            json.loads((synth / "manifest.json").read_text()).get("rows_written")
            if (synth / "manifest.json").is_file()
            else None
        )
        out.append(
            {
                "name": f"{cfg.generation.method}-{cfg.selection.strategy}-{cfg.selection.count}",
                "digest": synth.name.rpartition("-")[2],
                "source": str(synth),
                "profile": {"images": rows, "method": cfg.generation.method, "strategy": cfg.selection.strategy},
                "context": "synthetic",
            }
        )
    return out


def log_datasets(tracker: Tracker, run_id: str, sets: list[dict]) -> None:
    tracker.do(store.log_datasets, run_id, sets)


def save_models(cfg: Config, stages: dict[str, Path]) -> dict[str, Path]:
    """{stage: its MLflow model folder}, saved once per stage folder (`export`) when `tracking.log_models`.
    A sweep logs its shared stages' models before the trials (on the parent run), so concurrent trials do not
    each export the same generator and baseline."""
    if not cfg.tracking.log_models:
        return {}
    return {s: generator_model(d) if s == "generator" else recognizer_model(d) for s, d in stages.items()}


def log_models(
    tracker: Tracker, cfg: Config, run_id: str, stages: dict[str, Path], folder: str = "", wait: bool = True
) -> list:
    """The run's models (`stages`: generator, baseline, augmented folders) as MLflow models with signatures
    (`mlflow_models`), at artifact paths "<folder><stage>_model"; registered, when `tracking.registered_model`
    names it, as <name> (the augmented recognizer), <name>-baseline and <name>-generator. `wait=False`: saved
    here, logged by the writer while this process goes on; the writes' futures are returned (`Tracker.resolve`
    them to see their errors)."""
    if not cfg.tracking.log_models:
        return []
    name = cfg.tracking.registered_model
    out = []
    for stage, path in save_models(cfg, stages).items():
        registered = None if name is None else name if stage == "augmented" else f"{name}-{stage}"
        args = (store.log_model_dir, run_id, str(path), f"{folder}{stage}_model", registered)
        out.append(tracker.do(*args) if wait else tracker.submit(*args))
    return out


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
        store.open_run,
        cfg.tracking.experiment,
        cfg.name,
        flatten(cfg),
        _tags(cfg, parent),
        store.child_filter(parent, cfg.name) if parent else None,
    )
    log_results(tracker, rid, metrics or {}, list(artifacts), {})
    tracker.do(store.finish_run, rid, status, error)
    return rid


def children(tracker: Tracker, parent: str) -> dict[str, tuple[str, str]]:
    """{trial name: (MLflow run id, status)} under a sweep's parent run."""
    return tracker.do(store.children_of, parent)


def child_status(tracker: Tracker, parent: str, name: str) -> str | None:
    """The status of a sweep's trial `name` as an earlier attempt left it (None: never opened)."""
    return tracker.do(store.status_of_child, parent, name)


def set_tag(tracker: Tracker, run_id: str, key: str, value: str) -> None:
    tracker.do(store.tag, run_id, key, value)


def finish(tracker: Tracker, run_id: str, status: str, error: str | None = None) -> None:
    tracker.do(store.finish_run, run_id, status, error)


def load_runs(cfg: Config, experiment: str | None = None):
    """Every non-parent run of the experiment as a pandas DataFrame (MLflow's search_runs)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    df = mlflow.search_runs(experiment_names=[experiment or cfg.tracking.experiment])
    if len(df) and "tags.scoremix.kind" in df:
        df = df[df["tags.scoremix.kind"].isna()]  # parents (sweeps, studies) carry a kind; runs do not
    return df
