"""Devices and guidance without a GPU.

Device placement: every generation path and the recognizer's embedding run with the networks on PyTorch's
`meta` device, which raises on any op mixing it with a CPU tensor, up to the one device -> host crossing
(`devices.to_numpy`, replaced here by a check that what crosses is on the network's device). A path that
builds a tensor on the CPU and forgets to move it fails here as it would on a GPU.
Guidance: one policy (`sampler.guidance`) for every path, checked against the generator before any work.
"""

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from scoremix_ray.config import Config, ConfigError, load_config
from scoremix_ray.core.methods import METHODS, PlanContext, RenderContext, get_method
from scoremix_ray.core.selection.strategies import Selection
from scoremix_ray.foundations import devices
from scoremix_ray.foundations.errors import ScoreMixError

SEL = Selection("t", np.array([[0, 3], [1, 2]]), np.zeros(2))


@pytest.fixture
def crossings(monkeypatch):
    """Replace the device -> host crossing: what crosses must be on `meta`; it comes back as zeros."""
    seen = []

    def to_numpy(x: torch.Tensor) -> np.ndarray:
        assert x.device.type == "meta", f"a result computed on {x.device}, not on the network's device"
        seen.append(tuple(x.shape))
        return np.zeros(tuple(x.shape), np.float32)

    monkeypatch.setattr(devices, "to_numpy", to_numpy)
    return seen


def _cfg(guidance="none", **generation):
    return Config.model_validate(
        {
            "data": {"image_size": 8},
            "sampler": {"steps": 4, "guidance": guidance, "guidance_scale": 1.5},
            "generator": {"label_dropout": 0.1},
            "selection": {"count": 2},
            "generation": {"per_tuple": 3, "filter_candidates": 2, **generation},
        }
    )


def _meta(module):
    return copy.deepcopy(module).to("meta")


@pytest.mark.parametrize("guidance", ["none", "cfg", "autoguidance"])
def test_every_method_renders_with_the_networks_on_meta(tiny_generator, tiny_recognizer, crossings, guidance):
    from scoremix_ray.core.recognition.train import Recognizer

    net, guide, split, _ = tiny_generator
    cfg = _cfg(guidance)
    rec = _meta(Recognizer.load(tiny_recognizer / "final"))
    ctx = RenderContext(
        cfg,
        _meta(net),
        _meta(guide) if guidance == "autoguidance" else None,
        recognizer_dir=tiny_recognizer,
        _split=split,
        _recognizer=rec,
    )
    assert ctx.device.type == "meta"
    get_method("scoremix")
    for name, method in METHODS.items():
        plan = method.plan(PlanContext(cfg, 5, SEL, split)).slice(0, 4)
        out = method.render(ctx, plan)
        images = out[0] if isinstance(out, tuple) else out
        assert images.shape == (4, 8, 8, 1) and images.dtype == np.uint8, name
    # every generative path crossed once per batch of its own network outputs: (4, 1, 8, 8) images; DiffCoRe-Mix
    # also its 8 candidates and their (8, 16) embeddings; mixup/cutmix never touch a network
    assert crossings.count((4, 1, 8, 8)) == 4 and (8, 1, 8, 8) in crossings and (8, 16) in crossings


def test_embedding_and_sampler_on_meta_and_a_leak_is_caught(tiny_generator, tiny_recognizer, crossings):
    from scoremix_ray.core.diffusion.sampler import generate, heun_sample, karras_sigmas, mixed_denoiser
    from scoremix_ray.core.recognition.train import Recognizer, embed

    net, _, split, _ = tiny_generator
    rec = _meta(Recognizer.load(tiny_recognizer / "final"))
    assert embed(rec, split.train.images[:10], batch_size=4, flip=True).shape == (10, 16)
    assert crossings == [(4, 16), (4, 16), (2, 16)]
    meta_net = _meta(net)
    images = generate(meta_net, torch.tensor([[0, 1]] * 3), torch.full((3, 2), 0.5), [1, 2, 3], _cfg().sampler)
    assert images.shape == (3, 8, 8, 1)
    # the negative control: noise left on the CPU with the network elsewhere is an error, not a silent copy
    denoise = mixed_denoiser(meta_net, torch.tensor([[0]]), torch.tensor([[1.0]]))
    with pytest.raises(RuntimeError, match="device"):
        heun_sample(denoise, torch.randn(1, 1, 8, 8), karras_sigmas(3, 0.002, 80, 7))


def test_bf16_autocast_keeps_the_mix_in_float32(tiny_generator):
    from scoremix_ray.core.diffusion.sampler import generate

    net = tiny_generator[0]
    labels, weights, seeds = torch.tensor([[0, 3]] * 4), torch.full((4, 2), 0.5), [5, 6, 7, 8]
    fp32 = generate(net, labels, weights, seeds, _cfg().sampler)
    bf16 = generate(net, labels, weights, seeds, _cfg().sampler.model_copy(update={"precision": "bf16"}))
    diff = np.abs(fp32.astype(int) - bf16.astype(int))
    assert diff.max() > 0  # bf16 really ran (CPU autocast) ...
    assert diff.mean() < 8, diff.mean()  # ... and stays close to fp32 (the mix and the ODE are float32/64)
    with devices.autocast("cpu", "bf16"):
        out = net(torch.zeros(2, 1, 8, 8), torch.full((1,), 1.0), torch.tensor([0, 1]))
    assert out.dtype == torch.float32  # the preconditioning promotes the bf16 UNet output back to float32


def test_one_guidance_policy_for_every_path(tiny_generator):
    from scoremix_ray.core.methods.common import renoise_and_denoise
    from scoremix_ray.core.methods.diffii import regenerate

    net, guide, split, _ = tiny_generator
    images, labels, seeds = split.train.images[:4], split.train.labels[:4], [1, 2, 3, 4]

    def counterpart(guidance):
        ctx = RenderContext(_cfg(guidance), net, guide if guidance == "autoguidance" else None, _split=split)
        return renoise_and_denoise(ctx, images, labels, seeds, 0.6)

    assert not np.array_equal(counterpart("none"), counterpart("autoguidance"))  # DiffuseMix's counterpart
    assert not np.array_equal(counterpart("none"), counterpart("cfg"))
    # Diff-II's guided stage follows sampler.guidance: with none, guiding half the steps changes nothing
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2.0

    def diffii(guidance, fraction):
        cfg = _cfg(guidance, guided_fraction=fraction)
        ctx = RenderContext(cfg, net, guide if guidance == "autoguidance" else None, _split=split)
        return regenerate(ctx, z.clone(), labels, 1).astype(int)

    assert np.abs(diffii("none", 0.5) - diffii("none", 0.0)).max() <= 1  # same steps (one float32 hand-over)
    assert np.abs(diffii("autoguidance", 0.5) - diffii("none", 0.0)).max() > 1
    # a path asked to guide without what guidance needs says so
    with pytest.raises(ScoreMixError, match="guide"):
        renoise_and_denoise(RenderContext(_cfg("autoguidance"), net, None, _split=split), images, labels, seeds, 0.6)


def test_guidance_the_generator_lacks_is_refused_before_any_work(tiny_generator, tmp_path):
    from scoremix_ray.core.diffusion.train import check_guidance, load_for_sampling

    gen_dir = tiny_generator[3]
    net, guide = load_for_sampling(gen_dir, _cfg("autoguidance").sampler)
    assert guide is not None and load_for_sampling(gen_dir, _cfg("none").sampler)[1] is None  # loaded only if used
    bare = tmp_path / "bare"
    shutil.copytree(gen_dir / "final", bare / "final")
    with pytest.raises(
        ScoreMixError,
        match=r"sampler.guidance=autoguidance needs the generator's guide checkpoint, missing: .*bare/guide",
    ):
        check_guidance(_cfg("autoguidance").sampler, bare)
    meta = json.loads((bare / "final" / "edm.json").read_text())
    (bare / "final" / "edm.json").write_text(json.dumps({**meta, "null_label": None}))
    with pytest.raises(ScoreMixError, match="no null label"):
        check_guidance(_cfg("cfg").sampler, bare)
    check_guidance(_cfg("none").sampler, bare)  # nothing needed
    # and at config load, before anything runs: cfg with a generator trained without label dropout
    with pytest.raises(ConfigError, match="generator.label_dropout > 0"):
        load_config(None, ["sampler.guidance=cfg"])


def test_generator_stage_checks_quality_with_autoguidance_without_training_again(tiny_generator, tmp_path, monkeypatch):
    """The quality check samples under the run's guidance (it used to fail right after training with
    autoguidance); a trained generator whose check failed is checked again, not trained again."""
    from scoremix_ray import pipeline
    from scoremix_ray.runtime import train as dtrain
    from scoremix_ray.runtime.context import RunContext

    _, _, split, gen_dir = tiny_generator
    cfg = load_config(
        None,
        [
            f"out_dir={tmp_path}",
            "data.image_size=8",
            "sampler.steps=4",
            "sampler.guidance=autoguidance",
            "sampler.guidance_scale=2",
            "ray.use_gpu=false",
        ],
    )
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    split.save(data_dir / "split.npz")
    d = pipeline.GENERATOR.dir(cfg, {"data": data_dir})
    shutil.copytree(gen_dir, d)
    (d / "train.json").write_text(json.dumps({"step": 120}))  # trained; its quality check never finished

    def no_training(*args, **kwargs):
        raise AssertionError("the generator was trained again")

    monkeypatch.setattr(dtrain, "fit", no_training)
    assert pipeline.generator_stage(RunContext(), cfg, data_dir)[0] == d
    quality = json.loads((d / "quality.json").read_text())
    assert 0 <= quality["class_accuracy"] <= 1 and quality["train"] == {"step": 120} and (d / "samples.png").is_file()
    # the samples the recognizer-space diagnostics read, deleted: the check is made again, the training is not
    (d / "quality_samples.npz").unlink()
    assert pipeline.generator_stage(RunContext(), cfg, data_dir)[0] == d and (d / "quality_samples.npz").is_file()
    guided = pipeline.sample_images(cfg, d, torch.tensor([[0]] * 3), torch.ones(3, 1), [1, 2, 3])
    plain = pipeline.sample_images(
        cfg.model_copy(update={"sampler": cfg.sampler.model_copy(update={"guidance": "none"})}),
        d,
        torch.tensor([[0]] * 3),
        torch.ones(3, 1),
        [1, 2, 3],
    )
    assert not np.array_equal(guided, plain)


def test_devices_resolve_auto_and_keep_explicit_values():
    from scoremix_ray.runtime.context import RunContext, cluster_gpus

    resolve_devices = RunContext(gpus=cluster_gpus()).devices  # what `context.start` does

    cfg = load_config(None, [])
    assert (cfg.ray.use_gpu, cfg.generation.actor_gpus) == ("auto", "auto")  # the default: GPUs when there are
    resolved = resolve_devices(cfg)  # this box (and CI) has none
    assert (resolved.ray.use_gpu, resolved.generation.actor_gpus) == (
        torch.cuda.is_available(),
        float(torch.cuda.is_available()),
    )
    explicit = resolve_devices(load_config(None, ["ray.use_gpu=true", "generation.actor_gpus=0.5"]))
    assert (explicit.ray.use_gpu, explicit.generation.actor_gpus) == (True, 0.5)
    on_gpu_cpu_actors = resolve_devices(load_config(None, ["ray.use_gpu=true", "generation.actor_gpus=0"]))
    assert on_gpu_cpu_actors.generation.actor_gpus == 0
    if not torch.cuda.is_available():
        with pytest.raises(ScoreMixError, match="CUDA is not available"):
            devices.local_device(True)
