"""Ray Tune sweep: selection strategies x methods x seeds (x any config key), one MLflow child run per trial.

    scoremix-ray sweep --strategies random,embedding-distant --seeds 0,1 [--grid generation.per_tuple=20,50]
    python -m scoremix_ray sweep ...   (the same, e.g. as a `ray job submit` entrypoint)

Shared stages (data, generator, baseline recognizer) are computed once per fold and seed in the driver before any
trial starts, so trials only select, generate and train the augmented recognizer. Each trial starts Ray Data
actors and a Ray Train run of its own: the trial itself reserves a sliver of CPU and the concurrency is
capped by what one trial's inner work needs, so inner placement groups always fit (no deadlock on 2 CPUs).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path

from scoremix_ray.config import Config, ConfigError, section_hash, with_overrides

log = logging.getLogger("scoremix_ray")

TRIAL_CPU = 0.01  # the trial's own process mostly waits on its Train/Data work


def parse_grid(items: list[str]) -> dict[str, list]:
    """["generation.per_tuple=20,50"] -> {"generation.per_tuple": ["20", "50"]} (values typed by the config)."""
    grid = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid expects key=v1,v2,..., got '{item}'")
        key, values = item.split("=", 1)
        grid[key.strip()] = [v for v in values.split(";" if ";" in values else ",") if v != ""]
    return grid


def trial_configs(base: Config, strategies: list[str], seeds: list[int], methods: list[str],
                  grid: dict[str, list] | None = None) -> list[Config]:  # fmt: skip
    """One validated config per point of strategies x methods x seeds x grid; bad values fail here,
    before anything runs. Methods that make no new classes ignore the strategy (run once per seed)."""
    from scoremix_ray.methods import get_method

    grid = grid or {}
    out, seen = [], set()
    for method, strategy, seed, *values in itertools.product(methods, strategies, seeds, *grid.values()):
        if not get_method(method).new_classes:
            strategy = "none"
        axes = dict(zip(grid, values))
        name = "-".join([method, strategy, f"s{seed}", *(f"{k.split('.')[-1]}{v}" for k, v in axes.items())])
        if name in seen:
            continue
        seen.add(name)
        sets = [f"name={name}", f"seed={seed}", f"generation.method={method}",
                *([f"selection.strategy={strategy}"] if strategy != "none" else []),
                *(f"{k}={v}" for k, v in axes.items())]  # fmt: skip
        out.append(with_overrides(base, sets))
    return out


def trial_work(cfg: Config) -> dict[str, float]:
    """CPUs and GPUs a trial's inner work holds at its busiest (its phases run one after the other): its Train
    run, its generation actors, or its evaluation task (1 GPU when the run uses GPUs)."""
    from scoremix_ray.distributed.runtime import resolve_devices

    cfg = resolve_devices(cfg)
    train_gpus = cfg.ray.num_workers if cfg.ray.use_gpu else 0
    return {"CPU": max(cfg.ray.num_workers * cfg.ray.cpus_per_worker, cfg.generation.num_actors * cfg.generation.actor_cpus),
            "GPU": max(train_gpus, cfg.generation.num_actors * cfg.generation.actor_gpus, 1 if cfg.ray.use_gpu else 0)}  # fmt: skip


def fit_to_cluster(cfg: Config, cpus: float) -> Config:
    """Shrink the per-worker CPU request if one trial could never fit (e.g. 2 CPUs per worker on a 2-CPU box
    plus the trial's sliver); the worker keeps round(cpus_per_worker) torch threads."""
    if trial_work(cfg)["CPU"] + TRIAL_CPU > cpus:
        per = math.floor((cpus - TRIAL_CPU) / cfg.ray.num_workers * 100) / 100
        log.info("sweep: ray.cpus_per_worker %.2f -> %.2f so a trial's Train run fits %g CPUs",
                 cfg.ray.cpus_per_worker, per, cpus)
        cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"cpus_per_worker": per})})
    return cfg


def concurrency(configs: list[Config], cpus: float, gpus: float = 0.0) -> int:
    """As many trials as their inner work fits side by side, counting CPUs and GPUs. A trial holds only
    TRIAL_CPU itself (Ray Train V2 under Tune: the trial is the Train driver; the workers, actors and the
    evaluation task reserve their own CPUs and GPUs), so the inner work of running trials queues for resources
    but can always start: work + n * TRIAL_CPU <= cpus, and n * GPU work <= gpus."""
    work = {k: max(trial_work(c)[k] for c in configs) for k in ("CPU", "GPU")}
    n = max(1, int(cpus // work["CPU"]))
    while n > 1 and work["CPU"] + n * TRIAL_CPU > cpus:
        n -= 1
    if work["GPU"] > 0:
        if work["GPU"] > gpus:
            log.warning("sweep: a trial needs %g GPU(s), the cluster has %g now: trials wait for the autoscaler",
                        work["GPU"], gpus)  # fmt: skip
        n = max(1, min(n, int(gpus // work["GPU"])))
    return n


def _trial(config: dict) -> dict:
    """One Tune trial: the run's stages 4-7 (stages 1-3 are already cached)."""
    from scoremix_ray import pipeline
    from scoremix_ray.tracking import flat_metrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = Config.model_validate(config["config"])
    pipeline.write_run_config(cfg)
    result = pipeline.run(cfg)
    metrics = json.loads(Path(result["metrics"]).read_text())
    return {"run_dir": str(cfg.run_dir), "grid": result["generate"]["grid"], **flat_metrics(metrics)}


def _mlflow_callback(parent: str):
    from ray.tune import Callback

    from scoremix_ray import tracking

    class MLflowTrials(Callback):
        """Logs each trial to MLflow as it ends (the driver is the only writer)."""

        def on_trial_complete(self, iteration, trials, trial, **info):
            cfg = Config.model_validate(trial.config["config"])
            metrics = json.loads((cfg.run_dir / "metrics.json").read_text())
            tracking.log_run(cfg, metrics, tracking.run_artifacts(cfg, {"generate": {"grid": trial.last_result["grid"]}}),
                             parent=parent)  # fmt: skip

        def on_trial_error(self, iteration, trials, trial, **info):
            cfg = Config.model_validate(trial.config["config"])
            error = _trial_error(trial)
            log.error("sweep: trial %s failed: %s", cfg.name, error.strip().splitlines()[-1] if error else "?")
            tracking.log_run(cfg, None, [cfg.run_dir / "config.yaml"], parent=parent, status="FAILED", error=error)

    return MLflowTrials()


def _trial_error(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text()
    return str(getattr(trial, "error_msg", "") or "")


def shared_settings(configs: list[Config]) -> list[Config]:
    """One config per distinct stages 1-3 (data, generator, baseline recognizer and seed), in trial order:
    each is computed once, before the trials, and every trial that shares it reuses it."""
    cells: dict[str, Config] = {}
    for c in configs:
        cells.setdefault(section_hash(c, "data", "generator", "recognizer"), c)
    return list(cells.values())


def widen_for_driver(cfg: Config, cpus: float) -> Config:
    """Shared stages run one at a time before any trial: on a single node give their Train worker every CPU
    (trials may be sized to share the node). CPUs are not in any stage's cache key."""
    import ray

    if len(ray.nodes()) != 1 or cfg.ray.use_gpu:  # (resolved): GPU workers keep their own CPU share
        return cfg
    per = math.floor(cpus / cfg.ray.num_workers * 100) / 100
    return cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"cpus_per_worker": max(per, cfg.ray.cpus_per_worker)})})


def run_sweep(base: Config, strategies: list[str], seeds: list[int], methods: list[str] | None = None,
              grid: dict[str, list] | None = None, name: str = "sweep", tags: dict | None = None) -> dict:  # fmt: skip
    """Shared stages per (fold, seed), then one Tune trial per config; returns a summary (also
    `<out>/<name>.json`). `tags` go on the MLflow parent run."""
    import ray
    from ray import tune

    from scoremix_ray import pipeline, tracking
    from scoremix_ray.distributed.runtime import ensure_ray, resolve_devices

    configs = trial_configs(base, strategies, seeds, methods or [base.generation.method], grid)
    ensure_ray(base.ray)
    cpus, gpus = ray.cluster_resources().get("CPU", 1.0), ray.cluster_resources().get("GPU", 0.0)
    configs = [fit_to_cluster(resolve_devices(c), cpus) for c in configs]
    splits: dict[str, object] = {}  # every trial's checks on the data, in seconds, before any training
    for c in configs:
        key = section_hash(c, "data", seed=False)
        splits[key] = splits[key] if key in splits else pipeline.data_stage(c)[0]
        pipeline.check_with_data(c, splits[key])
    cells = shared_settings(configs)
    for i, c in enumerate(cells, 1):
        log.info("sweep: shared stages %d/%d (data.split_seed %d, seed %d)", i, len(cells), c.data.split_seed, c.seed)
        pipeline.shared_stages(widen_for_driver(c, cpus))
    at_once = concurrency(configs, cpus, gpus)
    log.info("sweep: %d trials, %d at a time on %g CPUs, %g GPUs", len(configs), at_once, cpus, gpus)
    parent = tracking.start_parent(base, name, {"scoremix.trials": str(len(configs)), **(tags or {})})
    status = "FAILED"
    try:
        tuner = tune.Tuner(
            tune.with_resources(_trial, {"cpu": TRIAL_CPU}),
            param_space={"config": tune.grid_search([c.model_dump(mode="json") for c in configs])},
            tune_config=tune.TuneConfig(max_concurrent_trials=at_once),
            run_config=tune.RunConfig(name=name, storage_path=str(Path(base.out_dir).resolve() / "ray_tune"),
                                      callbacks=[_mlflow_callback(parent)],
                                      failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
        )  # fmt: skip
        grid_results = tuner.fit()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.end_run(base, parent, status)
    trials = []
    for r in grid_results:
        cfg = Config.model_validate(r.config["config"])
        trials.append({"name": cfg.name, "run_dir": str(cfg.run_dir), "error": None if r.error is None else str(r.error),
                       **{k: v for k, v in (r.metrics or {}).items() if "." in k}})  # fmt: skip
    summary = {"name": name, "parent_run_id": parent, "tracking_uri": tracking.tracking_uri(base), "trials": trials}
    (Path(base.out_dir) / f"{name}.json").write_text(json.dumps(summary, indent=2))
    return summary
