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
# Ray Train's controller polls its workers every 2 s: a finished tiny training waited ~4 s for it to notice (a
# third of a 20-step fit, measured). A missed poll is harmless (workers count as hung only after 10 min).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (ray.init costs ~5 s and ~0.7 GB)."""
    import ray

    from scoremix_ray.runtime.context import RUNTIME_ENV

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=str(_SESSION_HOME / "ray"),
        log_to_driver=False,
        configure_logging=False,
        runtime_env=RUNTIME_ENV,  # the job's Ray settings, as `runtime.context.ensure_ray` passes them
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def digits_split():
    from scoremix_ray.config import DataConfig
    from scoremix_ray.core.data import load_labelled, make_split

    dc = DataConfig(image_size=16, per_class=40, num_pairs=200)
    return make_split(load_labelled("digits", None, 16, 1), dc)


TINY_GEN = {
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "batch_size": 16,
    "steps": 40,
    "warmup_steps": 5,
    "checkpoint_every": 20,
    "log_every": 10,
    "lr": 2e-3,
}

# the whole pipeline at toy size: 8x8 digits, a 30-step generator, a 3-epoch recognizer
TINY_RUN = [
    "data.image_size=8",
    "data.per_class=30",
    "data.num_pairs=200",
    "generator.block_out_channels=16,32",
    "generator.steps=30",
    "generator.batch_size=16",
    "generator.log_every=10",
    "sampler.steps=4",
    "recognizer.widths=8,16",
    "recognizer.blocks=1,1",
    "recognizer.epochs=3",
    "recognizer.batch_size=32",
    "selection.count=2",
    "generation.per_tuple=8",
    "generation.unit_size=8",
    "ray.cpus_per_worker=1",
    "tracking.log_models=false",  # the tiny sweep logs them (tests/test_orchestrator.py): ~2 s a run elsewhere
]


@pytest.fixture(scope="session")
def tiny_generator(tmp_path_factory):
    """A tiny EDM generator trained briefly on 8x8 digits (5 classes): (net, guide_net, split, folder)."""
    from scoremix_ray.config import DataConfig, GeneratorConfig
    from scoremix_ray.core.data import load_labelled, make_split
    from scoremix_ray.core.data.batches import InMemory
    from scoremix_ray.core.diffusion.train import load_generator, train_generator

    split = make_split(load_labelled("digits", None, 8, 1), DataConfig(image_size=8, per_class=60, num_pairs=100))
    d = tmp_path_factory.mktemp("tinygen")
    cfg = GeneratorConfig(**{**TINY_GEN, "steps": 120, "label_dropout": 0.1})
    train_generator(InMemory(split.train.images, split.train.labels), split.train.num_classes, cfg, 0, d)
    return load_generator(d), load_generator(d, "guide"), split, d


@pytest.fixture(scope="session")
def tiny_recognizer(tiny_generator, tmp_path_factory):
    """A tiny baseline recognizer on the tiny generator's split: its stage folder (final/, centres.npy)."""
    import numpy as np

    from scoremix_ray.config import RecognizerConfig
    from scoremix_ray.core.data.batches import InMemory
    from scoremix_ray.core.recognition.train import Recognizer, class_centres, embed, train_recognizer

    split = tiny_generator[2]
    d = tmp_path_factory.mktemp("rec")
    cfg = RecognizerConfig(widths=(8, 16), blocks=(1, 1), embedding_dim=16, epochs=15, batch_size=32)
    train_recognizer(InMemory(split.train.images, split.train.labels), split.train.num_classes, cfg, 0, d)
    net = Recognizer.load(d / "final")
    np.save(d / "centres.npy", class_centres(embed(net, split.train.images), split.train.labels, 5))
    return d


@pytest.fixture(scope="session")
def tiny_benchmarks(tmp_path_factory) -> str:
    """A `--set` override naming three tiny benchmarks in their published layouts: a .bin of 8x8 digit pairs,
    an IJB-C folder of 20 templates and a TinyFace folder (tests/face_fixtures.py)."""
    import numpy as np
    from face_fixtures import make_ijb, make_tinyface

    from scoremix_ray.core.data import load_labelled
    from scoremix_ray.core.data.images import encode_png
    from scoremix_ray.core.data.recordio import write_bin

    d = tmp_path_factory.mktemp("benchmarks")
    digits = load_labelled("digits", None, 8, 1)
    rng = np.random.default_rng(0)
    blobs, issame = [], []
    for k in range(40):
        a = int(rng.integers(len(digits.labels)))
        pool = np.flatnonzero((digits.labels == digits.labels[a]) == (k % 2 == 0))
        blobs += [encode_png(digits.images[a]), encode_png(digits.images[int(rng.choice(pool))])]
        issame.append(k % 2 == 0)
    write_bin(d / "tiny.bin", blobs, issame)
    make_ijb(d / "IJBC")
    make_tinyface(d / "tinyface")
    return (
        f"evaluation.benchmarks=[{{name: tiny_bin, kind: bin, path: {d / 'tiny.bin'}}}, "
        f"{{name: ijbc, kind: ijb, path: {d / 'IJBC'}}}, {{name: tinyface, kind: tinyface, path: {d / 'tinyface'}}}]"
    )


@pytest.fixture(scope="session")
def tiny_sweep(ray_session, tiny_benchmarks, tmp_path_factory):
    """A 3-trial sweep on the session's Ray, every recognizer evaluated on the tiny benchmarks. One trial fails
    at run time: a file stands where its run folder goes (as a full disk or a permission would); the others go
    on. Its stages are reused by the job test, the resume tests and the tiny study."""
    from scoremix_ray.config import load_config
    from tuning.sweep import run_sweep

    out = tmp_path_factory.mktemp("sweep")
    base = load_config(None, [f"out_dir={out}", *TINY_RUN, tiny_benchmarks, "tracking.log_models=true"])
    (out / "scoremix-condition-close-s0").write_text("not a folder")
    summary = run_sweep(base, ["random", "embedding-distant", "condition-close"], [0], name="tiny")
    return out, base, summary
