"""insightface's checkpoints in and out: an arcface_torch `backbone.pth` as the baseline recognizer, and a
trained recognizer as an insightface-named state dict and as ONNX with insightface's input convention.

The backbone (`backbone.py`) already carries insightface's parameter names (conv1/bn1/prelu, layer1-4 blocks
bn1/conv1/bn2/prelu/conv2/bn3/downsample, bn2, fc, features), so a state dict crosses unchanged; what is
checked here is that it fits the configured architecture, with one line naming the first key that does not.
Input convention of both directions: RGB, (x - 127.5) / 127.5, N x C x H x W (`data.images.to_model_tensor`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scoremix_ray.core.recognition.train import Recognizer
from scoremix_ray.foundations.checkpoints import load_weights
from scoremix_ray.foundations.errors import ScoreMixError

# arcface_torch's IResNets (get_model("r50") ...): 112 x 112 RGB in, widths 64-512, blocks per stage
ARCFACE_WIDTHS = (64, 128, 256, 512)
ARCFACE_DEPTHS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
ONNX_ATOL = 1e-4  # onnxruntime against torch, on the export's check batch


def arcface_name(meta: dict) -> str | None:
    """The arcface_torch network (`r50`, ...) a recognizer's architecture is, or None (then only the names
    match insightface's: arcface_torch's own classes cannot build it)."""
    c = meta["config"]
    if (meta["image_size"], meta["channels"], tuple(c["widths"])) != (112, 3, ARCFACE_WIDTHS):
        return None
    return next((n for n, d in ARCFACE_DEPTHS.items() if d == tuple(c["blocks"])), None)


def backbone_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an arcface_torch checkpoint: a plain state dict (`backbone.pth`), or one saved from a
    DistributedDataParallel wrapper ("module." names) or inside a dict under "state_dict"/"model"."""
    state = load_weights(Path(path))
    for key in ("state_dict", "model", "backbone"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ScoreMixError(f"{path}: not a state dict of tensors (an arcface_torch backbone.pth is one)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone(backbone: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """`state` into `backbone`, every key and shape checked first: the first missing, unexpected or misshapen
    key is one line naming it (and both shapes), not torch's list of every key."""
    want = backbone.state_dict()
    for key, tensor in want.items():
        if key not in state:
            raise ScoreMixError(f"{source}: no '{key}' (model shape {tuple(tensor.shape)}): not this architecture")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ScoreMixError(
                f"{source}: '{key}' is {tuple(state[key].shape)} in the checkpoint, {tuple(tensor.shape)} in the "
                "model (recognizer.widths/blocks/embedding_dim and data.image_size/channels build the model)"
            )
    extra = [k for k in state if k not in want]
    if extra:
        raise ScoreMixError(f"{source}: unexpected key '{extra[0]}' ({len(extra)} in all): not this architecture")
    backbone.load_state_dict(state, strict=True)


def load_pretrained(net, path: str | Path) -> None:
    """A Recognizer whose backbone becomes the arcface_torch checkpoint at `path` (its head is untouched: it
    is used only in training)."""
    load_backbone(net.backbone, backbone_state(path), path)


def export(model_dir: str | Path, out: str | Path, check_batch: int = 4) -> dict:
    """`out/backbone.pth` (insightface names, loadable with strict=True), `out/model.onnx` (input "input",
    N x C x H x W float in insightface's normalisation, dynamic batch; output "embedding", not normalised) and
    `out/export.json` (architecture, the arcface_torch name if it is one, onnxruntime's largest difference to
    torch on a seeded batch)."""
    net = Recognizer.load(model_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    backbone = net.backbone.eval()
    torch.save(backbone.state_dict(), out / "backbone.pth")
    size, channels = net.meta["image_size"], net.meta["channels"]
    x = torch.from_numpy(
        np.random.default_rng(0).uniform(-1, 1, (check_batch, channels, size, size)).astype(np.float32)
    )
    onnx_path = out / "model.onnx"
    torch.onnx.export(
        backbone,
        (x,),
        str(onnx_path),
        input_names=["input"],
        output_names=["embedding"],
        dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
        dynamo=False,  # the TorchScript exporter: needs only `onnx`, and gives the plain graph insightface's tools read
    )
    info = {
        "backbone": "backbone.pth",
        "onnx": "model.onnx",
        "arcface_torch": arcface_name(net.meta),
        "input": {
            "shape": ["batch", channels, size, size],
            "colour": "RGB" if channels == 3 else "grey",
            "normalise": "(x - 127.5) / 127.5",
        },
        "embedding_dim": net.meta["config"]["embedding_dim"],
        "onnx_max_abs_diff": onnx_difference(onnx_path, backbone, x),
        "from": str(Path(model_dir).resolve()),
    }
    if info["onnx_max_abs_diff"] is not None and info["onnx_max_abs_diff"] > ONNX_ATOL:
        raise ScoreMixError(
            f"{onnx_path}: onnxruntime differs from torch by {info['onnx_max_abs_diff']:.2e} > {ONNX_ATOL}"
        )
    (out / "export.json").write_text(json.dumps(info, indent=2))
    return info


@torch.no_grad()
def onnx_difference(path: Path, module: nn.Module, x: torch.Tensor) -> float | None:
    """Largest |onnxruntime - torch| over the outputs for `x` (None without onnxruntime installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    return float(np.abs(got - module(x).numpy()).max())
