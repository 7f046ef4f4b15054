"""EDM2's magnitude-preserving UNet (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", arXiv 2312.02696), written from the paper for the EDM preconditioning in `edm.py`.

Every layer keeps the expected magnitude of its activations at 1 (config G of the paper), so no normalisation
layer, bias or learned gain is needed to keep training stable:
- forced weight normalisation: each output channel's weight vector is renormalised to unit norm before every
  training step (stored weights stay on the unit sphere), and the layer uses w / ||w|| * gain / sqrt(fan_in);
- MP-SiLU: silu(x) / 0.596 (0.596 = the std of silu of a unit normal);
- MP-sum: lerp(a, b, t) / sqrt((1-t)^2 + t^2); MP-concat: each part scaled so the result has unit magnitude;
- pixel norm (each pixel's channel vector to unit RMS) in place of group norm; no biases;
- the noise level enters through random Fourier features (cos(2 pi (f c_noise + phi)) * sqrt(2)), the class as a
  one-hot vector through an MP linear layer, mixed with MP-sum;
- the output layer and each block's embedding modulation start from a learned gain of 0;
- the loss learns a per-sigma log-variance u(sigma) (EDM2 eq. 21): loss = lambda(sigma) ||D - y||^2 / e^u + u,
  so every noise level contributes about equally without hand-tuned weights.

Packaged as a diffusers model (`ModelMixin` + `ConfigMixin`: `save_pretrained` / `from_pretrained` with
safetensors), with the `sample_size` / `in_channels` config keys and the `forward(sample, timestep,
class_labels).sample` call of `UNet2DModel`, so the denoiser, the samplers and the exports use it unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

SILU_STD = 0.596  # std of silu(z), z ~ N(0, 1): MP-SiLU divides by it


def normalize(x: torch.Tensor, dim=None, eps: float = 1e-4) -> torch.Tensor:
    """x scaled to unit RMS over `dim` (all but the first by default): x / (eps + ||x|| / sqrt(numel))."""
    dim = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / SILU_STD


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """(1-t) a + t b, rescaled to unit magnitude for unit-magnitude, uncorrelated a and b."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenation whose parts weigh (1-t) and t and whose result has unit magnitude."""
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([c / math.sqrt(na) * (1 - t) * a, c / math.sqrt(nb) * t * b], dim=dim)


def resample(x: torch.Tensor, mode: str = "keep") -> torch.Tensor:
    """2x down (2x2 box average) or up (nearest) per channel: both preserve magnitude."""
    if mode == "keep":
        return x
    f = torch.full((x.shape[1], 1, 2, 2), 0.25, dtype=x.dtype, device=x.device)
    if mode == "down":
        return F.conv2d(x, f, groups=x.shape[1], stride=2)
    return F.conv_transpose2d(x, f * 4, groups=x.shape[1], stride=2)


class MPFourier(nn.Module):
    """Random Fourier features of a scalar: cos(2 pi (f x + phi)) * sqrt(2), unit magnitude for any x."""

    def __init__(self, num_channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.float32).ger(self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """Linear (kernel ()) or 2-D convolution with forced weight normalisation and no bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...]):
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = self.weight.to(torch.float32)
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))  # forced: the stored weights stay on the unit sphere
        w = normalize(w) * (gain / math.sqrt(w[0].numel()))  # unit-norm rows, then 1/sqrt(fan_in)
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


class Block(nn.Module):
    """EDM2's residual block: an encoder block normalises its input (pixel norm) and adds the residual; a decoder
    block takes the skip concatenation. The noise/class embedding modulates the residual branch by (1 + e)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        flavor: str = "enc",
        resample_mode: str = "keep",
        attention: bool = False,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        res_balance: float = 0.3,
        attn_balance: float = 0.3,
        clip_act: float = 256.0,
    ):
        super().__init__()
        self.out_channels, self.flavor, self.resample_mode = out_channels, flavor, resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout, self.res_balance, self.attn_balance, self.clip_act = dropout, res_balance, attn_balance, clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, (3, 3))
        self.emb_linear = MPConv(emb_channels, out_channels, ())
        self.conv_res1 = MPConv(out_channels, out_channels, (3, 3))
        self.conv_skip = MPConv(in_channels, out_channels, (1, 1)) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, (1, 1)) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, (1, 1)) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            y = self.attn_qkv(x)
            y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[2] * y.shape[3])
            q, k, v = normalize(y, dim=2).unbind(3)  # pixel norm of queries, keys and values
            w = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
            y = self.attn_proj(torch.einsum("nhqk,nhck->nhcq", w, v).reshape(*x.shape))
            x = mp_sum(x, y, t=self.attn_balance)
        return x.clip(-self.clip_act, self.clip_act)


class EDM2UNet(ModelMixin, ConfigMixin):
    """F(c_in x; c_noise, class) of EDM2, with its learned log-variance head u(c_noise) beside it.

    `timestep` is c_noise = ln(sigma) / 4 (no rescaling: the Fourier features take it as it is); `class_labels`
    are class ids (one extra id is the null class under label dropout).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 16,
        in_channels: int = 1,
        out_channels: int = 1,
        num_class_embeds: int = 10,
        model_channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_blocks: int = 1,
        attn_resolutions: tuple[int, ...] = (),
        channels_per_head: int = 64,
        dropout: float = 0.0,
        label_balance: float = 0.5,
        concat_balance: float = 0.5,
        logvar_channels: int = 128,
    ):
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise, cemb = cblock[0], max(cblock)
        kw = {"channels_per_head": channels_per_head, "dropout": dropout}
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, ())
        self.emb_label = MPConv(num_class_embeds, cemb, ())
        self.enc = nn.ModuleDict()
        cout = in_channels + 1  # a constant channel: the network sees where the image border is
        for level, channels in enumerate(cblock):
            res = sample_size >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = MPConv(cout, channels, (3, 3))
                cout = channels
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, cemb, "enc", "down", **kw)
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = Block(
                    cout, channels, cemb, "enc", attention=res in attn_resolutions, **kw
                )
                cout = channels
        self.dec = nn.ModuleDict()
        skips = [b.out_channels for b in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = sample_size >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, "dec", attention=True, **kw)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, "dec", **kw)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, "dec", "up", **kw)
            for i in range(num_blocks + 1):
                cin = cout + skips.pop()
                self.dec[f"{res}x{res}_block{i}"] = Block(
                    cin, channels, cemb, "dec", attention=res in attn_resolutions, **kw
                )
                cout = channels
        self.out_conv = MPConv(cout, out_channels, (3, 3))
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, ())

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> UNet2DOutput:
        n = self.config.num_class_embeds
        onehot = F.one_hot(class_labels.long().reshape(-1), n).to(sample.dtype) * math.sqrt(n)  # unit magnitude
        emb = mp_sum(self.emb_noise(self.emb_fourier(timestep.reshape(-1))), self.emb_label(onehot), t=0.5)
        emb = mp_silu(emb)
        x = torch.cat([sample, torch.ones_like(sample[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if name.endswith("_conv") else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "_block" in name:
                x = mp_cat(x, skips.pop(), t=self.config.concat_balance)
            x = block(x, emb)
        return UNet2DOutput(sample=self.out_conv(x, gain=self.out_gain))

    def logvar(self, c_noise: torch.Tensor) -> torch.Tensor:
        """u(sigma), the learned log-variance of the loss at noise level c_noise = ln(sigma) / 4 (one per row)."""
        return self.logvar_linear(self.logvar_fourier(c_noise.reshape(-1))).reshape(-1)

    def condition_vectors(self, num_classes: int) -> torch.Tensor:
        """The class embedding vectors (what a one-hot class becomes before it meets the noise embedding)."""
        return normalize(self.emb_label.weight.detach().float()).t()[:num_classes].clone()
