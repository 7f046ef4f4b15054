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
