"""Ray Train: the generator's training loop on `TorchTrainer` workers (data-parallel, CPU or GPU)."""

from __future__ import annotations

import logging
from pathlib import Path

from scoremix_ray.config import Config

log = logging.getLogger("scoremix_ray")


def _generator_worker(conf: dict) -> None:
    """Runs on every Ray Train worker: load the split, run the shared loop, report to Ray Train."""
    import torch
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from scoremix_ray.config import Config
    from scoremix_ray.data import Split
    from scoremix_ray.diffusion.train import train_generator

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = Config.model_validate(conf["config"])
    torch.set_num_threads(max(1, int(cfg.ray.cpus_per_worker)))
    ctx = ray.train.get_context()
    world = ctx.get_world_size()
    split = Split.load(conf["split_path"])

    def report(metrics: dict, ckpt_dir: Path | None) -> None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None)

    train_generator(
        split.train.images, split.train.labels, split.train.num_classes, cfg.generator, cfg.seed,
        conf["out_dir"], rank=ctx.get_world_rank(), world_size=world,
        prepare=ray.train.torch.prepare_model if world > 1 else (lambda m: m.to(ray.train.torch.get_device())),
        report=report, device=str(ray.train.torch.get_device()),
    )  # fmt: skip


def fit_generator(cfg: Config, split_path: Path, out_dir: Path) -> dict:
    """Train (or resume) the generator with `TorchTrainer`; returns the last reported metrics."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from scoremix_ray.distributed.runtime import ensure_ray

    ensure_ray(cfg.ray)
    out_dir = Path(out_dir).resolve()
    trainer = TorchTrainer(
        _generator_worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), "split_path": str(Path(split_path).resolve()),
                           "out_dir": str(out_dir)},
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker={"CPU": cfg.ray.cpus_per_worker}),
        run_config=RunConfig(name="generator", storage_path=str(out_dir / "ray_train")),
    )  # fmt: skip
    result = trainer.fit()
    return dict(result.metrics or {})
