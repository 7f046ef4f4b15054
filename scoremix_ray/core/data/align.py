"""Face crops aligned to the ArcFace 5-point template (insightface `utils/face_align.py`, `eval_ijbc.py`).

A similarity transform (rotation, uniform scale, translation) is fit by least squares (Umeyama) from the
detector's 5 landmarks (eyes, nose tip, mouth corners) to the template, and the crop is warped with it. The
libraries are insightface's own choices, so a crop here is the crop its evaluation embeds: scikit-image's
`SimilarityTransform` for the estimate (closed-form Umeyama, no RANSAC: 5 points, all trusted) and OpenCV's
`warpAffine` (bilinear, black border) for the warp.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scoremix_ray.core.data.images import BadImage

TEMPLATE_SIZE = 112
# where the 5 landmarks land in a 112 x 112 ArcFace crop (x, y): left eye, right eye, nose, mouth left, right
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    np.float32,
)


def similarity(landmarks: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The 2 x 3 matrix of the similarity transform that takes `landmarks` (5 x 2, x-y in the source image)
    nearest, in least squares, to the template scaled to a `size` x `size` crop."""
    from skimage.transform import SimilarityTransform

    dst = ARCFACE_TEMPLATE * (size / TEMPLATE_SIZE)
    t = SimilarityTransform.from_estimate(np.asarray(landmarks, np.float64).reshape(5, 2), dst)
    if not t:  # degenerate landmarks (all on one point): no transform
        raise ValueError(f"no similarity transform for landmarks {np.asarray(landmarks).ravel().tolist()}")
    return t.params[:2].astype(np.float64)


def align(image: np.ndarray, landmarks: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """uint8 (H, W, C) image -> the (size, size, C) crop aligned by its 5 landmarks."""
    import cv2

    out = cv2.warpAffine(image, similarity(landmarks, size), (size, size), borderValue=0.0)
    return out[..., None] if out.ndim == 2 else out


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3), read by OpenCV as insightface reads it; one line if it is not."""
    import cv2

    data = np.fromfile(path, np.uint8) if Path(path).is_file() else None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if image is None:
        raise BadImage(f"cannot decode image {path}: " + ("missing" if data is None else "not an image OpenCV reads"))
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """RGB (H, W, 3) -> (H, W, channels): grey by ITU-R 601 luma, as PIL's convert("L") does."""
    if channels == 3:
        return image
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
