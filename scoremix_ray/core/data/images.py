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

from scoremix_ray.foundations.errors import ScoreMixError

if TYPE_CHECKING:
    import torch


class BadImage(ScoreMixError):
    """An image whose bytes do not decode (`data.on_bad_image` says what the data stage does about it)."""


def decode(data: bytes | BadImage, size: int, channels: int, name: str) -> np.ndarray:
    """Encoded image bytes -> uint8 (size, size, channels). `name` is what an error message blames."""
    return prepare(open_image(data, name), size, channels)


def open_image(data: bytes | BadImage, name: str) -> Image.Image:
    """Encoded image bytes -> a loaded PIL image. A reader that could not read an image (a broken link, a
    record cut short) passes the `BadImage` saying why."""
    if isinstance(data, BadImage):
        raise data
    if not data:
        raise BadImage(f"cannot decode image {name}: empty file")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:  # its message is the BytesIO's repr, which names nothing
        raise BadImage(f"cannot decode image {name}: not an image format PIL reads") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data; SyntaxError from some plugins
        raise BadImage(f"cannot decode image {name}: {e}") from None
    return img


def to_8bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit grey (I;16*, I) and float (F) images as 8-bit grey, scaled by their type's range:
    PIL's convert("L") clips them at 255 instead, which turns a 16-bit photo almost white. F is taken to
    be in [0, 1] when its values are, else in [0, 255]."""
    if not (img.mode.startswith("I") or img.mode == "F"):
        return img
    arr = np.asarray(img)
    if img.mode == "F":
        scale = 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0
    else:  # I;16 holds 0..65535; I (int32) too, when it came from a 16-bit file (PNG, TIFF)
        scale = 255.0 / 65535.0 if int(arr.max(initial=0)) > 255 or img.mode.startswith("I;16") else 1.0
    return Image.fromarray(np.clip(np.rint(arr.astype(np.float64) * scale), 0, 255).astype(np.uint8))


def square(img: Image.Image) -> Image.Image:
    """The centred square of a non-square image: faces and glyphs are centred, so the crop keeps the subject
    where a resize would stretch it."""
    w, h = img.size
    if w == h:
        return img
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def prepare(img: Image.Image, size: int, channels: int) -> np.ndarray:
    img = square(to_8bit(img)).convert("L" if channels == 1 else "RGB")
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
