"""Per-trial overhead: one small trial as plain calls in this process vs through the project's sweep path.

The trial: select 2 pairs, generate 16 ScoreMix images, train the augmented recognizer 2 epochs on real +
synthetic, evaluate it, on cached shared stages (data, generator, baseline and their MLflow models: computed
first, not timed, by a tracked run that leaves its MLflow store, as the earlier command in a real out_dir does).
  (a) in process: the same functions the stages call, no Ray (`render_unit`, `train_recognizer`,
      `evaluate_recognizer`), writing to folders of their own;
  (b) as a sweep: `run_sweep` with that one trial (Tune trial, Ray Data actor pool, Ray Train, MLflow child
      run), on stage keys (a) did not fill, so it does the same work.
The difference is what the orchestration costs a trial (target: overhead_s <= 5 on a 2-core box). Then a
sweep of 4 such trials: what each trial after the first adds (the sweep's start-up paid once, trial processes
reused). Then the floor, Tune alone: a one-trial sweep of a function that does nothing, and of one that only
imports torch and diffusers (what a trial's fresh process must). Ends with one JSON line {"inprocess_s",
"trial_s", "overhead_s", ..., "per_extra_trial_s", "tune_floor_s", "tune_import_floor_s"}.

    python benchmarks/loop.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

TRIAL = [
    "data.image_size=8",
    "data.per_class=30",
    "data.num_pairs=200",
    "generator.block_out_channels=16,32",
    "generator.steps=30",
    "generator.batch_size=16",
    "sampler.steps=4",
    "recognizer.widths=8,16",
    "recognizer.blocks=1,1",
    "recognizer.epochs=2",
    "recognizer.batch_size=32",
    "recognizer.checkpoint_every=2",
    "selection.count=2",
    "generation.per_tuple=8",
    "generation.unit_size=8",
    "ray.cpus_per_worker=1",
]


def in_process(cfg, shared, out: Path) -> float:
    """Select, generate, train and evaluate with plain calls; seconds."""
    import numpy as np
    import torch

    from scoremix_ray import pipeline
    from scoremix_ray.core.data.batches import InMemory
    from scoremix_ray.core.data.readers import decode_synthetic
    from scoremix_ray.core.data.store import ConcatStore
    from scoremix_ray.core.diffusion.train import load_for_sampling
    from scoremix_ray.core.evaluation.recognizer import evaluate_recognizer
    from scoremix_ray.core.generation import render_unit
    from scoremix_ray.core.methods import PlanContext, RenderContext, get_method
    from scoremix_ray.core.recognition.train import train_recognizer

    torch.set_num_threads(round(cfg.ray.cpus_per_worker))  # what the Train worker and the actor use
    t0 = time.perf_counter()
    split, gen_dir = shared.split, shared.gen_dir
    sel, _ = pipeline.select_stage(cfg, shared)
    method = get_method("scoremix")
    plan = method.plan(PlanContext(cfg, split.train.num_classes, sel, split))
    net, guide = load_for_sampling(gen_dir, cfg.sampler)
    ctx = RenderContext(cfg, net, guide)
    u = cfg.generation.unit_size
    for k, lo in enumerate(range(0, len(plan), u)):
        render_unit(ctx, method, plan, k, lo, min(lo + u, len(plan)), out / "gen")
    _, size, _, channels = split.train.images.shape
    synth = decode_synthetic(out / "gen" / "shards", out / "decoded", size, channels)
    images = ConcatStore([split.train.images, synth])
    labels = np.concatenate([split.train.labels, synth.labels])
    n = int(labels.max()) + 1
    train_recognizer(InMemory(images, labels), n, cfg.recognizer, cfg.seed, out / "rec")
    evaluate_recognizer(cfg, shared.data_dir / "split.npz", out / "rec")
    return time.perf_counter() - t0


def _nothing(config: dict) -> dict:
    return {"done": 1}


def _imports(config: dict) -> dict:
    import torch  # noqa: F401
    from diffusers import UNet2DModel  # noqa: F401 -- what the generator's network needs

    return {"done": 1}


def tune_floor(fn, out: Path) -> float:
    """Seconds of a one-trial Tune sweep of `fn`, with the project's sweep settings (reused trial processes)."""
    from ray import tune

    t0 = time.perf_counter()
    tune.Tuner(
        fn,
        param_space={"x": tune.grid_search([0])},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(out / "floor"), verbose=0),
    ).fit()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--log", default="WARNING", help="scoremix_ray log level (INFO: the sweep path's phases with times)"
    )
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("scoremix_ray").setLevel(a.log)

    import ray

    from scoremix_ray import pipeline
    from scoremix_ray.config import load_config
    from scoremix_ray.runtime import tracking
    from scoremix_ray.runtime.context import start
    from tuning.sweep import run_sweep

    out = a.out or Path(tempfile.mkdtemp(prefix="loop-"))
    from scoremix_ray.runtime.context import RUNTIME_ENV

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, runtime_env=RUNTIME_ENV)
    base = load_config(None, [f"out_dir={out}", *TRIAL])
    # cached for both, not timed; as the earlier command that cached them, it leaves an MLflow store behind
    ctx, cfg = start(base)
    with tracking.writer(cfg) as tracker, tracking.live_run(cfg.model_copy(update={"name": "setup"}), tracker):
        shared = pipeline.shared(ctx, cfg)
    tracking.save_models(cfg, {"generator": shared.gen_dir, "baseline": shared.rec_dir})  # as `run` logs them
    pipeline.alignment_stage(cfg, shared)
    inproc = in_process(cfg, shared, out / "plain")
    t0 = time.perf_counter()
    summary = run_sweep(base, [base.selection.strategy], [base.seed], name=f"loop-{time.time_ns()}")
    trial = time.perf_counter() - t0
    assert not any(t["error"] for t in summary["trials"]), summary["trials"]
    stages = json.loads((Path(summary["trials"][0]["run_dir"]) / "stages.json").read_text())
    gen = json.loads((Path(stages["generate"]["dir"]) / "generation.json").read_text())
    # the same trial's cost inside a longer sweep: 4 strategies (4 trials of the same size, 2 at a time, each
    # process reused by the next trial): what one more trial adds once the sweep's own start-up is paid
    four = ["random", "embedding-close", "condition-distant", "condition-close"]
    t0 = time.perf_counter()
    summary = run_sweep(base, four, [base.seed], name=f"loop4-{time.time_ns()}")
    sweep4 = time.perf_counter() - t0
    assert not any(t["error"] for t in summary["trials"]), summary["trials"]
    extra = (sweep4 - trial) / (len(four) - 1)
    floor, import_floor = tune_floor(_nothing, out), tune_floor(_imports, out)
    print(
        f"in process: {inproc:.1f} s; as a sweep trial: {trial:.1f} s ({trial / inproc:.2f}x); "
        f"Ray Data generation inside it: {gen['seconds']:.1f} s for {gen['rendered']} images; a sweep of "
        f"{len(four)} such trials: {sweep4:.1f} s, {extra:.1f} s per trial after the first; Tune alone: "
        f"{floor:.1f} s a trial doing nothing, {import_floor:.1f} s one importing torch and diffusers"
    )
    print(
        json.dumps(
            {
                "inprocess_s": round(inproc, 2),
                "trial_s": round(trial, 2),
                "overhead_s": round(trial - inproc, 2),
                "ratio": round(trial / inproc, 2),
                "generation_s": round(gen["seconds"], 2),
                "sweep4_s": round(sweep4, 2),
                "per_extra_trial_s": round(extra, 2),
                "tune_floor_s": round(floor, 2),
                "tune_import_floor_s": round(import_floor, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
