"""On a GPU (skipped without CUDA; the CPU suite covers device placement on `meta`, tests/test_devices.py).

python -m pytest tests/test_gpu.py -m gpu      # on a machine with one CUDA GPU
"""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def exact_fp32():
    """TF32 off for the comparison (cuDNN convolutions default to TF32 on Ampere and newer)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("guidance", ["none", "autoguidance"])
def test_gpu_and_cpu_images_agree_for_the_same_seeds(tiny_generator, exact_fp32, guidance):
    from scoremix_ray.config import SamplerConfig
    from scoremix_ray.core.diffusion.sampler import generate

    net, guide, _, _ = tiny_generator
    scfg = SamplerConfig(steps=8, guidance=guidance, guidance_scale=1.5)
    labels, weights, seeds = (
        torch.tensor([[0, 3], [1, 2], [4, 4], [2, 0]] * 4),
        torch.full((16, 2), 0.5),
        list(range(16)),
    )
    on = {}
    for device in ("cpu", "cuda"):
        n, g = copy.deepcopy(net).to(device), copy.deepcopy(guide).to(device)
        on[device] = generate(n, labels, weights, seeds, scfg, guide_net=g if guidance == "autoguidance" else None)
    diff = np.abs(on["cpu"].astype(int) - on["cuda"].astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())  # float rounding, nothing more


def test_tiny_pipeline_end_to_end_on_one_gpu_with_two_fractional_actors(ray_session, tmp_path):
    from scoremix_ray import pipeline
    from scoremix_ray.config import load_config
    from scoremix_ray.runtime.context import start

    cfg = load_config(
        None,
        [
            f"out_dir={tmp_path}",
            *TINY_RUN,
            "ray.use_gpu=auto",
            "generation.num_actors=2",
            "generation.actor_gpus=0.5",
            "generation.unit_size=4",
            "sampler.guidance=autoguidance",
            "sampler.guidance_scale=1.5",
            "sampler.precision=bf16",
        ],
    )
    result, _ = pipeline.run(*start(cfg))
    gen = json.loads((Path(result["generate"]["dir"]) / "generation.json").read_text())
    assert gen["complete"] and gen["rows_written"] == 16 and gen["devices"] == ["cuda:0"]
    metrics = json.loads((cfg.run_dir / "metrics.json").read_text())
    assert 0 <= metrics["augmented"]["verification_accuracy"] <= 1 and "cka_linear" in metrics["alignment"]
