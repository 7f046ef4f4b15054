"""Ray Train: the generator's and the recognizer's training loops on `TorchTrainer` workers
(data-parallel, CPU or GPU). The loops themselves live in `diffusion/train.py` and `recognition/train.py`."""

from __future__ import annotations

import logging
from pathlib import Path

from scoremix_ray.config import Config

log = logging.getLogger("scoremix_ray")


def training_set(conf: dict, cfg: Config):
    """(images, labels, num_classes) a worker trains on: the split's training images, plus the synthetic
    Parquet shards for the augmented recognizer."""
    import numpy as np

    from scoremix_ray.data import Split
    from scoremix_ray.data.readers import read_synthetic

    train = Split.load(conf["split_path"]).train
    images, labels, n = train.images, train.labels, train.num_classes
    if conf.get("synthetic"):
        s_images, s_labels = read_synthetic(conf["synthetic"], cfg.data.image_size, cfg.data.channels)
        images, labels = np.concatenate([images, s_images]), np.concatenate([labels, s_labels])
        n = max(n, int(s_labels.max()) + 1)
    return images, labels, n


def _worker(conf: dict) -> None:
    """Runs on every Ray Train worker: load the data, run the shared loop, report to Ray Train."""
    import torch
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from scoremix_ray.diffusion.train import train_generator
    from scoremix_ray.recognition.train import train_recognizer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = Config.model_validate(conf["config"])
    torch.set_num_threads(max(1, round(cfg.ray.cpus_per_worker)))  # 1.99 CPUs in a sweep: still 2 threads
    ctx = ray.train.get_context()
    world = ctx.get_world_size()
    device = ray.train.torch.get_device()  # its own GPU under use_gpu (Ray Train sets CUDA_VISIBLE_DEVICES)
    images, labels, n = training_set(conf, cfg)

    def report(metrics: dict, ckpt_dir: Path | None) -> None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None)

    loop, section = (train_generator, cfg.generator) if conf["kind"] == "generator" else (train_recognizer, cfg.recognizer)
    loop(images, labels, n, section, cfg.seed, conf["out_dir"], rank=ctx.get_world_rank(), world_size=world,
         prepare=ray.train.torch.prepare_model if world > 1 else (lambda m: m.to(device)),
         report=report, device=str(device))  # fmt: skip


def fit(kind: str, cfg: Config, split_path: Path, out_dir: Path, synthetic: Path | None = None) -> dict:
    """Train (or resume) `kind` ("generator" or "recognizer") with `TorchTrainer`; returns the last
    reported metrics. `synthetic`: Parquet shards added to the recognizer's training set."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from scoremix_ray.distributed.runtime import ensure_ray, resolve_devices

    ensure_ray(cfg.ray)
    cfg = resolve_devices(cfg)
    out_dir = Path(out_dir).resolve()
    conf = {"kind": kind, "config": cfg.model_dump(mode="json"), "split_path": str(Path(split_path).resolve()),
            "out_dir": str(out_dir), "synthetic": str(Path(synthetic).resolve()) if synthetic else None}
    trainer = TorchTrainer(
        _worker,
        train_loop_config=conf,
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker={"CPU": cfg.ray.cpus_per_worker}),
        run_config=RunConfig(name=kind, storage_path=str(out_dir / "ray_train")),
    )  # fmt: skip
    result = trainer.fit()
    return dict(result.metrics or {})

