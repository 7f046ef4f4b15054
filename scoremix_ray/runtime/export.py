"""Trained models as MLflow models (pytorch flavour) with a signature, so `mlflow.pytorch.load_model` or the
UI's model registry gives a user the network itself. Saved once per stage folder (`<stage>/mlflow_model/`)
and logged into each run that used the stage (`tracking.log_models`).

The recognizer is logged as its backbone alone: the margin head is a training device, and at 10k identities
it is the larger part (10k x 512 floats). It is saved in MLflow's default "pt2" format (a torch.export graph:
loading it needs torch, not this package). Input: N x C x H x W float, RGB, (x - 127.5) / 127.5; output: the
embedding, not normalised. The generator is the EDM denoiser D(x; sigma, class), also a torch.export graph
(either network traces; no pickle, whose loading can run arbitrary code): its signature names the three
inputs; load it with `mlflow.pytorch.load_model` (pyfunc's single-input `predict` does not fit it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scoremix_ray.core.diffusion.train import load_generator
from scoremix_ray.core.recognition.train import Recognizer
from scoremix_ray.foundations.files import publish_dir

MODEL_DIR = "mlflow_model"


def _requirements() -> list[str]:
    """Pinned explicitly: MLflow's own inference of them imports the model's modules (seconds, and a guess)."""
    from importlib.metadata import version

    return [f"torch=={version('torch')}", f"scoremix-ray=={version('scoremix-ray')}"]


def _save(stage_dir: Path, model) -> Path:
    """`<stage>/mlflow_model` from `model()` -> (module, signature, save_model options), called only when the
    folder is not there yet: loading the network costs more than the check."""
    import mlflow.pytorch

    path = Path(stage_dir) / MODEL_DIR
    if (path / "MLmodel").is_file():
        return path
    module, signature, how = model()
    module = module.cpu().eval()
    # sweep trials share stages: complete or absent, and when another trial's copy landed first, that one stays
    publish_dir(
        path,
        lambda tmp: mlflow.pytorch.save_model(
            module, tmp, signature=signature, pip_requirements=_requirements(), **how
        ),
    )
    return path


def recognizer_model(stage_dir: Path) -> Path:
    """`<stage>/mlflow_model`: the recognizer's backbone, (N, C, H, W) float32 -> (N, D) float32."""

    def model():
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        net = Recognizer.load(Path(stage_dir) / "final")
        s, c, d = net.meta["image_size"], net.meta["channels"], net.meta["config"]["embedding_dim"]
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, c, s, s), "input")]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, d), "embedding")]),
        )
        example = np.zeros((2, c, s, s), np.float32)  # pt2 (torch.export) traces it: the batch stays free
        return net.backbone, signature, {"input_example": example, "serialization_format": "pt2"}

    return _save(stage_dir, model)


def generator_model(stage_dir: Path) -> Path:
    """`<stage>/mlflow_model`: the EDM denoiser, (x, sigma, class labels) -> denoised x."""

    def model():
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        net = load_generator(stage_dir)
        size = net.unet.config.sample_size
        x = (-1, net.unet.config.in_channels, size, size)
        signature = ModelSignature(
            inputs=Schema(
                [
                    TensorSpec(np.dtype(np.float32), x, "x"),
                    TensorSpec(np.dtype(np.float32), (-1,), "sigma"),
                    TensorSpec(np.dtype(np.int64), (-1,), "labels"),
                ]
            ),
            outputs=Schema([TensorSpec(np.dtype(np.float32), x, "denoised")]),
        )
        # traced with a batch of 2: the batch stays free (a batch of 1 would be fixed at 1)
        example = (np.zeros((2, *x[1:]), np.float32), np.array([0.5, 2.0], np.float32), np.array([0, 0]))
        return net, signature, {"input_example": example, "serialization_format": "pt2"}

    return _save(stage_dir, model)
