"""Image arrays, codecs and grids.

Convention: images are uint8 arrays (N, H, W, C) on disk and in the data layer; models see float32
(N, C, H, W) in [-1, 1] (``to_model`` / ``from_model``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from scoremix_ray.errors import ScoreMixError

if TYPE_CHECKING:
    import torch


class BadImage(ScoreMixError):
    """An image whose bytes do not decode (`data.on_bad_image` says what the data stage does about it)."""


def decode(data: bytes, size: int, channels: int, name: str) -> np.ndarray:
    """Encoded image bytes -> uint8 (size, size, channels). `name` is what an error message blames."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BadImage(f"cannot decode image {name}: {e}") from None
    return prepare(img, size, channels)


def prepare(img: Image.Image, size: int, channels: int) -> np.ndarray:
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W, C) -> PNG bytes (lossless, so a decoded image is bit-identical)."""
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def to_model(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1]."""
    return np.ascontiguousarray((images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2))  # see to_model_tensor


def to_model_tensor(images, device) -> torch.Tensor:
    """uint8 (N, H, W, C) torch tensor -> float32 (N, C, H, W) in [-1, 1] on `device`: a batch crosses to the
    device as uint8 (4x fewer bytes) and becomes float there. Same values as `to_model`."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x.contiguous()  # the permuted (channels-last) strides crash oneDNN's 1x1 conv backward on CPU (RGB)


def from_model(x: np.ndarray) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), rounded and clipped."""
    return (
        np.clip(np.rint((np.asarray(x, dtype=np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    )


def grid(rows: list[np.ndarray], pad: int = 1, upscale: int = 1) -> np.ndarray:
    """A list of rows, each uint8 (n, H, W, C), -> one uint8 (H', W', C) image; short rows are padded."""
    h, w, c = rows[0].shape[1:]
    cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = img
    if upscale > 1:
        out = out.repeat(upscale, 0).repeat(upscale, 1)
    return out


def save_grid(rows: list[np.ndarray], path: str | Path, upscale: int = 4) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    g = grid(rows, upscale=upscale)
    Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(path)
    return path
