"""Shared fixtures. Ray, MLflow and outputs keep their state in temporary folders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Ray and MLflow write under HOME (~/.ray, ~/.mlflow); keep the whole session's state in one temp folder.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="scoremix-test-home-"))
os.environ["HOME"] = str(_SESSION_HOME)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (ray.init costs ~5 s and ~0.7 GB)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(_SESSION_HOME / "ray"),
             log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def digits_split():
    from scoremix_ray.config import DataConfig
    from scoremix_ray.data import load_labelled, make_split

    dc = DataConfig(image_size=16, per_class=40, num_pairs=200)
    return make_split(load_labelled("digits", None, 16, 1), dc)


TINY_GEN = {"block_out_channels": (16, 32), "layers_per_block": 1, "batch_size": 16, "steps": 40,
            "warmup_steps": 5, "checkpoint_every": 20, "log_every": 10, "lr": 2e-3}


@pytest.fixture(scope="session")
def tiny_generator(tmp_path_factory):
    """A tiny EDM generator trained briefly on 8x8 digits (5 classes): (net, guide_net, split, folder)."""
    from scoremix_ray.config import DataConfig, GeneratorConfig
    from scoremix_ray.data import load_labelled, make_split
    from scoremix_ray.diffusion.train import load_generator, train_generator

    split = make_split(load_labelled("digits", None, 8, 1), DataConfig(image_size=8, per_class=60, num_pairs=100))
    d = tmp_path_factory.mktemp("tinygen")
    cfg = GeneratorConfig(**{**TINY_GEN, "steps": 120, "label_dropout": 0.1})
    train_generator(split.train.images, split.train.labels, split.train.num_classes, cfg, 0, d)
    return load_generator(d), load_generator(d, "guide"), split, d
