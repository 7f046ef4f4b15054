"""Autoguidance's guide network (`generator.guide.kind: network`): its own cached stage, keyed by its own
settings, never retraining the main generator; the config refuses a guide that is not one."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from scoremix_ray.config import ConfigError, guide_config, load_config, settings
from tests.conftest import TINY_GEN

GUIDED = [
    "data.image_size=8",
    "sampler.steps=4",
    "sampler.guidance=autoguidance",
    "sampler.guidance_scale=2",
    "ray.use_gpu=false",
    *(f"generator.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY_GEN.items()),
    "generator.steps=120",
    "generator.label_dropout=0.1",
]


def _cfg(tmp_path, *extra):
    return load_config(None, [f"out_dir={tmp_path}", *GUIDED, *extra])


def test_a_guide_network_must_differ_from_the_main_one_and_name_real_settings(tmp_path):
    with pytest.raises(ConfigError, match="generator.guide.kind=network needs generator.guide.overrides"):
        _cfg(tmp_path, "generator.guide.kind=network")
    with pytest.raises(ConfigError, match="generator.guide.overrides.*width"):
        _cfg(tmp_path, "generator.guide.kind=network", "generator.guide.overrides.width=8")
    with pytest.raises(ConfigError, match="leave the guide the same network"):
        _cfg(tmp_path, "generator.guide.kind=network", "generator.guide.overrides.steps=120")
    with pytest.raises(ConfigError, match="generator.guide.overrides.min_precision: not a setting of the guide"):
        _cfg(tmp_path, "generator.guide.kind=network", "generator.guide.overrides.min_precision=0.5")
    cfg = _cfg(tmp_path, "generator.guide.kind=network", "generator.guide.overrides.steps=30")
    guide = guide_config(cfg)
    assert guide.generator.steps == 30 and guide.generator.guide.kind == "snapshot"
    assert guide.generator.block_out_channels == cfg.generator.block_out_channels  # the rest inherited


def test_the_guide_network_is_its_own_stage_and_never_retrains_the_main_one(tiny_generator, tmp_path, monkeypatch):
    from scoremix_ray import pipeline
    from scoremix_ray.runtime import train as dtrain
    from scoremix_ray.runtime.context import RunContext

    _, _, split, gen_dir = tiny_generator
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    split.save(data_dir / "split.npz")
    snapshot = _cfg(tmp_path)
    short = _cfg(tmp_path, "generator.guide.kind=network", "generator.guide.overrides.steps=30")
    narrow = _cfg(
        tmp_path,
        "generator.guide.kind=network",
        "generator.guide.overrides.steps=30",
        "generator.guide.overrides.block_out_channels=8,16",
    )
    main = pipeline.GENERATOR.dir(snapshot, {"data": data_dir})
    # the main generator's key holds none of the guide's settings; the guide's stage is a generator stage keyed by
    # its own (a guide with an earlier main generator's settings is that generator's stage)
    assert (
        pipeline.GENERATOR.dir(short, {"data": data_dir}) == main == pipeline.GENERATOR.dir(narrow, {"data": data_dir})
    )
    short_dir = pipeline.GENERATOR.dir(guide_config(short), {"data": data_dir})
    assert short_dir == pipeline.GENERATOR.dir(_cfg(tmp_path, "generator.steps=30"), {"data": data_dir})
    assert short_dir != pipeline.GENERATOR.dir(guide_config(narrow), {"data": data_dir}) != main
    # ... but a sweep's resume key does hold them: two sweeps differing only in their guide are not the same sweep
    assert settings(short, "generator") == settings(narrow, "generator")
    assert settings(short, "generator", own_stages=True) != settings(narrow, "generator", own_stages=True)

    shutil.copytree(gen_dir, main)  # the main generator, trained (its quality not checked yet)
    (main / "train.json").write_text(json.dumps({"step": 120}))
    trained = []
    real_fit = dtrain.fit

    def fit(ctx, cfg, kind, split_path, out_dir, synthetic=None, stage=None):
        trained.append((stage, cfg.generator.steps, tuple(cfg.generator.block_out_channels)))
        return real_fit(ctx, cfg, kind, split_path, out_dir, synthetic, stage)

    monkeypatch.setattr(dtrain, "fit", fit)
    ctx = RunContext(executor="process")
    assert pipeline.guide_stage(ctx, snapshot, data_dir) is None  # the snapshot guide lives in the main stage
    for cfg in (short, narrow, short):
        d, quality = pipeline.generator_stage(ctx, cfg, data_dir)
        assert d == main and 0 <= quality["class_accuracy"] <= 1
    # each guide trained once (the second `short` reused its stage), the main generator never
    assert trained == [("guide", 30, (16, 32)), ("guide", 30, (8, 16))]
    guide_dir = pipeline.guide_stage(ctx, short, data_dir)
    assert guide_dir == short_dir and (guide_dir / "final" / "edm.json").is_file()
    assert json.loads((guide_dir / "train.json").read_text())["step"] == 30

    # a known answer: the 30-step guide network, trained with the main network's seed and schedule, is the main
    # network's EMA snapshot at step 30 (a quarter of its 120 steps), weight for weight
    from scoremix_ray.core.diffusion.train import load_generator

    net, snap = load_generator(guide_dir), load_generator(main, "guide")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), snap.state_dict().values(), strict=True))
    rows = (torch.tensor([[0]] * 3), torch.ones(3, 1), [1, 2, 3])
    narrow_dir = pipeline.guide_stage(ctx, narrow, data_dir)
    by_narrow = pipeline.sample_images(narrow, main, *rows, narrow_dir)
    assert np.array_equal(by_narrow, pipeline.sample_images(narrow, main, *rows, narrow_dir))  # seeded
    assert np.array_equal(
        pipeline.sample_images(short, main, *rows, guide_dir), pipeline.sample_images(snapshot, main, *rows)
    )
    unguided = snapshot.model_copy(update={"sampler": snapshot.sampler.model_copy(update={"guidance": "none"})})
    assert not np.array_equal(by_narrow, pipeline.sample_images(snapshot, main, *rows))
    assert not np.array_equal(by_narrow, pipeline.sample_images(unguided, main, *rows))


def test_each_sampling_policy_gets_its_own_quality_check_and_verdict(tiny_generator, tiny_recognizer, tmp_path):
    """The generator's check (and so the readiness verdict) is of the samples the run draws: a run that samples
    with other guidance than the stage's first check gets a check of its own, the first one stays as it was."""
    from scoremix_ray import pipeline
    from scoremix_ray.runtime.context import RunContext

    _, _, split, gen_dir = tiny_generator
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    split.save(data_dir / "split.npz")
    unguided, guided = _cfg(tmp_path, "sampler.guidance=none"), _cfg(tmp_path)
    main = pipeline.GENERATOR.dir(unguided, {"data": data_dir})
    assert main == pipeline.GENERATOR.dir(guided, {"data": data_dir})  # one generator, two sampling policies
    shutil.copytree(gen_dir, main)
    (main / "train.json").write_text(json.dumps({"step": 120}))
    ctx = RunContext(executor="process")

    _, first = pipeline.generator_stage(ctx, unguided, data_dir)
    assert first["sampled_with"] == pipeline.sampling_policy(unguided, None) and not (main / "checks").exists()
    top = (main / "quality.json").read_text()
    _, second = pipeline.generator_stage(ctx, guided, data_dir)
    own = main / "checks" / pipeline.sampling_policy(guided, None)
    assert second["grid"] == str(own / "samples.png") and (own / "quality_samples.npz").is_file()
    assert (main / "quality.json").read_text() == top  # the first check untouched
    a, b = np.load(main / "quality_samples.npz"), np.load(own / "quality_samples.npz")
    assert np.array_equal(a["labels"], b["labels"]) and not np.array_equal(a["images"], b["images"])

    plain = pipeline.diagnostics_stage(ctx, unguided, data_dir, main, tiny_recognizer)
    steered = pipeline.diagnostics_stage(ctx, guided, data_dir, main, tiny_recognizer)
    assert plain["fd"] != steered["fd"]  # each of its own samples, each kept with its check
    assert json.loads((own / "quality.json").read_text())["recognizer"][tiny_recognizer.name]["fd"] == steered["fd"]
    assert pipeline.generator_stage(ctx, guided, data_dir)[1]["grid"] == second["grid"]  # reused, not redone
    # a check from before the record stands for the unguided default it was made with
    legacy = {k: v for k, v in json.loads(top).items() if k != "sampled_with"}
    (main / "quality.json").write_text(json.dumps(legacy))
    assert pipeline.check_dir(unguided, main, None) == main and pipeline.check_dir(guided, main, None) == own
