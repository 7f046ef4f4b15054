import numpy as np
import pytest
import torch

from scoremix_ray.config import SamplerConfig
from scoremix_ray.core.diffusion.sampler import (
    generate,
    heun_integrate,
    heun_sample,
    karras_sigmas,
    mixed_denoiser,
    sample_seed,
    seeded_noise,
    trajectory_progress,
)
from scoremix_ray.foundations.errors import ScoreMixError

SC = SamplerConfig(steps=8, batch_size=64)


def _run(net, labels, weights, seeds, **kw):
    x = seeded_noise(seeds, (1, 8, 8))
    sig = karras_sigmas(SC.steps, SC.sigma_min, SC.sigma_max, SC.rho)
    return heun_sample(mixed_denoiser(net, torch.tensor(labels), torch.tensor(weights), **kw), x, sig)


def test_karras_schedule():
    s = karras_sigmas(5, 0.002, 80, 7)
    assert len(s) == 6 and s[0] == pytest.approx(80) and s[4] == pytest.approx(0.002) and s[5] == 0
    assert torch.all(s[1:] < s[:-1])
    assert [trajectory_progress(float(v), 0.002, 80, 7) for v in s[:5]] == pytest.approx([0, 0.25, 0.5, 0.75, 1])


def test_heun_on_a_known_denoiser():
    # If the data is a single point mu, D(x; s) = mu exactly and the ODE ends at mu from any noise.
    mu = torch.full((3, 1, 4, 4), 0.3)
    out = heun_sample(lambda x, s: mu.clone(), torch.randn(3, 1, 4, 4), karras_sigmas(6, 0.002, 80, 7))
    assert torch.allclose(out, mu, atol=1e-5)


def test_heun_converges_at_second_order_on_gaussian_data():
    """Data N(mu, s^2) per pixel: D(x; t) = mu + s^2 / (s^2 + t^2) (x - mu), and the probability-flow ODE
    carries x(t) - mu = (x(t0) - mu) sqrt((s^2 + t^2) / (s^2 + t0^2)). Integrated from 80 down to 0.002 (not
    to 0, whose last step returns D(x) whatever the integrator), the error falls ~4x per doubling of the
    steps (Euler alone: ~2x)."""
    mu, s, t0, t1 = 0.3, 0.5, 80.0, 0.002
    x0 = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * t0
    exact = mu + (x0 - mu) * ((s**2 + t1**2) / (s**2 + t0**2)) ** 0.5
    errors = []
    for steps in (16, 32, 64):
        out = heun_integrate(
            lambda x, t: mu + s**2 / (s**2 + t**2) * (x - mu), x0, karras_sigmas(steps, t1, t0, 7)[:-1]
        )
        errors.append((out.double() - exact).abs().max().item())
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5 and errors[2] < 0.01, errors


def test_seeds_are_per_sample():
    assert sample_seed(0, 3, 1) == sample_seed(0, 3, 1) != sample_seed(0, 3, 2) != sample_seed(1, 3, 1)
    a = seeded_noise([5, 6, 7], (1, 2, 2))
    b = seeded_noise([7, 5], (1, 2, 2))
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])


def test_sampler_deterministic_by_seed(tiny_generator):
    net = tiny_generator[0]
    a = _run(net, [[0], [1]], [[1.0], [1.0]], [11, 12])
    b = _run(net, [[0], [1]], [[1.0], [1.0]], [11, 12])
    c = _run(net, [[0], [1]], [[1.0], [1.0]], [13, 14])
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_weights_one_zero_reproduce_plain(tiny_generator):
    net = tiny_generator[0]
    plain = _run(net, [[2], [4]], [[1.0], [1.0]], [21, 22])
    mixed = _run(net, [[2, 3], [4, 0]], [[1.0, 0.0], [1.0, 0.0]], [21, 22])
    assert torch.allclose(plain, mixed, atol=1e-4)


def test_half_half_differs_and_is_symmetric(tiny_generator):
    net = tiny_generator[0]
    a = _run(net, [[1]], [[1.0]], [5])
    b = _run(net, [[3]], [[1.0]], [5])
    m = _run(net, [[1, 3]], [[0.5, 0.5]], [5])
    m_swapped = _run(net, [[3, 1]], [[0.5, 0.5]], [5])
    assert (m - a).abs().mean() > 0.02 and (m - b).abs().mean() > 0.02
    assert torch.allclose(m, m_swapped, atol=1e-5)
    uneven = _run(net, [[1, 3]], [[0.8, 0.2]], [5])
    uneven_swapped = _run(net, [[3, 1]], [[0.2, 0.8]], [5])
    assert torch.allclose(uneven, uneven_swapped, atol=1e-5)


def test_batch_composition_does_not_change_a_sample(tiny_generator):
    net = tiny_generator[0]
    alone = _run(net, [[1, 3]], [[0.5, 0.5]], [77])
    crowd = _run(net, [[0, 2], [1, 3], [4, 4]], [[0.3, 0.7], [0.5, 0.5], [1.0, 0.0]], [1, 77, 2])
    assert torch.allclose(alone[0], crowd[1], atol=1e-4)


def test_one_batched_call_per_evaluation(tiny_generator):
    net = tiny_generator[0]
    calls = []

    def counting(x, sigma, labels):
        calls.append(x.shape[0])
        return net(x, sigma, labels)

    _run(counting, [[0, 1, 2], [2, 3, 4]], [[0.2, 0.3, 0.5]] * 2, [1, 2])
    assert calls == [6] * (2 * SC.steps - 1)  # Heun: 2 evaluations per step but the last; K*B each


def test_invalid_weights_are_named():
    for w in ([[0.7, 0.7]], [[1.2, -0.2]]):
        with pytest.raises(ScoreMixError, match=r"non-negative and sum to 1, got \["):
            mixed_denoiser(None, torch.tensor([[0, 1]]), torch.tensor(w))


def test_weight_ramp(tiny_generator):
    net = tiny_generator[0]
    sched = (SC.sigma_min, SC.sigma_max, SC.rho)
    const = _run(net, [[1, 3]], [[0.5, 0.5]], [9])
    flat_ramp = _run(net, [[1, 3]], [[0.5, 0.5]], [9], weights_end=torch.tensor([[0.5, 0.5]]), schedule=sched)
    assert torch.allclose(const, flat_ramp, atol=1e-6)
    ramp = _run(net, [[1, 3]], [[1.0, 0.0]], [9], weights_end=torch.tensor([[0.0, 1.0]]), schedule=sched)
    assert not torch.allclose(ramp, const, atol=1e-3)


def test_guidance(tiny_generator):
    net, guide = tiny_generator[0], tiny_generator[1]
    base = _run(net, [[1, 3]], [[0.5, 0.5]], [4])
    # g = 1 is no guidance for both forms: D_u + 1 (D - D_u) = D
    auto1 = _run(net, [[1, 3]], [[0.5, 0.5]], [4], guidance="autoguidance", guidance_scale=1.0, guide_net=guide)
    cfg1 = _run(net, [[1, 3]], [[0.5, 0.5]], [4], guidance="cfg", guidance_scale=1.0, null_label=net.null_label)
    assert torch.allclose(base, auto1, atol=1e-4) and torch.allclose(base, cfg1, atol=1e-4)
    auto2 = _run(net, [[1, 3]], [[0.5, 0.5]], [4], guidance="autoguidance", guidance_scale=2.0, guide_net=guide)
    assert not torch.allclose(base, auto2, atol=1e-3)
    with pytest.raises(ScoreMixError, match="label_dropout"):
        mixed_denoiser(net, torch.tensor([[0]]), torch.tensor([[1.0]]), guidance="cfg")
    with pytest.raises(ScoreMixError, match="guide"):
        mixed_denoiser(net, torch.tensor([[0]]), torch.tensor([[1.0]]), guidance="autoguidance")


def test_generate_batches_match_one_batch(tiny_generator):
    net = tiny_generator[0]
    labels, weights, seeds = torch.tensor([[0, 1]] * 5), torch.full((5, 2), 0.5), list(range(5))
    whole = generate(net, labels, weights, seeds, SC)
    split = generate(net, labels, weights, seeds, SamplerConfig(steps=8, batch_size=2))
    assert whole.shape == (5, 8, 8, 1) and whole.dtype == np.uint8
    assert np.abs(whole.astype(int) - split.astype(int)).max() <= 1
