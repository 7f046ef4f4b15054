"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models").

Preconditioned denoiser around a network F: a diffusers ``UNet2DModel`` with a class-embedding table
(`generator.network: unet2d`) or EDM2's magnitude-preserving UNet (`edm2`, `edm2.py`):

    D(x; sigma, c) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma), c)
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4

Training (EDM table 1): ln(sigma) ~ N(P_mean, P_std^2), loss lambda(sigma) ||D(y + n; sigma, c) - y||^2 with
n ~ N(0, sigma^2 I) and lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2. With EDM2's network the loss
learns a log-variance u(sigma) per noise level (EDM2 eq. 21): lambda ||D - y||^2 / e^u + u.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DModel
from torch import nn

from scoremix_ray.config import GeneratorConfig
from scoremix_ray.core.diffusion.edm2 import EDM2UNet
from scoremix_ray.foundations.checkpoints import read_meta
from scoremix_ray.foundations.devices import autocast
from scoremix_ray.foundations.errors import ScoreMixError, first_line

# diffusers' sinusoidal timestep embedding is laid out for DDPM timesteps 0..1000; EDM's c_noise lives in
# about [-1.6, 1.1]. Scaling by 1000 spreads it over the embedding's frequencies (same idea as EDM's
# VP preconditioning, which feeds (M-1) t).
NOISE_EMBED_SCALE = 1000.0


def precond(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise) for a batch of sigmas, shaped to broadcast over (N, C, H, W)."""
    s = sigma.reshape(-1, 1, 1, 1)
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    c_out = s * sigma_data / (s**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + s**2).sqrt()
    c_noise = sigma.reshape(-1).log() / 4
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2: unit-variance effective target."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


NETWORKS = {"unet2d": UNet2DModel, "edm2": EDM2UNet}  # generator.network -> the diffusers model class


class EDMDenoiser(nn.Module):
    """D(x; sigma, c). `null_label` (if any) is the class id trained as "no class" for classifier-free guidance."""

    def __init__(self, unet: nn.Module, num_classes: int, sigma_data: float = 0.5, null_label: int | None = None):
        super().__init__()
        self.unet = unet
        self.num_classes = num_classes
        self.sigma_data = sigma_data
        self.null_label = null_label
        self.network = "edm2" if isinstance(unet, EDM2UNet) else "unet2d"
        # EDM2's Fourier features take c_noise as it is; diffusers' sinusoidal embedding wants it spread out
        self.noise_scale = 1.0 if self.network == "edm2" else NOISE_EMBED_SCALE

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor, return_logvar: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """D(x; sigma, labels); with `return_logvar`, also EDM2's learned u(sigma) (one per row)."""
        sigma = sigma.to(x.dtype).expand(x.shape[0]) if sigma.numel() == 1 else sigma.to(x.dtype)
        c_skip, c_out, c_in, c_noise = precond(sigma, self.sigma_data)
        f = self.unet(c_in * x, self.noise_scale * c_noise, class_labels=labels).sample
        d = c_skip * x + c_out * f
        return (d, self.unet.logvar(c_noise)) if return_logvar else d

    @property
    def learns_logvar(self) -> bool:
        return self.network == "edm2"

    def condition_vectors(self) -> torch.Tensor:
        """The learned class-embedding vectors of the real classes (the generator's condition space)."""
        if self.network == "edm2":
            return self.unet.condition_vectors(self.num_classes)
        return self.unet.class_embedding.weight[: self.num_classes].detach().clone()

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.unet.save_pretrained(path)
        meta = {"num_classes": self.num_classes, "sigma_data": self.sigma_data, "null_label": self.null_label}
        if self.network != "unet2d":  # older folders, and unet2d ones, name no network
            meta["network"] = self.network
        (path / "edm.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> EDMDenoiser:

        path = Path(path)
        if not (path / "edm.json").is_file():
            raise ScoreMixError(f"no trained generator at {path} (missing edm.json)")
        meta = read_meta(path / "edm.json")
        try:  # diffusers reads safetensors (no pickle); a corrupt file or config is one line naming the folder
            network = NETWORKS[meta.get("network", "unet2d")]
            unet = network.from_pretrained(path, low_cpu_mem_usage=False)  # no `accelerate` needed
            return cls(unet, meta["num_classes"], meta["sigma_data"], meta["null_label"]).to(device).eval()
        except Exception as e:  # noqa: BLE001 -- safetensors, json and torch raise many types
            raise ScoreMixError(f"generator in {path} does not load: {type(e).__name__}: {first_line(e)}") from None


def build_denoiser(cfg: GeneratorConfig, num_classes: int, image_size: int, channels: int) -> EDMDenoiser:
    """A class-conditional network of `cfg.network`; one extra (null) class when trained with label dropout."""
    null_label = num_classes if cfg.label_dropout > 0 else None
    if cfg.network == "edm2":
        e = cfg.edm2
        unet = EDM2UNet(
            sample_size=image_size,
            in_channels=channels,
            out_channels=channels,
            num_class_embeds=num_classes + (1 if null_label is not None else 0),
            model_channels=e.channels,
            channel_mult=e.channel_mult,
            num_blocks=e.num_blocks,
            attn_resolutions=e.attn_resolutions,
            dropout=e.dropout,
        )
        return EDMDenoiser(unet, num_classes, cfg.sigma_data, null_label)
    n = len(cfg.block_out_channels)
    attn = [cfg.attention and i == n - 1 for i in range(n)]
    unet = UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        add_attention=cfg.attention,
        norm_num_groups=min(32, cfg.block_out_channels[0]),
        num_class_embeds=num_classes + (1 if null_label is not None else 0),
    )
    return EDMDenoiser(unet, num_classes, cfg.sigma_data, null_label)


def edm_loss(
    net: nn.Module, y: torch.Tensor, labels: torch.Tensor, cfg: GeneratorConfig, gen: torch.Generator
) -> torch.Tensor:
    """Mean of lambda(sigma) ||D(y + n; sigma) - y||^2, sigma log-normal; all randomness from `gen`, drawn on
    the CPU (the same on any device) and moved to y's. `cfg.precision` "bf16" autocasts the network only.
    EDM2's network: mean of lambda ||D - y||^2 / e^u + u with its learned u(sigma). (`net` may be wrapped for
    data-parallel training: the log-variance comes out of its forward pass, so every parameter is in it.)"""
    rnd = torch.randn(y.shape[0], generator=gen)
    sigma = (rnd * cfg.p_std + cfg.p_mean).exp()
    n = torch.randn(y.shape, generator=gen) * sigma.reshape(-1, 1, 1, 1)
    sigma = sigma.to(y.device)
    weight = loss_weight(sigma, cfg.sigma_data).reshape(-1, 1, 1, 1)
    if not getattr(getattr(net, "module", net), "learns_logvar", False):
        with autocast(y.device, cfg.precision):
            d = net(y + n.to(y.device), sigma, labels)
        return (weight * (d.float() - y) ** 2).mean()
    with autocast(y.device, cfg.precision):
        d, u = net(y + n.to(y.device), sigma, labels, return_logvar=True)
    u = u.float().reshape(-1, 1, 1, 1)
    return (weight / u.exp() * (d.float() - y) ** 2 + u).mean()
