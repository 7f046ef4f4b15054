"""MLflow: a run per experiment (a child run per sweep trial under one parent run per sweep).

Only the driver writes to MLflow (the sweep logs a trial when Tune reports it finished), so a SQLite store is
never written by two processes at once. Default store: `sqlite:///<out_dir>/mlflow.db`; a team points
`tracking.tracking_uri` (or `--tracking-uri`) at a shared `mlflow server`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from scoremix_ray.config import Config, flatten

log = logging.getLogger("scoremix_ray")

METRIC_SECTIONS = ("baseline", "augmented", "delta", "alignment")


def tracking_uri(cfg: Config) -> str:
    return cfg.tracking.tracking_uri or f"sqlite:///{(Path(cfg.out_dir) / 'mlflow.db').resolve()}"


def client(cfg: Config):
    from mlflow.tracking import MlflowClient

    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri(cfg))


def experiment_id(mc, name: str) -> str:
    exp = mc.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else mc.create_experiment(name)


def flat_metrics(metrics: dict) -> dict[str, float]:
    """{"baseline": {"roc_auc": 0.8}} -> {"baseline.roc_auc": 0.8}; numbers only (None = not measurable)."""
    out = {}
    for section in METRIC_SECTIONS:
        for k, v in (metrics.get(section) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{section}.{k}".replace("@", "_at_")] = float(v)
    return out


def start_parent(cfg: Config, name: str, tags: dict | None = None) -> str:
    """A parent run for a sweep or a study (`scoremix.kind`); its children are the trials."""
    mc = client(cfg)
    run = mc.create_run(experiment_id(mc, cfg.tracking.experiment), run_name=name,
                        tags={"scoremix.kind": "sweep", **(tags or {})})  # fmt: skip
    return run.info.run_id


def end_run(cfg: Config, run_id: str, status: str = "FINISHED") -> None:
    client(cfg).set_terminated(run_id, status)


def log_run(cfg: Config, metrics: dict | None, artifacts: list[Path] = (), parent: str | None = None,
            status: str = "FINISHED", error: str | None = None) -> str:  # fmt: skip
    """One finished (or failed) experiment as an MLflow run: params = flattened config, metrics = the
    sections of metrics.json, artifacts = files that exist of `artifacts`. Returns the run id."""
    from mlflow.entities import Metric, Param, RunTag

    mc = client(cfg)
    tags = {"scoremix.strategy": cfg.selection.strategy, "scoremix.method": cfg.generation.method,
            "scoremix.seed": str(cfg.seed), "scoremix.run_dir": str(cfg.run_dir)}  # fmt: skip
    if parent:
        tags["mlflow.parentRunId"] = parent
    if error:
        tags["scoremix.error"] = error[:5000]
    run = mc.create_run(experiment_id(mc, cfg.tracking.experiment), run_name=cfg.name, tags=tags)
    rid, now = run.info.run_id, int(time.time() * 1000)
    params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in flatten(cfg).items()]
    mets = [Metric(k, v, now, 0) for k, v in flat_metrics(metrics or {}).items()]
    for i in range(0, max(len(params), len(mets)), 100):  # MLflow takes at most 100 params per batch
        mc.log_batch(rid, metrics=mets[i:i + 100], params=params[i:i + 100], tags=[RunTag("scoremix.logged", "1")])
    for path in artifacts:
        if Path(path).is_file():
            mc.log_artifact(rid, str(path))
    mc.set_terminated(rid, status)
    log.info("mlflow: run %s (%s) logged to %s", rid, cfg.name, tracking_uri(cfg))
    return rid


def run_artifacts(cfg: Config, result: dict | None = None) -> list[Path]:
    """The files a run logs: resolved config, metrics, pairs table, the synthetic sample grid."""
    files = [cfg.run_dir / "config.yaml", cfg.run_dir / "metrics.json", cfg.run_dir / "pairs.parquet"]
    if result and "generate" in result:
        files.append(Path(result["generate"]["grid"]))
    return files


def load_runs(cfg: Config, experiment: str | None = None):
    """Every finished non-parent run of the experiment as a pandas DataFrame (MLflow's search_runs)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    df = mlflow.search_runs(experiment_names=[experiment or cfg.tracking.experiment])
    if len(df) and "tags.scoremix.kind" in df:
        df = df[df["tags.scoremix.kind"].isna()]  # parents (sweeps, studies) carry a kind; runs do not
    return df
