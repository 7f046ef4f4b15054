"""EDM2's magnitude-preserving network (core/diffusion/edm2.py) inside the EDM denoiser: the properties the paper
builds it for, its loss, its packaging, and the ScoreMix sampler on it."""

import math

import numpy as np
import pytest
import torch

from scoremix_ray.config import GeneratorConfig, SamplerConfig
from scoremix_ray.core.diffusion.edm import EDMDenoiser, build_denoiser, edm_loss, loss_weight
from scoremix_ray.core.diffusion.edm2 import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize
from scoremix_ray.core.diffusion.sampler import generate, heun_sample, karras_sigmas, seeded_noise, to_images

EDM2 = {"network": "edm2", "edm2": {"channels": 16, "channel_mult": [1, 2], "num_blocks": 1}}


def _net(classes=4, size=8, channels=1, **over):
    torch.manual_seed(0)
    return build_denoiser(GeneratorConfig(**{**EDM2, **over}), classes, size, channels)


def _rms(x: torch.Tensor) -> float:
    return x.float().pow(2).mean().sqrt().item()


def test_magnitude_preserving_primitives():
    """Each primitive maps unit-magnitude inputs to unit-magnitude outputs (EDM2 section 3)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4096, 64, generator=g), torch.randn(4096, 32, generator=g)
    assert _rms(mp_silu(a)) == pytest.approx(1.0, abs=0.02)
    assert _rms(mp_sum(a, torch.randn(4096, 64, generator=g), t=0.3)) == pytest.approx(1.0, abs=0.02)
    assert _rms(mp_cat(a, b, t=0.5)) == pytest.approx(1.0, abs=0.02)
    assert _rms(MPFourier(256)(torch.randn(4096, generator=g))) == pytest.approx(1.0, abs=0.03)
    conv = MPConv(64, 48, (3, 3))
    assert _rms(conv(torch.randn(64, 64, 16, 16, generator=g))) == pytest.approx(1.0, abs=0.05)
    assert normalize(torch.randn(10, 3, 5, 5)).flatten(1).pow(2).mean(1).allclose(torch.ones(10), atol=1e-3)


def test_activations_have_unit_magnitude_at_initialisation():
    """Every block of the untrained network, fed unit-variance input, outputs activations of RMS about 1: no
    layer grows or shrinks the signal (the point of the magnitude-preserving design)."""
    net = _net(size=16, edm2={"channels": 32, "channel_mult": [1, 2, 2], "num_blocks": 2, "attn_resolutions": [4]})
    seen = {}
    for name, m in net.unet.named_modules():
        if type(m).__name__ == "Block":
            m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, _rms(out)))
    x = torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net.unet(x, torch.randn(32) * 0.5, torch.arange(32) % 4).sample
    assert len(seen) >= 10 and any(net.unet.enc[k].num_heads for k in net.unet.enc if "4x4" in k)
    assert all(0.6 < v < 1.6 for v in seen.values()), seen
    assert out.abs().max().item() == 0  # the output gain starts at 0: D = c_skip x until it learns


def test_weights_stay_normalised_through_training():
    """Forced weight normalisation: after optimizer steps have moved them, every MPConv weight row is back to
    unit RMS as soon as the layer runs in training mode (the stored weights live on the unit sphere)."""
    net = _net().train()
    cfg = GeneratorConfig(**EDM2)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    y, labels, gen = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 4, torch.Generator().manual_seed(0)
    for _ in range(3):
        opt.zero_grad()
        edm_loss(net, y, labels, cfg, gen).backward()
        opt.step()
    convs = [m for m in net.unet.modules() if isinstance(m, MPConv)]
    moved = max((m.weight.flatten(1).pow(2).mean(1) - 1).abs().max().item() for m in convs)
    assert moved > 1e-3  # the steps did move them off the sphere
    with torch.no_grad():
        net(y, torch.ones(16), labels, return_logvar=True)
    for m in convs:
        rms = m.weight.flatten(1).pow(2).mean(1)
        assert rms.allclose(torch.ones_like(rms), atol=1e-3)


def test_the_loss_is_weighted_by_its_learned_log_variance():
    """EDM2 eq. 21: mean of lambda(sigma) ||D - y||^2 / e^u(sigma) + u(sigma), written out from the same draws;
    and u is a function of sigma alone, learned: a step moves it toward ln of the weighted error."""
    net = _net()
    cfg = GeneratorConfig(**EDM2)
    y, labels = torch.rand(64, 1, 8, 8) * 2 - 1, torch.arange(64) % 4
    with torch.no_grad():
        net.unet.logvar_linear.weight.normal_()  # a non-zero u(sigma)
    loss = edm_loss(net, y, labels, cfg, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    sigma = (torch.randn(64, generator=g) * cfg.p_std + cfg.p_mean).exp()
    n = torch.randn(y.shape, generator=g) * sigma.reshape(-1, 1, 1, 1)
    d, u = net(y + n, sigma, labels, return_logvar=True)
    u = u.reshape(-1, 1, 1, 1)
    lam = loss_weight(sigma, cfg.sigma_data).reshape(-1, 1, 1, 1)
    assert loss.item() == pytest.approx((lam / u.exp() * (d - y) ** 2 + u).mean().item(), rel=1e-5)
    assert u.std().item() > 0  # one u per noise level
    # the optimum of a e^-u + u is u = ln a: minimising the loss over u alone finds ln of the weighted error
    err = (lam * (d.detach() - y) ** 2).mean().item()
    u0 = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([u0], lr=0.2)
    for _ in range(300):
        opt.zero_grad()
        (err / u0.exp() + u0).backward()
        opt.step()
    assert u0.item() == pytest.approx(math.log(err), abs=1e-3)


def test_checkpoint_round_trip(tmp_path):
    """save_pretrained / from_pretrained through the denoiser: the same outputs, the network kind, the condition
    vectors the condition strategies and the alignment read, and the shape the sampler and the exports read."""
    net = _net(classes=5, size=8, label_dropout=0.2).eval()
    net.save(tmp_path / "g")
    back = EDMDenoiser.load(tmp_path / "g")
    assert back.network == "edm2" and back.null_label == 5 and back.learns_logvar
    x, s, c = torch.randn(6, 1, 8, 8), torch.rand(6) + 0.1, torch.tensor([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        assert torch.equal(net(x, s, c), back(x, s, c))
    assert back.condition_vectors().shape == (5, 32) and torch.equal(back.condition_vectors(), net.condition_vectors())
    assert (back.unet.config.sample_size, back.unet.config.in_channels) == (8, 1)


def test_the_mixed_sampler_on_edm2_is_the_plain_sampler_on_d_mix():
    """ScoreMix on the EDM2 network: `generate` with weights (0.3, 0.7) gives the images of Heun integration of
    D_mix = 0.3 D(x; s, c_i) + 0.7 D(x; s, c_j) written out here, from the same seeds."""
    net = _net(classes=4).eval()
    with torch.no_grad():  # a trained-looking network: the output gains away from 0, so classes differ
        for p in net.unet.parameters():
            if p.ndim == 0:
                p.fill_(0.7)
    scfg = SamplerConfig(steps=6, batch_size=8)
    labels, weights, seeds = torch.tensor([[0, 3], [1, 2]]), torch.tensor([[0.3, 0.7], [0.3, 0.7]]), [11, 12]
    images = generate(net, labels, weights, seeds, scfg)

    def d_mix(x, sigma):
        s = torch.full((len(x),), sigma)
        with torch.no_grad():
            return 0.3 * net(x, s, labels[:, 0]) + 0.7 * net(x, s, labels[:, 1])

    sigmas = karras_sigmas(scfg.steps, scfg.sigma_min, scfg.sigma_max, scfg.rho)
    x = heun_sample(d_mix, seeded_noise(seeds, (1, 8, 8)), sigmas)
    ref = to_images(x)
    assert np.abs(images.astype(int) - ref.astype(int)).max() <= 1  # float rounding of one batched call vs two
    plain = generate(net, labels[:, :1], torch.ones(2, 1), seeds, scfg)
    assert np.abs(images.astype(int) - plain.astype(int)).mean() > 1  # the mix is not class i alone


def test_training_learns(tmp_path):
    """The shared training loop on the EDM2 network: the loss (with its log-variance term) falls. (Its exact
    resume is tests/test_edm.py's, for both networks.)"""
    from conftest import TINY_GEN
    from test_edm import _digits

    from scoremix_ray.core.data.batches import InMemory
    from scoremix_ray.core.diffusion.train import train_generator

    images, labels, n = _digits()
    cfg = GeneratorConfig(**{**TINY_GEN, **EDM2, "checkpoint_every": 10})
    losses = []
    train_generator(InMemory(images, labels), n, cfg, 0, tmp_path, report=lambda m, c: losses.append(m["loss"]))
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert any(k.startswith("unet.logvar_linear") for k in EDMDenoiser.load(tmp_path / "final").state_dict())


def test_an_edm2_generator_exports_as_an_mlflow_model(tmp_path):
    """The generator stage's MLflow model (runtime/export.py) works unchanged for the EDM2 network: saved from the
    stage folder with its signature, loaded back by MLflow, the same denoiser."""
    import mlflow.pytorch

    from scoremix_ray.runtime.export import generator_model

    net = _net(classes=3).eval()
    net.save(tmp_path / "final")
    path = generator_model(tmp_path)
    assert [p.name for p in (path / "data").iterdir()] == ["model.pt2"]  # a torch.export graph, not a pickle
    loaded = mlflow.pytorch.load_model(str(path))
    x, s, c = torch.randn(3, 1, 8, 8), torch.tensor([0.5, 2.0, 9.0]), torch.tensor([0, 2, 1])  # a batch of its own
    with torch.no_grad():
        assert torch.allclose(loaded(x, s, c), net(x, s, c), atol=1e-6)


def test_edm2_samples_on_the_networks_device_and_under_bf16(monkeypatch):
    """Device placement as tests/test_devices.py checks it for the UNet: with the network on PyTorch's `meta`
    device every tensor of the sampling path must be there too (one device -> host crossing, on `meta`); bf16
    autocast of the network's forward keeps the denoiser's output float32 and the images close to fp32's."""
    import copy

    from scoremix_ray.foundations import devices

    net = _net().eval()
    crossed = []

    def to_numpy(x):
        crossed.append(x.device.type)
        return np.zeros(tuple(x.shape), np.float32)

    labels, weights, seeds = torch.tensor([[0, 1]] * 3), torch.full((3, 2), 0.5), [1, 2, 3]
    scfg = SamplerConfig(steps=3)
    with monkeypatch.context() as m:
        m.setattr(devices, "to_numpy", to_numpy)
        assert generate(copy.deepcopy(net).to("meta"), labels, weights, seeds, scfg).shape == (3, 8, 8, 1)
    assert crossed == ["meta"]
    with torch.no_grad():
        for p in net.unet.parameters():
            if p.ndim == 0:
                p.fill_(0.7)
    fp32 = generate(net, labels, weights, seeds, scfg)
    bf16 = generate(net, labels, weights, seeds, scfg.model_copy(update={"precision": "bf16"}))
    assert (
        np.abs(fp32.astype(int) - bf16.astype(int)).max() > 0 and np.abs(fp32.astype(int) - bf16.astype(int)).mean() < 8
    )
    with devices.autocast("cpu", "bf16"):
        assert net(torch.zeros(2, 1, 8, 8), torch.full((1,), 1.0), torch.tensor([0, 1])).dtype == torch.float32
