"""A trained recognizer against the split's seed-fixed pairs, and an InsightFace `.bin` set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scoremix_ray.core.data import Split
from scoremix_ray.core.data.images import decode
from scoremix_ray.core.data.recordio import read_bin
from scoremix_ray.core.evaluation.verification import (
    FOLDS,
    closed_set_accuracy,
    pair_scores,
    rank1_accuracy,
    verification_metrics,
)
from scoremix_ray.core.recognition.train import Recognizer, class_centres, embed, embed_batches
from scoremix_ray.foundations.errors import ScoreMixError
from scoremix_ray.foundations.progress import Progress


def evaluate_recognizer(cfg, split_path: str | Path, rec_dir: str | Path, device: str = "cpu") -> dict:
    """A trained recognizer stage on `device`: writes `centres.npy` (class centres of the training images, for
    selection) and returns the verification metrics on the split's pairs."""
    rec_dir, flip = Path(rec_dir), cfg.recognizer.hflip
    split = Split.load(split_path)
    net = Recognizer.load(rec_dir / "final", device)
    emb = embed_batches(net, split.train.images, flip=flip)  # images and embeddings stream into the sums
    np.save(rec_dir / "centres.npy", class_centres(emb, split.train.labels, split.train.num_classes))
    return evaluate_split(net, split, flip=flip)


def evaluate_split(net: Recognizer, split: Split, flip: bool = False) -> dict:
    """Verification on the split's pairs, rank-1 identification among the test images, and closed-set
    accuracy (nearest training-class centre) where the test classes are training classes."""
    emb = embed(net, split.test.images, flip=flip)
    out = verification_metrics(pair_scores(emb, split.pairs), split.issame)
    out["rank1_accuracy"] = rank1_accuracy(emb, split.test.labels)
    if split.protocol == "closed-set":
        train_emb = embed_batches(net, split.train.images, flip=flip)
        centres = class_centres(train_emb, split.train.labels, split.train.num_classes)
        out["closed_set_accuracy"] = closed_set_accuracy(emb, split.test.labels, centres)
    return out


def evaluate_bin_file(path: str | Path, model_dir: str | Path, flip: bool, device: str = "cpu") -> dict:
    """The recognizer in `model_dir` on the `.bin` set at `path`, on `device` (`RunContext.on_device`)."""
    return evaluate_bin(Recognizer.load(model_dir, device), path, flip=flip)


def evaluate_bin(net: Recognizer, path: str | Path, flip: bool = False) -> dict:
    """An InsightFace verification `.bin` (image pairs stored consecutively), decoded to the model's size."""
    blobs, issame = read_bin(path)
    if len(issame) < FOLDS:
        raise ScoreMixError(f"{path}: {len(issame)} pairs are too few for {FOLDS}-fold verification accuracy")
    size, channels = net.meta["image_size"], net.meta["channels"]
    batch = 512  # decoded a batch at a time: a 12,000-image set at 112 px RGB would be 450 MB at once

    def decoded(lo: int) -> np.ndarray:
        return np.stack(
            [decode(blobs[i], size, channels, f"{path} image {i}") for i in range(lo, min(lo + batch, len(blobs)))]
        )

    progress = Progress(f"evaluate {Path(path).name}", len(blobs))
    emb = np.concatenate([embed(net, decoded(lo), flip=flip) for lo in progress.over(range(0, len(blobs), batch))])
    pairs = np.arange(len(blobs)).reshape(-1, 2)
    return verification_metrics(pair_scores(emb, pairs), issame)
