import numpy as np
import pytest
import torch
from conftest import TINY_GEN

from scoremix_ray.config import GeneratorConfig
from scoremix_ray.core.data.batches import InMemory
from scoremix_ray.core.diffusion.edm import EDMDenoiser, build_denoiser, loss_weight, precond
from scoremix_ray.core.diffusion.train import train_generator
from scoremix_ray.foundations.checkpoints import latest_checkpoint


def test_preconditioning_identities():
    sd = 0.5
    sigma = torch.tensor([1e-4, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = precond(sigma, sd)
    # sigma -> 0: D(x) -> x (the identity skip); sigma = sigma_data: equal split
    assert c_skip[0].item() == pytest.approx(1.0, abs=1e-7) and c_out[0].item() == pytest.approx(1e-4, rel=1e-3)
    assert c_skip[1].item() == pytest.approx(0.5) and c_out[1].item() == pytest.approx(sd / np.sqrt(2))
    # c_in normalises the noisy input to unit variance: Var(y + n) = sd^2 + sigma^2
    assert (c_in.flatten() ** 2 * (sd**2 + sigma**2)).allclose(torch.ones(3, dtype=torch.float64))
    assert c_noise.allclose(sigma.log() / 4)
    # EDM's weighting makes the effective training target unit-weighted: lambda c_out^2 = 1
    assert (loss_weight(sigma, sd) * c_out.flatten() ** 2).allclose(torch.ones(3, dtype=torch.float64))


def test_denoiser_is_identity_at_tiny_sigma():
    net = build_denoiser(GeneratorConfig(**TINY_GEN), 3, 8, 1)
    x = torch.randn(4, 1, 8, 8)
    d = net(x, torch.tensor(1e-6), torch.tensor([0, 1, 2, 0]))
    assert torch.allclose(d, x, atol=1e-4)


def test_edm_loss_is_its_formula():
    """edm_loss = mean over images and pixels of lambda(sigma) (D(y + n; sigma) - y)^2 with ln sigma ~
    N(P_mean, P_std^2), n ~ N(0, sigma^2), lambda = (sigma^2 + sd^2) / (sigma sd)^2 (EDM eq. 8 and Table 1),
    written out here from the same random draws; the sigmas seen by the network follow the log-normal."""
    from scoremix_ray.core.diffusion.edm import edm_loss

    cfg = GeneratorConfig(**TINY_GEN)
    seen = {}

    def net(x, sigma, labels):  # a stand-in denoiser with a known output
        seen["sigma"] = sigma
        return 0.5 * x + 0.1 * labels.reshape(-1, 1, 1, 1)

    y, labels = torch.rand(20000, 1, 2, 2) * 2 - 1, torch.arange(20000) % 3
    loss = edm_loss(net, y, labels, cfg, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    sigma = (torch.randn(20000, generator=g) * cfg.p_std + cfg.p_mean).exp()
    n = torch.randn(y.shape, generator=g) * sigma.reshape(-1, 1, 1, 1)
    lam = ((sigma**2 + cfg.sigma_data**2) / (sigma * cfg.sigma_data) ** 2).reshape(-1, 1, 1, 1)
    d = 0.5 * (y + n) + 0.1 * labels.reshape(-1, 1, 1, 1)
    assert loss.item() == pytest.approx((lam * (d - y) ** 2).mean().item(), rel=1e-6)
    logs = seen["sigma"].log()
    assert abs(logs.mean().item() - cfg.p_mean) < 0.03 and abs(logs.std().item() - cfg.p_std) < 0.03


def _digits(size=8, n=5, per=40):
    from scoremix_ray.config import DataConfig
    from scoremix_ray.core.data import load_labelled, make_split

    s = make_split(load_labelled("digits", None, size, 1), DataConfig(image_size=size, per_class=per, num_pairs=50))
    return s.train.images, s.train.labels, s.train.num_classes


def test_loss_decreases(tmp_path):
    images, labels, n = _digits()
    losses = []
    cfg = GeneratorConfig(**{**TINY_GEN, "steps": 60, "checkpoint_every": 10})  # a report with each checkpoint
    train_generator(InMemory(images, labels), n, cfg, 0, tmp_path, report=lambda m, c: losses.append(m["loss"]))
    assert len(losses) == 6
    assert np.mean(losses[-2:]) < 0.75 * losses[0], losses


# EDM2's network (core/diffusion/edm2.py) too: its forced weight normalisation and log-variance head resume exactly
NETWORKS = {"unet2d": {}, "edm2": {"network": "edm2", "edm2": {"channels": 16, "channel_mult": [1, 2]}}}


@pytest.mark.parametrize("network", list(NETWORKS))
def test_resume_after_interrupt_continues_exactly(tmp_path, network):
    images, labels, n = _digits()
    cfg = GeneratorConfig(**{**TINY_GEN, **NETWORKS[network], "checkpoint_every": 10})  # 40 steps, report every 10
    train_generator(InMemory(images, labels), n, cfg, 0, tmp_path / "straight")

    class Interrupt(Exception):
        pass

    def crash_at_30(metrics, ckpt):
        if metrics["step"] == 30:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_generator(InMemory(images, labels), n, cfg, 0, tmp_path / "resumed", report=crash_at_30)
    assert latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "step_0000030"
    steps = []
    train_generator(
        InMemory(images, labels), n, cfg, 0, tmp_path / "resumed", report=lambda m, c: steps.append(m["step"])
    )
    assert steps == [40]  # continued from step 30, did not restart at 0
    a = EDMDenoiser.load(tmp_path / "straight" / "final").state_dict()
    b = EDMDenoiser.load(tmp_path / "resumed" / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical to the uninterrupted run


def test_save_load_roundtrip(tmp_path):
    net = build_denoiser(GeneratorConfig(**{**TINY_GEN, "label_dropout": 0.1}), 4, 8, 1).eval()
    net.save(tmp_path / "g")
    back = EDMDenoiser.load(tmp_path / "g")
    assert (back.num_classes, back.null_label, back.sigma_data) == (4, 4, 0.5)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(
            net(x, torch.tensor(1.3), torch.tensor([0, 3])), back(x, torch.tensor(1.3), torch.tensor([0, 3]))
        )
    assert back.condition_vectors().shape == (4, back.unet.class_embedding.weight.shape[1])


def test_load_missing_generator_is_clear(tmp_path):
    from scoremix_ray.foundations.errors import ScoreMixError

    with pytest.raises(ScoreMixError, match="no trained generator at"):
        EDMDenoiser.load(tmp_path)


def _ema_weights(cfg: GeneratorConfig, steps: int) -> np.ndarray:
    """The weight each step's network has in the EMA after `steps` updates, from the loop's own betas."""
    from scoremix_ray.core.diffusion.train import ema_beta

    betas = np.array([ema_beta(cfg, s) for s in range(steps)])
    later = np.concatenate([np.cumprod(betas[::-1])[::-1][1:], [1.0]])  # product of the betas after step s
    return (1 - betas) * later


@pytest.mark.parametrize("std", [0.05, 0.10, 0.20])
def test_power_ema_has_its_relative_std_at_any_length(std):
    """EDM2's power-function EMA: after t steps the average weights step s about as s^gamma (eq. 121), so its
    standard deviation relative to t is `ema_std` whatever t; gamma from the std is eq. 126's inverse of
    std = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) (eq. 123)."""
    from scoremix_ray.core.diffusion.train import power_ema_exponent

    g = power_ema_exponent(std)
    assert np.sqrt((g + 1) / (g + 2) ** 2 / (g + 3)) == pytest.approx(std, rel=1e-9)
    cfg = GeneratorConfig(**{**TINY_GEN, "ema_std": std})
    for steps in (300, 3000):
        w = _ema_weights(cfg, steps)
        t = np.arange(1, steps + 1) / steps
        mean = (w * t).sum()
        assert w.sum() == pytest.approx(1.0) and np.sqrt((w * (t - mean) ** 2).sum()) == pytest.approx(std, rel=0.02)
        s = np.arange(1, steps + 1)  # exactly: step s weighs (s^(gamma+1) - (s-1)^(gamma+1)) / t^(gamma+1)
        assert np.allclose(w, (s / steps) ** (g + 1) - ((s - 1) / steps) ** (g + 1), rtol=1e-9, atol=1e-15)


def test_fixed_ema_and_learning_rate_schedules():
    from scoremix_ray.core.diffusion.train import learning_rate

    fixed = _ema_weights(GeneratorConfig(**{**TINY_GEN, "ema_decay": 0.999}), 1500)
    t = np.arange(1, 1501) / 1500
    assert np.sqrt((fixed * (t - (fixed * t).sum()) ** 2).sum()) == pytest.approx(0.091, abs=0.001)  # (benchmark)
    cfg = GeneratorConfig(**{**TINY_GEN, "lr": 2e-3, "warmup_steps": 100, "lr_decay_steps": 400})
    assert learning_rate(cfg, 0) == pytest.approx(2e-5) and learning_rate(cfg, 99) == pytest.approx(2e-3)
    assert learning_rate(cfg, 399) == pytest.approx(2e-3) and learning_rate(cfg, 1599) == pytest.approx(1e-3)
    constant = GeneratorConfig(**{**TINY_GEN, "warmup_steps": 5, "lr_decay_steps": None})
    assert learning_rate(constant, 10_000) == TINY_GEN["lr"]


def test_recipe_options_train_and_resume_exactly(tmp_path):
    """Power EMA and lr decay are functions of the step alone: a resumed run ends on the same weights."""
    images, labels, n = _digits()
    cfg = GeneratorConfig(**{**TINY_GEN, "steps": 20, "checkpoint_every": 10, "ema_std": 0.1, "lr_decay_steps": 5})
    train_generator(InMemory(images, labels), n, cfg, 0, tmp_path / "straight")

    def stop_at_10(metrics, ckpt):
        if metrics["step"] == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_generator(InMemory(images, labels), n, cfg, 0, tmp_path / "resumed", report=stop_at_10)
    train_generator(InMemory(images, labels), n, cfg, 0, tmp_path / "resumed")
    a = EDMDenoiser.load(tmp_path / "straight" / "final").state_dict()
    b = EDMDenoiser.load(tmp_path / "resumed" / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
