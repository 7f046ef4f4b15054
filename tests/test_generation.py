"""Stage 5: the ScoreMix plan, shards through a Ray Data actor pool, determinism, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from scoremix_ray.config import Config
from scoremix_ray.core.diffusion.sampler import sample_seed, tuple_key
from scoremix_ray.core.generation import read_shards, render_unit, unit_path, units, write_plan
from scoremix_ray.core.methods import PlanContext, RenderContext, get_method
from scoremix_ray.core.selection.strategies import Selection
from scoremix_ray.foundations.errors import ScoreMixError


def _cfg(tmp_path, **generation):
    return Config.model_validate(
        {
            "out_dir": str(tmp_path),
            "data": {"image_size": 8},
            "sampler": {"steps": 6},
            "generation": {"per_tuple": 10, "unit_size": 8, **generation},
        }
    )


SEL = Selection("test", np.array([[0, 3], [1, 2], [2, 4]]), np.array([0.9, 0.8, 0.7]))


def _images(out_dir):
    t = read_shards(out_dir)
    keys = list(zip(t.column("label").to_pylist(), t.column("index").to_pylist()))
    assert len(keys) == len(set(keys)), "a (label, index) row written twice"
    return dict(zip(keys, t.column("image").to_pylist()))


def _reference(cfg, net, out_dir):
    """The same units in a plain loop, one process, no Ray."""
    method = get_method("scoremix")
    plan = method.plan(PlanContext(cfg, 5, SEL))
    write_plan(out_dir, plan)
    ctx = RenderContext(cfg, net)
    for u, lo, hi in units(len(plan), cfg.generation.unit_size):
        render_unit(ctx, method, plan, u, lo, hi, out_dir)
    return plan


def test_scoremix_plan_rows(tmp_path):
    cfg = _cfg(tmp_path)
    plan = get_method("scoremix").plan(PlanContext(cfg, 5, SEL))
    assert len(plan) == 30 and plan.column("label").to_pylist()[::10] == [5, 6, 7]  # new classes 5 + rank
    assert plan.column("weights")[0].as_py() == [0.5, 0.5]  # uniform by default
    assert plan.column("seed")[12].as_py() == sample_seed(0, tuple_key([1, 2]), 2)
    with pytest.raises(ScoreMixError, match="generation.weights has 2 values for tuples of 3 classes"):
        get_method("scoremix").plan(
            PlanContext(_cfg(tmp_path, weights=(0.5, 0.5)), 5, Selection("t", np.array([[0, 1, 2]]), np.zeros(1)))
        )
    write_plan(tmp_path / "g", plan)
    with pytest.raises(ScoreMixError, match="different plan"):
        write_plan(tmp_path / "g", plan.slice(0, 10))
    with pytest.raises(ScoreMixError, match="unknown generation.method 'stylegan'"):
        get_method("stylegan")


def test_actor_pool_is_byte_identical_and_resumes(ray_session, tiny_generator, tmp_path):
    from scoremix_ray.runtime.context import start
    from scoremix_ray.runtime.generate import generate_shards

    net, _, _, gen_dir = tiny_generator
    cfg = _cfg(tmp_path)
    plan = _reference(cfg, net, tmp_path / "ref")
    ref = _images(tmp_path / "ref")
    assert len(ref) == 30
    for actors in (1, 2):
        cfg_n = _cfg(tmp_path, num_actors=actors)
        out = tmp_path / f"actors{actors}"
        m = generate_shards(*start(cfg_n), "scoremix", plan, gen_dir, tmp_path / "none.npz", out)
        assert m["complete"] and m["rows_written"] == 30 and len(m["shards"]) == 4
        assert m["devices"] == ["cpu"] and m["steady_images_per_s"] > 0  # actors on the CPU: no GPU here
        assert _images(out) == ref  # byte-identical PNGs whatever the actor count
    # lose one shard, truncate another: a rerun renders exactly those two units again
    out = tmp_path / "actors2"
    unit_path(out, 1).unlink()
    unit_path(out, 3).write_bytes(unit_path(out, 3).read_bytes()[:50])
    m = generate_shards(*start(_cfg(tmp_path, num_actors=2)), "scoremix", plan, gen_dir, tmp_path / "none.npz", out)
    assert m["rendered"] == 8 + 6 and m["complete"]
    assert _images(out) == ref
    # a complete folder renders nothing
    assert generate_shards(*start(cfg), "scoremix", plan, gen_dir, tmp_path / "none.npz", out)["rendered"] == 0
    schema = pq.read_schema(unit_path(out, 0))
    assert schema.names == ["image", "label", "method", "classes", "weights", "seed", "index"]


KILLED_JOB = """
import sys, ray
from pathlib import Path
from scoremix_ray.config import Config
from scoremix_ray.runtime.context import start
from scoremix_ray.runtime.generate import generate_shards
from scoremix_ray.core.methods import PlanContext, get_method
from scoremix_ray.core.selection.strategies import Selection
import numpy as np
ray.init(address=sys.argv[1], log_to_driver=False)
cfg = Config.model_validate(
    {"data": {"image_size": 8}, "sampler": {"steps": 20}, "generation": {"per_tuple": 40, "unit_size": 4}})
sel = Selection("t", np.array([[0, 3], [1, 2], [2, 4]]), np.zeros(3))
plan = get_method("scoremix").plan(PlanContext(cfg, 5, sel))
generate_shards(*start(cfg), "scoremix", plan, Path(sys.argv[2]), Path("none.npz"), Path(sys.argv[3]))
"""


def test_killed_job_resumes_without_loss_or_duplicates(ray_session, tiny_generator, tmp_path):
    import ray

    from scoremix_ray.runtime.context import start
    from scoremix_ray.runtime.generate import generate_shards

    gen_dir = tiny_generator[3]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_JOB, ray.get_runtime_context().gcs_address, str(gen_dir), str(out)],
        start_new_session=True,
    )
    deadline = time.time() + 90
    while time.time() < deadline and len(list((out / "shards").glob("unit-*.parquet"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-generation
    proc.wait()
    written = len(list((out / "shards").glob("unit-*.parquet")))
    assert 2 <= written < 30, f"kill came too late to test anything ({written} of 30 units written)"
    cfg = Config.model_validate(
        {"data": {"image_size": 8}, "sampler": {"steps": 20}, "generation": {"per_tuple": 40, "unit_size": 4}}
    )
    plan = get_method("scoremix").plan(
        PlanContext(cfg, 5, Selection("t", np.array([[0, 3], [1, 2], [2, 4]]), np.zeros(3)))
    )
    time.sleep(1)  # let Ray reap the dead job's actors
    m = generate_shards(*start(cfg), "scoremix", plan, gen_dir, tmp_path / "none.npz", out)
    assert m["complete"] and m["rendered"] <= 120 - 4 * 2
    imgs = _images(out)
    assert len(imgs) == 120 and set(imgs) == {(5 + r, i) for r in range(3) for i in range(40)}
    assert json.loads((out / "manifest.json").read_text())["complete"]
