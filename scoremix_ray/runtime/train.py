"""Ray Train: the generator's and the recognizer's training loops on `TorchTrainer` workers
(data-parallel, CPU or GPU). The loops themselves live in `diffusion/train.py` and `recognition/train.py`.

Ingestion: a training set of at most `ray.cache_mb` is read whole into each worker (the embedded default:
no Ray Data start-up per run). A larger one streams: the driver gives `TorchTrainer(datasets=...)` one Ray
Data dataset per rank (`rank0`, `rank1`, ...), each a list of step blocks that read the rows the seeded
schedule names for that rank from the image stores (map tasks, order preserved); the worker takes its own
with `get_dataset_shard` and iterates `iter_torch_batches`, uint8 until the batch is on its device. Why not
one dataset split by `streaming_split`: it hands blocks to whichever worker asks first, so the rows a rank
sees would vary from run to run; per-rank datasets keep "same config and worker count, same batches".
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from scoremix_ray.config import Config
from scoremix_ray.core.data import Split
from scoremix_ray.core.data.batches import InMemory, Streamed, read_rows, resume_step, schedule
from scoremix_ray.core.data.store import ConcatStore, ImageStore
from scoremix_ray.core.diffusion.train import train_generator
from scoremix_ray.core.evaluation.recognizer import evaluate_bin
from scoremix_ray.core.recognition.train import train_recognizer
from scoremix_ray.foundations.errors import ScoreMixError, first_line
from scoremix_ray.foundations.progress import quiet_console
from scoremix_ray.runtime import tracking
from scoremix_ray.runtime.context import RunContext, resolved

log = logging.getLogger("scoremix_ray")


def training_set(split_path: str | Path, synthetic: str | Path | None = None):
    """(images, labels, num_classes) to train on: the split's training store, then the synthetic store for the
    augmented recognizer, read as one row space. Nothing is read into memory here."""
    train = Split.load(split_path).train
    if synthetic is None:
        return train.images, train.labels, train.num_classes
    synth = ImageStore(synthetic)
    n = max(train.num_classes, int(synth.labels.max()) + 1) if len(synth) else train.num_classes
    return ConcatStore([train.images, synth]), np.concatenate([train.labels, synth.labels]), n


def cached(cfg: Config, nbytes: int) -> bool:
    """Whether a training set of `nbytes` (uint8) is read whole into each worker rather than streamed."""
    return nbytes <= cfg.ray.cache_mb * 2**20


def _section(kind: str, cfg: Config):
    return cfg.generator if kind == "generator" else cfg.recognizer


def rank_datasets(kind: str, cfg: Config, images, labels: np.ndarray, out_dir: Path) -> dict:
    """{"rank<r>": dataset of that rank's batches from its resume step on}: blocks of whole steps, about
    `ray.stream_block_mb` each, read by map tasks of a fraction of a CPU."""
    import ray.data

    world = cfg.ray.num_workers
    out = {}
    for rank in range(world):
        sched = schedule(kind, _section(kind, cfg), len(images), cfg.seed, rank, world)
        start = resume_step(sched, out_dir)
        row_bytes = int(np.prod(images.shape[1:]))
        per_block = max(1, cfg.ray.stream_block_mb * 2**20 // (sched.per_rank * row_bytes))  # steps a block
        starts = list(range(start, sched.total, per_block))

        def read_block(batch: dict, sched=sched, per_block=per_block) -> dict:  # this rank's, bound now
            lo = int(batch["id"][0])
            return read_rows(images, labels, sched, range(lo, min(lo + per_block, sched.total)))

        ds = ray.data.from_items([{"id": s} for s in starts], override_num_blocks=max(1, len(starts)))
        ds = ds.map_batches(read_block, batch_size=1, num_cpus=0.5)
        ds.context.enable_progress_bars = False  # the training loop logs its own progress
        out[f"rank{rank}"] = ds
    return out


def ingest_options(cfg: Config):
    """Blocks in order, and at most STREAM_BLOCKS_AHEAD blocks in Ray's object store per stream: without a cap
    Ray Data reads far ahead of a slow trainer, and every object-store page the worker has read stays mapped
    in it (measured: 2.8 GB RSS, 2 GB of it shared pages, in a 1-worker epoch over 6 GB of images)."""
    from ray.data import ExecutionOptions, ExecutionResources

    cap = STREAM_BLOCKS_AHEAD * cfg.ray.stream_block_mb * 2**20
    return ExecutionOptions(preserve_order=True, resource_limits=ExecutionResources(object_store_memory=cap))


STREAM_BLOCKS_AHEAD = 4  # two being read, two waiting for the trainer


def _worker(conf: dict) -> None:
    """Runs on every Ray Train worker: its feed (cached or its rank's stream), the shared loop, reports."""
    import ray.train
    import ray.train.torch
    import torch
    from ray.train import Checkpoint

    quiet_console()  # Train's console handler, installed before this function runs, as the process's own
    cfg = Config.model_validate(conf["config"])
    torch.set_num_threads(max(1, round(cfg.ray.cpus_per_worker)))  # 1.99 CPUs in a sweep: still 2 threads
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    device = ray.train.torch.get_device()  # its own GPU under use_gpu (Ray Train sets CUDA_VISIBLE_DEVICES)
    images, labels, n = training_set(conf["split_path"], conf["synthetic"])
    if conf["stream"]:
        shard = ray.train.get_dataset_shard(f"rank{rank}")
        per_rank = schedule(conf["kind"], _section(conf["kind"], cfg), len(images), cfg.seed, rank, world).per_rank
        feed = Streamed(
            shard.iter_torch_batches(batch_size=per_rank, prefetch_batches=2), len(images), images.shape[1:]
        )
    else:
        feed = InMemory(images, labels)

    def report(metrics: dict, ckpt_dir: Path | None) -> None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None)

    prepare = ray.train.torch.prepare_model if world > 1 else (lambda m: m.to(device))
    _train(conf, cfg, feed, n, rank, world, prepare, report, str(device))


def _train(conf: dict, cfg: Config, feed, n: int, rank: int, world: int, prepare, report, device: str) -> dict:
    """The shared loop with its live curve (rank 0 sends it to the open MLflow run); returns the last metrics."""
    live = tracking.monitor(conf["track"], conf["stage"]) if rank == 0 else None  # the curve, to MLflow as it grows
    last: dict = {}

    def watch(metrics: dict, step: int) -> None:
        if "loss" in metrics:  # an epoch's metrics, not a benchmark check's
            last.clear()
            last.update(metrics)
        if live is not None:
            live(metrics, step)

    loop = train_generator if conf["kind"] == "generator" else train_recognizer
    extra = {"check": bin_check(cfg)} if conf["kind"] == "recognizer" and bin_check(cfg) else {}
    try:
        loop(
            feed,
            n,
            _section(conf["kind"], cfg),
            cfg.seed,
            conf["out_dir"],
            rank=rank,
            world_size=world,
            prepare=prepare,
            report=report,
            device=device,
            monitor=watch,
            keep=cfg.ray.checkpoints_kept,
            **extra,
        )
    finally:
        if live is not None:
            live.flush()  # the points it sent are written before the worker ends
    return last


def bin_check(cfg: Config):
    """(N, fn) for the recognizer loop's `check`: the .bin benchmarks every `evaluation.bin_every_steps` steps,
    as "<name>.verification_accuracy" (insightface's verification callback); None when off or no .bin is set."""
    every, bins = cfg.evaluation.bin_every_steps, [b for b in cfg.evaluation.benchmarks if b.kind == "bin"]
    if every is None or not bins:
        return None

    def check(net) -> dict:
        return {
            f"{b.name}.verification_accuracy": evaluate_bin(net, b.path, b.flip)["verification_accuracy"] for b in bins
        }

    return every, check


def _train_here(conf: dict, cfg: Config) -> dict:
    """A 1-worker CPU training in this process (the "process" executor: a sweep trial holding the CPUs): the worker's
    feed, loop and thread count, so the same bytes as under Ray Train; its checkpoints let it resume."""
    import torch

    images, labels, n = training_set(conf["split_path"], conf["synthetic"])
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, round(cfg.ray.cpus_per_worker)))  # as the worker
    try:
        return _train(conf, cfg, InMemory(images, labels), n, 0, 1, lambda m: m, None, "cpu")
    finally:
        torch.set_num_threads(threads)


def fit(
    ctx: RunContext,
    cfg: Config,
    kind: str,
    split_path: Path,
    out_dir: Path,
    synthetic: Path | None = None,
    stage: str | None = None,
) -> dict:
    """Train (or resume) `kind` ("generator" or "recognizer") with `TorchTrainer`, or in this process where the
    context's executor says so; returns the last reported metrics. `synthetic`: the decoded synthetic image
    store added to the recognizer's training set. The curve goes to the context's run, as `stage` (default: the kind
    and set)."""
    cfg = resolved(cfg)
    out_dir = Path(out_dir).resolve()
    split_path = Path(split_path).resolve()
    synthetic = Path(synthetic).resolve() if synthetic else None
    images, labels, _ = training_set(split_path, synthetic)
    stream = not cached(cfg, images.nbytes)
    if stream or not ctx.in_process(cfg.ray.num_workers, cfg.ray.use_gpu):
        ctx.ray()
    if stream:
        import ray

        log.info(
            "%s: %.0f MB of images > ray.cache_mb=%d: streaming through Ray Data",
            kind,
            images.nbytes / 2**20,
            cfg.ray.cache_mb,
        )
        free = ray.cluster_resources().get("CPU", 0) - cfg.ray.num_workers * cfg.ray.cpus_per_worker
        if free < 0.5:  # Ray Data's read tasks take 0.5 CPU; with none left they wait for ever
            log.warning(
                "%s: streaming needs >= 0.5 CPU beside the Train workers, %.1f are free now: lower "
                "ray.cpus_per_worker, or raise ray.cache_mb to cache the data",
                kind,
                max(0.0, free),
            )
    stage = stage or (kind if kind == "generator" else ("augmented" if synthetic else "baseline"))
    conf = {
        "kind": kind,
        "config": cfg.model_dump(mode="json"),
        "split_path": str(split_path),
        "out_dir": str(out_dir),
        "synthetic": str(synthetic) if synthetic else None,
        "stream": stream,
        "stage": stage,
        "track": ctx.curve,
    }
    if not stream and ctx.in_process(cfg.ray.num_workers, cfg.ray.use_gpu):
        log.info("%s: training in this process (1 worker, CPU)", kind)
        return _train_here(conf, cfg)
    from ray.train import DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig  # 0.15 s: not above
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.exceptions import TrainingFailedError

    trainer = TorchTrainer(
        _worker,
        train_loop_config=conf,
        scaling_config=ScalingConfig(
            num_workers=cfg.ray.num_workers,
            use_gpu=cfg.ray.use_gpu,
            resources_per_worker={"CPU": cfg.ray.cpus_per_worker},
        ),
        # a worker or node lost: the group restarts and `_worker` resumes from the newest checkpoint on disk
        run_config=RunConfig(
            name=kind,
            storage_path=str(out_dir / "ray_train"),
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            # Train's own lines (worker group starts, each checkpoint) at WARNING on the console; all of them stay
            # in Ray's session logs (ray-train-*.log); the stage's progress lines are ours and still show
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
        datasets=rank_datasets(kind, cfg, images, labels, out_dir) if stream else None,
        dataset_config=DataConfig(datasets_to_split=[], execution_options=ingest_options(cfg)),
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as e:  # every restart used up: one line, the traceback in the command's log
        log.error("%s: training failed", stage, exc_info=e)
        raise ScoreMixError(
            f"{stage}: training failed after {cfg.ray.max_failures} restart(s) (ray.max_failures): "
            f"{first_line(e.__cause__ or e)}; its checkpoints are kept in {out_dir / 'checkpoints'}: run the "
            "same command again to resume"
        ) from None
    return dict(result.metrics or {})
