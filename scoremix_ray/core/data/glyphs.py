"""The embedded many-class source: letters and digits of Latin, Greek and Cyrillic rendered in the TrueType fonts
matplotlib ships (DejaVu, STIX, Computer Modern), each image a seeded pose of one glyph.

Identities are characters, images are fonts x poses: Omniglot's shape (many classes, ~20 images each), built
offline in seconds from installed files. Open-set splits hold out whole characters. Characters whose glyphs
look the same once centred and scaled (Latin A, Greek Alpha, Cyrillic A; o and O) are one class: the first in
script order is kept, the look-alikes are dropped (`distinct`). The same fonts and seed give the same pixels
(FreeType's rasteriser, as installed, is part of "the same": another FreeType may differ in antialiasing).
"""

from __future__ import annotations

import unicodedata
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from scoremix_ray.core.data.images import save_grid

RENDER = 32  # native size of an image (the data stage resizes to data.image_size)
PER_CLASS = 24  # images of each character
SEED = 0  # the poses; fixed, so the source is one dataset (folds and seeds act on it through the split)

SCRIPTS = {
    "latin": [*range(0x41, 0x5B), *range(0x61, 0x7B)],
    "digit": list(range(0x30, 0x3A)),
    "greek": [*range(0x391, 0x3A2), *range(0x3A3, 0x3AA), *range(0x3B1, 0x3CA)],  # 0x3A2: unassigned
    "cyrillic": [*range(0x410, 0x450), 0x401, 0x451],
}
FULL_FONTS = [
    "DejaVuSans",
    "DejaVuSans-Bold",
    "DejaVuSans-Oblique",
    "DejaVuSans-BoldOblique",
    "DejaVuSerif",
    "DejaVuSerif-Bold",
    "DejaVuSerif-Italic",
    "DejaVuSerif-BoldItalic",
    "DejaVuSansMono",
    "DejaVuSansMono-Bold",
    "DejaVuSansMono-Oblique",
    "DejaVuSansMono-BoldOblique",
    "STIXGeneral",
    "STIXGeneralBol",
    "STIXGeneralItalic",
    "STIXGeneralBolIta",
]
LATIN_FONTS = ["cmr10", "cmb10", "cmss10", "cmti10", "cmtt10"]  # Computer Modern: ASCII letters and digits only
REFERENCE = ["DejaVuSans", "DejaVuSerif", "STIXGeneral"]  # where look-alikes are judged
SAME_GLYPH = 0.95  # IoU of the centred, scaled ink (64 px) above which two characters look the same (in any
# reference font: fonts draw Latin A and Greek Alpha with one outline; Theta vs O: 0.78-0.88, Pi vs H 0.74-0.89)


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@cache
def _font(name: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(font_dir() / f"{name}.ttf"), size)


def _covers(name: str, code: int) -> bool:
    return code in _charmap(name)


@cache
def _charmap(name: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(str(font_dir() / f"{name}.ttf")).get_charmap())


def _ink(code: int, font: str) -> np.ndarray:
    """The glyph's ink, white on black, cropped to its bounding box: uint8 (h, w)."""
    from PIL import Image, ImageDraw

    f = _font(font, 2 * RENDER)
    canvas = Image.new("L", (4 * RENDER, 4 * RENDER), 0)
    ImageDraw.Draw(canvas).text((RENDER, RENDER), chr(code), fill=255, font=f)
    box = canvas.getbbox()
    return np.asarray(canvas.crop(box)) if box else np.zeros((1, 1), np.uint8)


def _centred(ink: np.ndarray, size: int, fill: float = 0.8) -> np.ndarray:
    """Ink scaled (aspect kept) so its longer side is `fill` of a size x size square, centred there."""
    from PIL import Image

    h, w = ink.shape
    scale = fill * size / max(h, w)
    small = Image.fromarray(ink).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    out = Image.new("L", (size, size), 0)
    out.paste(small, ((size - small.width) // 2, (size - small.height) // 2))
    return np.asarray(out)


def distinct(codes: list[int]) -> tuple[list[int], dict[int, int]]:
    """(the characters kept, {dropped: the kept one it looks like}): in order, a character is dropped when its
    centred ink overlaps a kept one's with IoU >= SAME_GLYPH in any reference font."""
    fonts = [f for f in REFERENCE if all(_covers(f, c) for c in codes)]
    masks = {c: np.stack([_centred(_ink(c, f), 2 * RENDER) > 128 for f in fonts]) for c in codes}
    kept, dropped = [], {}
    for c in codes:
        for k in kept:
            inter = (masks[c] & masks[k]).sum((1, 2))
            union = (masks[c] | masks[k]).sum((1, 2))
            if np.max(inter / np.maximum(union, 1)) >= SAME_GLYPH:
                dropped[c] = k
                break
        else:
            kept.append(c)
    return kept, dropped


def _pose(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One seeded view of a glyph: scale, rotation, shear, shift (one affine map), stroke width, blur."""
    from PIL import Image, ImageFilter

    base = _centred(ink, RENDER, fill=rng.uniform(0.6, 0.85))
    angle, shear = np.deg2rad(rng.uniform(-12, 12)), rng.uniform(-0.25, 0.25)
    dx, dy = rng.uniform(-0.08, 0.08, 2) * RENDER
    # output pixel p maps to input c + A (p - c) - t, with A = R(angle) @ [[1, shear], [0, 1]]
    a = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ np.array([[1, shear], [0, 1]])
    c = np.array([RENDER / 2, RENDER / 2])
    off = c - a @ c - np.array([dx, dy])
    img = Image.fromarray(base).transform(
        (RENDER, RENDER), Image.AFFINE, (*a[0], off[0], *a[1], off[1]), resample=Image.BILINEAR
    )
    stroke = rng.choice(["thin", "as is", "bold"], p=[0.25, 0.5, 0.25])
    if stroke == "bold":
        img = img.filter(ImageFilter.MaxFilter(3))
    elif stroke == "thin":
        thin = img.filter(ImageFilter.MinFilter(3))
        img = thin if np.asarray(thin).max() > 128 else img  # a hairline font would vanish: kept as is
    return np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8))))


def class_name(code: int) -> str:
    """'U+0041 LATIN CAPITAL LETTER A' (sorted names keep script blocks together)."""
    return f"U+{code:04X} {unicodedata.name(chr(code), '?')}"


@lru_cache(maxsize=1)
def render() -> tuple[np.ndarray, np.ndarray, list[str], dict[int, int]]:
    """(pixels uint8 (N, RENDER, RENDER), labels (N,), class names, dropped look-alikes). Each class gets
    PER_CLASS images: the fonts covering it in turn, each image a pose drawn from [SEED, code, i]."""
    codes = [c for script in SCRIPTS.values() for c in script]
    kept, dropped = distinct(codes)
    kept.sort()
    images, labels = [], []
    for label, code in enumerate(kept):
        fonts = [f for f in FULL_FONTS + LATIN_FONTS if _covers(f, code)]
        inks = {f: _ink(code, f) for f in fonts}
        for i in range(PER_CLASS):
            images.append(_pose(inks[fonts[i % len(fonts)]], np.random.default_rng([SEED, code, i])))
            labels.append(label)
    return np.stack(images), np.array(labels, np.int64), [class_name(c) for c in kept], dropped


def main(path: str = "glyphs.png", classes: int = 24, per_class: int = 12) -> None:
    """A picture of the source: `classes` characters spread over the scripts, `per_class` images each."""
    pixels, labels, names, dropped = render()
    picked = np.linspace(0, len(names) - 1, classes).round().astype(int)
    save_grid([pixels[labels == c][:per_class, :, :, None] for c in picked], path, upscale=2)
    print(f"{len(names)} classes x {PER_CLASS} images ({len(dropped)} look-alikes dropped) -> {path}")


if __name__ == "__main__":  # python -m scoremix_ray.core.data.glyphs docs/glyphs.png
    import sys

    main(*sys.argv[1:2])
