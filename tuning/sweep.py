"""Ray Tune sweep: selection strategies x methods x seeds (x any config key), one MLflow child run per trial.

    scoremix-ray sweep --strategies random,embedding-distant --seeds 0,1 [--grid generation.per_tuple=20,50]
    python -m scoremix_ray sweep ...   (the same, e.g. as a `ray job submit` entrypoint)

Shared stages (data, generator, baseline recognizer) are computed once per fold and seed in the driver before any
trial starts, so trials only select, generate and train the augmented recognizer. A trial whose work is one
Train worker and one generation actor on CPUs does it in its own process, holding those CPUs; otherwise it
starts Ray Data actors and a Ray Train run of its own, reserving a sliver of CPU itself, with the concurrency
capped by what one trial's inner work needs, so inner placement groups always fit (no deadlock on 2 CPUs).
A trial's process is reused by the next trial (imports and data loaded once per process).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import traceback
from pathlib import Path

from scoremix_ray import pipeline
from scoremix_ray.config import Config, ConfigError, section_hash, settings, with_overrides
from scoremix_ray.core.methods import get_method
from scoremix_ray.foundations.progress import Progress, lines_to
from scoremix_ray.runtime import tracking
from scoremix_ray.runtime.checks import check_config, check_with_data
from scoremix_ray.runtime.context import RunContext, start
from scoremix_ray.runtime.preflight import on_a_cluster
from scoremix_ray.runtime.train import cached as fits

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


def trial_configs(
    base: Config, strategies: list[str], seeds: list[int], methods: list[str], grid: dict[str, list] | None = None
) -> list[Config]:
    """One validated config per point of strategies x methods x seeds x grid; bad values fail here,
    before anything runs. Methods that make no new classes ignore the strategy (run once per seed)."""
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
        sets = [
            f"name={name}",
            f"seed={seed}",
            f"generation.method={method}",
            *([f"selection.strategy={strategy}"] if strategy != "none" else []),
            *(f"{k}={v}" for k, v in axes.items()),
        ]
        out.append(check_config(with_overrides(base, sets)))
    return out


def trial_work(cfg: Config) -> dict[str, float]:
    """CPUs and GPUs a trial's inner work holds at its busiest (its phases run one after the other): its Train
    run, its generation actors, or its evaluation task (1 GPU when the run uses GPUs). `cfg`: devices resolved."""
    train_gpus = cfg.ray.num_workers if cfg.ray.use_gpu else 0
    return {
        "CPU": max(
            cfg.ray.num_workers * cfg.ray.cpus_per_worker, cfg.generation.num_actors * cfg.generation.actor_cpus
        ),
        "GPU": max(train_gpus, cfg.generation.num_actors * cfg.generation.actor_gpus, 1 if cfg.ray.use_gpu else 0),
    }


def fit_to_cluster(cfg: Config, cpus: float) -> Config:
    """Shrink the per-worker CPU request if one trial could never fit (e.g. 2 CPUs per worker on a 2-CPU box
    plus the trial's sliver); the worker keeps round(cpus_per_worker) torch threads."""
    if trial_work(cfg)["CPU"] + TRIAL_CPU > cpus:
        per = math.floor((cpus - TRIAL_CPU) / cfg.ray.num_workers * 100) / 100
        log.info(
            "sweep: ray.cpus_per_worker %.2f -> %.2f so a trial's Train run fits %g CPUs",
            cfg.ray.cpus_per_worker,
            per,
            cpus,
        )
        cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"cpus_per_worker": per})})
    return cfg


def inline_trial(cfg: Config) -> bool:
    """Whether a trial does its own work: 1 Train worker and 1 generation actor, all on CPUs (a sweep on a
    small box); it then holds their CPUs and skips the TorchTrainer and actor-pool start-ups."""
    return cfg.ray.num_workers == 1 and cfg.generation.num_actors == 1 and trial_work(cfg)["GPU"] == 0


def fits_in_cache(cfg: Config, split) -> bool:
    """Whether the augmented training set (real + the method's budget of synthetic images) fits ray.cache_mb."""
    images = split.train.images
    rows = len(images) + (cfg.generation.budget or cfg.selection.count * cfg.generation.per_tuple)
    return fits(cfg, rows * math.prod(images.shape[1:]))


def concurrency(configs: list[Config], cpus: float, gpus: float = 0.0, inline: bool = False) -> int:
    """As many trials as their inner work fits side by side, counting CPUs and GPUs. An inline trial holds
    its work's CPUs itself: n * work <= cpus. Otherwise a trial holds only TRIAL_CPU (Ray Train V2 under Tune:
    the trial is the Train driver; the workers, actors and the evaluation task reserve their own CPUs and
    GPUs), so the inner work of running trials queues for resources but can always start:
    work + n * TRIAL_CPU <= cpus, and n * GPU work <= gpus."""
    work = {k: max(trial_work(c)[k] for c in configs) for k in ("CPU", "GPU")}
    n = max(1, int(cpus // work["CPU"]))
    while n > 1 and not inline and work["CPU"] + n * TRIAL_CPU > cpus:
        n -= 1
    if work["GPU"] > 0:
        if work["GPU"] > gpus:
            log.warning(
                "sweep: a trial needs %g GPU(s), the cluster has %g now: trials wait for the autoscaler",
                work["GPU"],
                gpus,
            )
        n = max(1, min(n, int(gpus // work["GPU"])))
    return n


def _trial(config: dict, ctx: RunContext) -> dict:
    """One Tune trial: the run's stages 4-7 (stages 1-3 are already cached) as a live MLflow child run of the
    context's run (the sweep's parent); a trial an earlier attempt of the same sweep finished returns the
    metrics it wrote, without running again."""
    cfg = Config.model_validate(config["config"])
    ctx = ctx.reporting_to(run_id=ctx.tracker.resolve(ctx.run_id))  # the parent run, once the writer opened it
    if tracking.child_status(ctx.tracker, ctx.run_id, cfg.name) == "FINISHED":
        path = cfg.run_dir / "metrics.json"
        metrics = json.loads(path.read_text()) if path.is_file() else {}
        return {"run_dir": str(cfg.run_dir), "earlier": True, **tracking.flat_metrics(metrics)}
    try:
        # its own recognizer's MLflow model only when every trial logs one (the shared ones are on the parent);
        # its log lines to <out>/logs/<trial>.log, the driver's console says when it ends (`_progress`)
        with lines_to(Path(cfg.out_dir) / "logs" / f"{cfg.name}.log"):
            _, metrics, _ = pipeline.run_tracked(ctx, cfg, ("augmented",) if cfg.tracking.sweep_models == "all" else ())
    except Exception as e:  # noqa: BLE001 -- the trial's own error (bad data, a full disk): a result, not retried
        from ray.exceptions import RayError

        if isinstance(e, RayError):  # a lost node, actor or object: Tune retries the trial (ray.max_failures)
            raise
        return {"run_dir": str(cfg.run_dir), "error": "".join(traceback.format_exception(e))}
    return {"run_dir": str(cfg.run_dir), **tracking.flat_metrics(metrics)}


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
    return cfg.model_copy(
        update={"ray": cfg.ray.model_copy(update={"cpus_per_worker": max(per, cfg.ray.cpus_per_worker)})}
    )


def sweep_key(name: str, configs: list[Config]) -> str:
    """What makes two sweeps the same sweep: its name and what its trials compute (`config.settings`: not where
    or on how many workers, so the same command from another launcher, path or cluster is the same sweep).
    Rerunning it finds its parent run by this key and runs only the trials not yet FINISHED under it."""
    trials = sorted(json.dumps(settings(c, *Config.model_fields, own_stages=True), sort_keys=True) for c in configs)
    return hashlib.sha256((name + "".join(trials)).encode()).hexdigest()[:16]


def run_sweep(
    base: Config,
    strategies: list[str],
    seeds: list[int],
    methods: list[str] | None = None,
    grid: dict[str, list] | None = None,
    name: str = "sweep",
    tags: dict | None = None,
) -> dict:
    """Shared stages per (fold, seed), then one Tune trial per config (one an earlier attempt of the same
    sweep finished returns its metrics at once); returns a summary (also `<out>/<name>.json`). `tags` go on
    the MLflow parent run."""
    import ray

    # Tune runs each trial in a working folder of its own: a relative out_dir would send the trial's stages
    # (and its reads of the cached shared ones) there
    base = base.model_copy(update={"out_dir": Path(base.out_dir).resolve()})
    configs = trial_configs(base, strategies, seeds, methods or [base.generation.method], grid)
    key = sweep_key(name, configs)
    ctx, base = start(base, ray=True)
    on_a_cluster(base)  # before any trial: every node sees out_dir and the tracking store (else one line)
    with tracking.writer(base) as tracker:  # its process starts while the data is checked
        import ray.tune  # noqa: F401 -- ~1 s of imports, here in parallel with the writer's start, not after it

        cpus, gpus = ray.cluster_resources().get("CPU", 1.0), ray.cluster_resources().get("GPU", 0.0)
        configs = [fit_to_cluster(ctx.devices(c), cpus) for c in configs]
        data: dict[Path, tuple] = {}  # every trial's checks on the data, in seconds, before any training
        dirs: dict[str, Path] = {}  # the source fingerprinted once per data setting, not once per trial

        def stage_of(c: Config) -> Path:
            k = json.dumps(settings(c, "data"), sort_keys=True)
            if k not in dirs:
                dirs[k] = pipeline.data_stage_dir(c)
            return dirs[k]

        for c in configs:
            d = stage_of(c)
            data[d] = data[d] if d in data else pipeline.data_stage(c)
            check_with_data(c, data[d][0])
        parent_cfg = base.model_copy(update={"name": name})
        tags = {
            "scoremix.kind": "sweep",
            **(tags or {}),
            "scoremix.trials": str(len(configs)),
            "scoremix.sweep_key": key,
        }
        # an earlier attempt's parent run is found by the key and reopened; its id is a future the trials read once
        # they have started (the writer's start-up, ~2 s here, overlaps Tune's and the trials' own)
        find = f"tags.scoremix.sweep_key = '{key}'"
        with tracking.live_run(parent_cfg, tracker, tags=tags, find=find, wait=False) as parent:
            cells = shared_settings(configs)
            logging_models: list = []  # the shared models' writes, sent while the writer starts, checked after
            for i, c in enumerate(cells, 1):
                log.info(
                    "sweep: shared stages %d/%d (data.split_seed %d, seed %d)", i, len(cells), c.data.split_seed, c.seed
                )
                # their curves go to the parent run, one set per (fold, seed) when there are several
                prefix = f"fold{c.data.split_seed}.seed{c.seed}." if len(cells) > 1 else ""
                split, data_dir = data[stage_of(c)]
                s = pipeline.shared_stages(
                    ctx.reporting_to(tracker, parent, prefix), widen_for_driver(c, cpus), split, data_dir
                )
                # their MLflow models once, on the parent run, before the trials (which then log only their own)
                folder = f"fold{c.data.split_seed}-seed{c.seed}/" if len(cells) > 1 else ""
                models = {"generator": s.gen_dir, "baseline": s.rec_dir}
                logging_models += tracking.log_models(tracker, c, parent, models, folder, wait=False)
            # trials do their own 1-worker CPU work only when each one's training set is cached in memory
            # (streaming needs Ray Data's readers beside the trainer, and the trial would hold their CPUs)
            inline = all(inline_trial(c) and fits_in_cache(c, data[stage_of(c)][0]) for c in configs)
            trial_ctx = RunContext(ctx.gpus, ctx.address, "process" if inline else "ray", tracker, parent)
            try:
                results = _tune(configs, name, base, cpus, gpus, trial_ctx)
            except KeyboardInterrupt:  # the trials' runs end with the sweep's (theirs cannot see the signal)
                for rid, status in tracking.children(tracker, parent).values():
                    if status == "RUNNING":
                        tracking.finish(tracker, rid, "KILLED", "stopped with the sweep")
                raise
            for write in logging_models:
                tracker.resolve(write)
            if base.tracking.log_models and base.tracking.sweep_models == "best":
                log_best_model(tracker, parent, configs, results)
    parent = tracker.resolve(parent)
    trials = [results[c.name] for c in configs]
    earlier = sum(bool(t.get("earlier")) for t in trials)
    log.info(
        "sweep: MLflow parent run %s in %s%s",
        parent,
        tracker.uri,
        f"; {earlier} of {len(trials)} trials had finished in an earlier attempt (not run again)" if earlier else "",
    )
    summary = {"name": name, "parent_run_id": parent, "tracking_uri": tracker.uri, "trials": trials}
    (Path(base.out_dir) / f"{name}.json").write_text(json.dumps(summary, indent=2))
    return summary


BEST_BY = "augmented.verification_accuracy"


def log_best_model(tracker, parent, configs: list[Config], results: dict) -> None:
    """The augmented recognizer of the trial with the highest `BEST_BY` as an MLflow model on that trial's run
    (registered as `tracking.registered_model` when set), and its name as the parent's tag "scoremix.best_trial"."""
    done = [c for c in configs if not results[c.name]["error"] and BEST_BY in results[c.name]]
    if not done:
        return
    best = max(done, key=lambda c: results[c.name][BEST_BY])  # the first of equals, in trial order
    rid, _ = tracking.children(tracker, parent)[best.name]
    stages = json.loads((best.run_dir / "stages.json").read_text())
    tracking.log_models(tracker, best, rid, {"augmented": Path(stages["augmented"]["dir"])})
    tracking.set_tag(tracker, parent, "scoremix.best_trial", best.name)
    log.info(
        "sweep: best trial %s (%s %.4f): its recognizer is the MLflow model augmented_model",
        best.name,
        BEST_BY,
        results[best.name][BEST_BY],
    )


def _progress(total: int, out_dir: str):
    """A Tune callback on the driver: one line per finished trial (its headline metric and log file) and one
    every `PROGRESS_S` with the trials done and the time left."""
    from ray import tune

    class Lines(tune.Callback):
        def __init__(self):
            self.done, self.progress = 0, Progress("sweep", total, "trials")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            result = trial.last_result or {}
            score = result.get(BEST_BY)
            error = (str(result.get("error") or "").strip().splitlines() or ["?"])[-1][:300]
            self.line(trial, f"{BEST_BY} {score:.4f}" if score is not None else f"failed: {error}")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            self.line(trial, "its process died (retried up to ray.max_failures)")

        def line(self, trial, what: str) -> None:
            name = trial.config["config"]["name"]
            log.info(
                "sweep: %d/%d %s: %s (log %s)", self.done, total, name, what, Path(out_dir) / "logs" / f"{name}.log"
            )

        def on_step_end(self, iteration, trials, **info):
            self.progress.tick(self.done, f"{sum(t.status == 'RUNNING' for t in trials)} running")

    return Lines()


def _tune(configs: list[Config], name: str, base: Config, cpus: float, gpus: float, ctx: RunContext) -> dict:
    """The trials as one Tune run, each handed the trials' context (`ctx`: their executor, the MLflow writer and
    the parent run): {trial name: summary row} (`base.out_dir` absolute: `run_sweep` made it so)."""
    from ray import tune

    inline = ctx.executor == "process"
    at_once = concurrency(configs, cpus, gpus, inline)
    log.info(
        "sweep: %d trials, %d at a time on %g CPUs, %g GPUs%s",
        len(configs),
        at_once,
        cpus,
        gpus,
        " (1-worker CPU work inside each trial)" if inline else "",
    )
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(_trial, ctx=ctx),
            {"cpu": max(trial_work(c)["CPU"] for c in configs) if inline else TRIAL_CPU},
        ),
        param_space={"config": tune.grid_search([c.model_dump(mode="json") for c in configs])},
        # a trial's process is reused by the next trial (every stage seeds its own randomness from the config):
        # torch, diffusers and the data are imported and loaded once per process, not once per trial
        tune_config=tune.TuneConfig(max_concurrent_trials=at_once, reuse_actors=True),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(Path(base.out_dir) / "ray_tune"),
            # a trial whose process or node died is run again (its stages resume from their checkpoints); a
            # trial's own error comes back as its result (`_trial`) and is not retried
            failure_config=tune.FailureConfig(max_failures=base.ray.max_failures, fail_fast=False),
            verbose=0,  # Tune's status tables: `_progress` says instead what a user needs, one line a trial
            callbacks=[_progress(len(configs), base.out_dir)],
        ),
    )
    out = {}
    for r in tuner.fit():
        cfg = Config.model_validate(r.config["config"])
        error = str(r.error) if r.error is not None else (r.metrics or {}).get("error")
        error = error if r.metrics or error else "the trial did not finish"
        out[cfg.name] = {
            "name": cfg.name,
            "run_dir": str(cfg.run_dir),
            "error": error,
            **({"earlier": True} if (r.metrics or {}).get("earlier") else {}),
            **{k: v for k, v in (r.metrics or {}).items() if "." in k},
        }
    failed = {n: row["error"] for n, row in out.items() if row["error"]}
    for n, (rid, status) in (tracking.children(ctx.tracker, ctx.run_id) if failed else {}).items():
        if n in failed and status == "RUNNING":  # its process died (out of memory, a lost node) before it could
            tracking.finish(ctx.tracker, rid, "FAILED", failed[n])
    for n, error in failed.items():
        log.error("sweep: trial %s failed: %s", n, error.strip().splitlines()[-1] if error.strip() else "?")
    return out
