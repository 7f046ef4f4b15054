"""Where tensors live and in what precision. Ray-free: the Ray layer decides *whether* a worker or actor has a
GPU; this module only follows the network.

Rules the rest of the code keeps:
  - every tensor a network sees is created on, or moved to, that network's device (`device_of`);
  - random draws happen on the CPU from their seed and are then moved, so a seed gives the same noise on any
    device;
  - results leave the device through `to_numpy`, the one device -> host crossing (a test replaces it to run
    every path with the network on PyTorch's `meta` device, which raises on any tensor left elsewhere);
  - reduced precision (bf16 autocast) covers the network's forward pass only; mixing, integration and losses
    stay in float32/64.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from scoremix_ray.foundations.errors import ScoreMixError

PRECISIONS = ("fp32", "bf16")


def device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """Device -> host."""
    return x.detach().cpu().numpy()


def autocast(device: torch.device | str, precision: str):
    """bf16 autocast for a network's forward pass on CUDA (or CPU, where it is slower but measures the same
    numerics); "fp32" is a no-op. Ops autocast keeps in float32 (softmax, norms) stay so."""
    device = torch.device(device)
    if precision == "fp32" or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"unknown precision '{precision}' (valid: {', '.join(PRECISIONS)})")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def local_device(use_gpu: bool) -> torch.device:
    """The device a process given `use_gpu` by Ray computes on (Ray sets CUDA_VISIBLE_DEVICES to its GPUs)."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ScoreMixError(
            "a GPU was requested but CUDA is not available in this process "
            "(set ray.use_gpu=false or generation.actor_gpus=0)"
        )
    return torch.device("cuda")
