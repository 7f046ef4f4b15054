"""EDM deterministic Heun sampler and the ScoreMix mixed denoiser.

The sampler is a pure function of (denoise, noise, sigmas): it neither loads weights nor knows about Ray.
Plain class-conditional sampling is the mixed denoiser with one class and weight 1, so there is one
sampler and one way to call the network.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from scoremix_ray.config import WEIGHT_ATOL
from scoremix_ray.core.data.images import from_model
from scoremix_ray.foundations import devices
from scoremix_ray.foundations.errors import ScoreMixError

Denoise = Callable[[torch.Tensor, float], torch.Tensor]  # (x, sigma) -> D(x; sigma), on x's device


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """t_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, i < N, and t_N = 0 (EDM eq. 5)."""
    i = torch.arange(steps, dtype=torch.float64)
    inv = sigma_max ** (1 / rho) + i / max(steps - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return torch.cat([inv**rho, torch.zeros(1, dtype=torch.float64)])


def trajectory_progress(sigma: float, sigma_min: float, sigma_max: float, rho: float) -> float:
    """Where sigma lies on the Karras schedule: 0 at sigma_max, 1 at sigma_min (= step i / (N-1))."""
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return float(np.clip((a - sigma ** (1 / rho)) / (a - b), 0.0, 1.0))


@torch.no_grad()
def heun_integrate(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """EDM Algorithm 1 (deterministic, 2nd order) on the probability-flow ODE dx/dt = (x - D(x; t)) / t, from
    state x at sigmas[0] through sigmas[-1]: an Euler step, then the trapezoidal correction unless t_next = 0.
    Descending sigmas sample (or finish a partial noising); ascending sigmas invert an image to noise.
    The state stays float64 on x's device; sigmas are Python floats (float64), so nothing crosses devices."""
    x = x.to(torch.float64)
    sigmas = [float(s) for s in sigmas]
    for t_cur, t_next in zip(sigmas[:-1], sigmas[1:]):
        d_cur = (x - denoise(x.float(), t_cur).double()) / t_cur
        x_next = x + (t_next - t_cur) * d_cur
        if t_next > 0:
            d_next = (x_next - denoise(x_next.float(), t_next).double()) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x.float()


def heun_sample(denoise: Denoise, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Sampling from pure noise: x_0 = noise * t_0, integrated down to t_N = 0."""
    return heun_integrate(denoise, noise.to(torch.float64) * float(sigmas[0]), sigmas)


def check_weights(weights: torch.Tensor, what: str = "weights") -> None:
    """Convex rows (`config.convex`): every w_k >= 0 and sum_k w_k = 1."""
    w = weights.double()
    bad = (w < 0).any(-1) | ((w.sum(-1) - 1).abs() > WEIGHT_ATOL)
    if bad.any():
        raise ScoreMixError(
            f"mixing {what} must be non-negative and sum to 1, got {[round(v, 4) for v in w[bad][0].tolist()]}"
        )


def mixed_denoiser(
    net: Callable,
    labels: torch.Tensor,
    weights: torch.Tensor,
    weights_end: torch.Tensor | None = None,
    schedule: tuple[float, float, float] | None = None,
    guidance: str = "none",
    guidance_scale: float = 1.0,
    guide_net: Callable | None = None,
    null_label: int | None = None,
    precision: str = "fp32",
) -> Denoise:
    """D_mix(x; sigma) = sum_k w_k D(x; sigma, c_k), all K conditions in ONE batched network call.

    labels, weights: (B, K) host tensors (checked there, moved to the network's device per call). With
    `weights_end`, the weights ramp linearly from `weights` at sigma_max to `weights_end` at sigma_min
    (`schedule` = (sigma_min, sigma_max, rho) locates sigma on the trajectory).
    Since the EDM score is (D - x) / sigma^2 and the weights sum to 1, this is the convex mix of scores.
    Guidance composes with the mix:
      cfg:          D = D_mix(null) + g (D_mix - D(null))          (one extra condition in the same call)
      autoguidance: D = D_weak_mix + g (D_mix - D_weak_mix)       (the weak model is an earlier checkpoint)
    `precision` "bf16" autocasts the network call only; the mix and the guidance run in float32 on the
    network's output, the integration (heun_integrate) in float64.
    """
    b, k = labels.shape
    check_weights(weights)
    if weights_end is not None:
        check_weights(weights_end, "end weights")
        if schedule is None:
            raise ValueError("a weight ramp needs schedule=(sigma_min, sigma_max, rho)")
    if guidance == "cfg" and null_label is None:
        raise ScoreMixError("classifier-free guidance needs a generator trained with generator.label_dropout > 0")
    if guidance == "autoguidance" and guide_net is None:
        raise ScoreMixError("autoguidance needs the earlier (guide) checkpoint of the generator")
    conds = labels
    if guidance == "cfg":
        conds = torch.cat([labels, torch.full((b, 1), null_label, dtype=labels.dtype)], 1)
    flat = conds.T.reshape(-1)  # condition-major: [c_1 of every sample, c_2 of every sample, ...]
    kk = conds.shape[1]

    def mix_of(model: Callable, x: torch.Tensor, sigma: float, w: torch.Tensor) -> torch.Tensor:
        s = torch.full((1,), sigma, dtype=torch.float32, device=x.device)
        with devices.autocast(x.device, precision):
            d = model(x.repeat(kk, 1, 1, 1), s, flat.to(x.device))
        d = d.float().reshape(kk, b, *x.shape[1:])
        mixed = torch.einsum("kb...,bk->b...", d[:k], w.to(d))
        if guidance == "cfg":
            return d[k] + guidance_scale * (mixed - d[k])
        return mixed

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        sigma = float(sigma)
        w = weights
        if weights_end is not None:
            p = trajectory_progress(sigma, *schedule)
            w = (1 - p) * weights + p * weights_end
        d = mix_of(net, x, sigma, w)
        if guidance == "autoguidance":
            d_weak = mix_of(guide_net, x, sigma, w)
            d = d_weak + guidance_scale * (d - d_weak)
        return d

    return denoise


def sample_seed(run_seed: int, key: int, index: int) -> int:
    """The noise seed of sample (key, index): independent of batch, order and process."""
    return int(np.random.SeedSequence([run_seed, key, index]).generate_state(1, np.uint64)[0] & (2**63 - 1))


def tuple_key(classes) -> int:
    """The noise stream of a class tuple: the class itself for one class (the plain sampler), else a hash of
    the sorted classes, so a tuple gets the same images whichever strategy picked it and in either order."""
    classes = [int(c) for c in classes]
    if len(classes) == 1:
        return classes[0]
    return 2**32 + int(np.random.SeedSequence(sorted(classes)).generate_state(1, np.uint32)[0])


def seeded_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One standard-normal tensor per seed, stacked: sample i's noise depends on seeds[i] alone."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def policy_denoiser(
    net: Callable,
    labels: torch.Tensor,
    weights: torch.Tensor,
    scfg,
    guide_net: Callable | None = None,
    weights_end: torch.Tensor | None = None,
    guided: bool = True,
    guidance_scale: float | None = None,
) -> Denoise:
    """The mixed denoiser under the run's one guidance policy: `scfg.guidance` (none | cfg | autoguidance) with
    `scfg.guidance_scale` and `scfg.precision`. Every generation path builds its denoiser here. `guided=False`
    is an explicitly unguided stage (Diff-II's second); `guidance_scale` overrides the scale (its first)."""
    return mixed_denoiser(
        net,
        labels,
        weights,
        weights_end,
        (scfg.sigma_min, scfg.sigma_max, scfg.rho),
        scfg.guidance if guided else "none",
        scfg.guidance_scale if guidance_scale is None else guidance_scale,
        guide_net,
        net.null_label,
        scfg.precision,
    )


def to_images(x: torch.Tensor) -> np.ndarray:
    """Model-space samples on any device -> uint8 (B, H, W, C) on the host."""
    return from_model(devices.to_numpy(x))


def generate(
    net: Callable,
    labels: torch.Tensor,
    weights: torch.Tensor,
    seeds: list[int],
    scfg,
    weights_end: torch.Tensor | None = None,
    guide_net: Callable | None = None,
) -> np.ndarray:
    """Images for rows (labels_k, weights_k, seed) in batches of `scfg.batch_size`; uint8 (B, H, W, C).

    `scfg` is a SamplerConfig; `net` an EDMDenoiser (its image shape, null label and device are read from
    it). Noise is drawn on the CPU from each row's seed, then moved to the network's device.
    """
    unet_cfg = net.unet.config
    shape = (unet_cfg.in_channels, unet_cfg.sample_size, unet_cfg.sample_size)
    device = devices.device_of(net)
    sigmas = karras_sigmas(scfg.steps, scfg.sigma_min, scfg.sigma_max, scfg.rho)
    out = []
    for lo in range(0, len(seeds), scfg.batch_size):
        sl = slice(lo, lo + scfg.batch_size)
        denoise = policy_denoiser(
            net, labels[sl], weights[sl], scfg, guide_net, None if weights_end is None else weights_end[sl]
        )
        out.append(to_images(heun_sample(denoise, seeded_noise(seeds[sl], shape).to(device), sigmas)))
    return np.concatenate(out)
