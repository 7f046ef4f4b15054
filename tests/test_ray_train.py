"""The generator through Ray Train's TorchTrainer, data-parallel with 2 CPU workers."""

from scoremix_ray.config import load_config
from scoremix_ray.core.diffusion.edm import EDMDenoiser
from scoremix_ray.pipeline import data_stage
from scoremix_ray.runtime.context import start
from scoremix_ray.runtime.train import fit


def test_torchtrainer_two_workers(ray_session, tmp_path):
    cfg = load_config(
        None,
        [
            f"out_dir={tmp_path}",
            "data.image_size=8",
            "data.per_class=30",
            "generator.block_out_channels=16,32",
            "generator.steps=20",
            "generator.batch_size=16",
            "generator.checkpoint_every=10",
            "generator.log_every=10",
            "ray.num_workers=2",
            "ray.cpus_per_worker=1",
        ],
    )
    ctx, cfg = start(cfg)
    split, data_dir = data_stage(cfg)
    metrics = fit(ctx, cfg, "generator", data_dir / "split.npz", tmp_path / "gen")
    assert metrics["step"] == 20 and metrics["loss"] > 0  # Result.metrics is filled (checkpoint reported)
    net = EDMDenoiser.load(tmp_path / "gen" / "final")
    assert net.num_classes == split.train.num_classes
    ckpts = sorted(p.name for p in (tmp_path / "gen" / "checkpoints").iterdir())
    assert ckpts == ["step_0000010", "step_0000020"]
    # (a fit that resumes from its checkpoints on Ray Train, to the same weights: tests/cluster_faults.py)
