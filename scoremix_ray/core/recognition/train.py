"""Recognizer training loop, free of Ray (`scoremix_ray.runtime.train` runs it on Ray Train workers).

Recipe (insightface arcface_torch, scaled down): SGD with momentum 0.9 and weight decay, linear warmup
for the first epoch then cosine decay to 0, margin-softmax loss on the head's logits. The batches come from a
feed (`data/batches.py`): the training set cached in memory when it fits `ray.cache_mb`, else streamed by Ray
Data; either way the rows of each step follow one seeded schedule, so a resumed run continues exactly.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scoremix_ray.config import RecognizerConfig
from scoremix_ray.core.data.batches import schedule
from scoremix_ray.core.data.images import to_model_tensor
from scoremix_ray.core.recognition.backbone import IResNet
from scoremix_ray.core.recognition.heads import MarginHead
from scoremix_ray.foundations import devices
from scoremix_ray.foundations.checkpoints import (
    KEEP,
    Monitor,
    Report,
    load_weights,
    log_progress,
    read_meta,
    resume,
    resume_history,
    save_checkpoint,
    step_generator,
)
from scoremix_ray.foundations.errors import ScoreMixError, first_line
from scoremix_ray.foundations.progress import Progress

log = logging.getLogger("scoremix_ray")


class Recognizer(nn.Module):
    """Backbone + margin head. `forward` gives embeddings (not normalised); `head` is only for training."""

    def __init__(self, cfg: RecognizerConfig, num_classes: int, image_size: int, channels: int):
        super().__init__()
        self.meta = {
            "config": cfg.model_dump(mode="json"),
            "num_classes": num_classes,
            "image_size": image_size,
            "channels": channels,
        }
        self.backbone = IResNet(channels, image_size, cfg.widths, cfg.blocks, cfg.embedding_dim, cfg.dropout)
        self.head = MarginHead(cfg.embedding_dim, num_classes, cfg.head, cfg.scale, cfg.margin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path / "model.pt")
        (path / "recognizer.json").write_text(json.dumps(self.meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Recognizer:
        path = Path(path)
        if not (path / "recognizer.json").is_file():
            raise ScoreMixError(f"no recognizer in {path} (expected recognizer.json and model.pt)")
        meta = read_meta(path / "recognizer.json")
        try:
            net = cls(RecognizerConfig(**meta["config"]), meta["num_classes"], meta["image_size"], meta["channels"])
            net.load_state_dict(load_weights(path / "model.pt", device))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:  # metadata and weights that do not match
            raise ScoreMixError(f"recognizer in {path} does not load: {type(e).__name__}: {first_line(e)}") from None
        return net.to(device).eval()


def learning_rate(cfg: RecognizerConfig, step: int, total: int, warmup: int) -> float:
    """Linear warmup to cfg.lr, then cosine to 0: lr_t = lr * (1 + cos(pi (t - w) / (T - w))) / 2."""
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_recognizer(
    feed,
    num_classes: int,
    cfg: RecognizerConfig,
    seed: int,
    out_dir: str | Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    prepare: Callable[[nn.Module], nn.Module] = lambda m: m,
    report: Report | None = None,
    device: str = "cpu",
    stop_after_epochs: int | None = None,
    monitor: Monitor | None = None,
    keep: int = KEEP,
    check: tuple[int, Callable[[nn.Module], dict]] | None = None,
) -> Path:
    """Train (or resume) on a feed of uint8 images (`data.batches`: InMemory or Streamed); returns the final
    model folder. Rank 0 writes checkpoints and the curve (`history.jsonl`, per epoch: loss, train accuracy,
    learning rate, images/s; also handed to `monitor`). `stop_after_epochs` ends this call early (as an
    interruption would), for tests of resume. `check` = (N, fn): every N optimizer steps rank 0 hands
    fn(network)'s numbers (the .bin benchmarks) to `monitor` at that step; the eval-mode pass changes nothing
    that training reads (no batch-norm statistics, no random numbers).
    """
    out_dir = Path(out_dir)
    ckpt_root = out_dir / "checkpoints"
    sched = schedule("recognizer", cfg, len(feed), seed, rank, world_size)
    torch.manual_seed(seed)  # initialisation identical on every rank
    net = Recognizer(cfg, num_classes, feed.image_shape[0], feed.image_shape[2]).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    steps_per_epoch, total = sched.steps_per_epoch, sched.total
    ckpt, state = resume(ckpt_root, device, net=net, opt=opt)
    epoch = state.get("epoch", 0)
    if ckpt is not None:
        log.info("recognizer: resumed from %s (epoch %d of %d)", ckpt, epoch, cfg.epochs)
    if rank == 0:
        resume_history(out_dir, epoch, monitor)
    model = prepare(net)
    batches = feed.batches(sched, epoch * steps_per_epoch)
    last_epoch = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, epoch + stop_after_epochs)
    batch = sched.per_rank * world_size
    progress = Progress("recognizer", total * batch).begin_at(epoch * steps_per_epoch * batch)
    while epoch < last_epoch:
        t0, losses, correct, seen = time.time(), [], 0, 0
        flip_gen = step_generator(seed, rank + 1, epoch)
        model.train()
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            images, y = next(batches)
            if cfg.hflip:  # on the uint8 batch, before it crosses to the device
                flip = torch.rand(len(images), generator=flip_gen) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(2), images)
            x, y = to_model_tensor(images, device), y.to(device)
            for g in opt.param_groups:
                g["lr"] = learning_rate(cfg, step, total, steps_per_epoch)
            with devices.autocast(device, cfg.precision):  # bf16: the backbone; the margin head stays fp32
                emb = model(x)
            logits = net.head(emb.float(), y)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            correct += int((logits.detach().argmax(1) == y).sum())  # with the margin: a pessimistic accuracy
            seen += len(y)
            if rank == 0:  # within the epoch: one of 80,000 faces takes minutes
                progress.tick((step + 1) * batch, f"epoch {epoch + 1}/{cfg.epochs}, step {i + 1}/{steps_per_epoch}")
            if check is not None and rank == 0 and (step + 1) % check[0] == 0:
                found = check[1](net)
                model.train()
                log.info("recognizer: step %d: %s", step + 1, ", ".join(f"{k} {v:.4f}" for k, v in found.items()))
                if monitor is not None:
                    monitor(found, step + 1)
        epoch += 1
        ckpt_dir = None
        at_checkpoint = epoch % cfg.checkpoint_every == 0 or epoch == last_epoch
        if rank == 0 and at_checkpoint:
            ckpt_dir = save_checkpoint(
                ckpt_root,
                epoch,
                {
                    "net": net.state_dict(),
                    "opt": opt.state_dict(),
                    "epoch": epoch,
                    "config": cfg.model_dump(mode="json"),
                },
                keep=keep,
            )
        dt = time.time() - t0
        metrics = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "train_accuracy": correct / max(1, seen),
            "lr": opt.param_groups[0]["lr"],
            "images_per_s": seen * world_size / dt,
        }
        if rank == 0:  # every epoch is in history.jsonl and the run's curve; the console gets one in 15 s
            progress.say(
                "recognizer: epoch %d/%d loss %.3f  train acc %.3f  %.0f img/s",
                epoch,
                cfg.epochs,
                metrics["loss"],
                metrics["train_accuracy"],
                metrics["images_per_s"],
                last=epoch == cfg.epochs,
            )
            log_progress(out_dir, metrics, epoch, monitor)
        if report is not None and at_checkpoint:  # a Ray Train report costs ~1 s here: not every epoch
            report(metrics, ckpt_dir)
    final = out_dir / "final"
    if rank == 0 and epoch == cfg.epochs:
        net.eval().save(final)
    return final


EMBED_PIXELS = 2**21  # pixels a batch of `embed`: 512 images at 64 px, 167 at 112 px (activations ~70 MB a layer)


@torch.no_grad()
def embed_batches(net: Recognizer, images, batch_size: int | None = None, flip: bool = False):
    """L2-normalised embeddings of uint8 images (an array or an ImageStore), one batch at a time: only a batch
    of images is ever read. With `flip`, the embedding of the image plus that of its mirror (the insightface
    test-time habit, only where mirroring is meaningful). Default batch: EMBED_PIXELS pixels, at most 512."""
    net.eval()
    device = devices.device_of(net)
    batch_size = batch_size or embed_batch_size(images.shape[1])
    for i in Progress("embed", len(images)).over(range(0, len(images), batch_size)):
        yield embed_images(net, images[i : i + batch_size], device, flip)


def embed_batch_size(size: int) -> int:
    """Images an embedding batch holds at `size` px: EMBED_PIXELS pixels, between 16 and 512."""
    return max(16, min(512, EMBED_PIXELS // (size * size)))


@torch.no_grad()
def embed_images(net: Recognizer, images: np.ndarray, device, flip: bool = False, normalize: bool = True) -> np.ndarray:
    """One batch of uint8 (N, H, W, C) images -> (N, D) embeddings: with `flip`, the sum of the image's and its
    mirror's; L2-normalised unless `normalize` is False (IJB keeps the norm as a face's quality weight)."""
    x = to_model_tensor(torch.from_numpy(np.ascontiguousarray(images)), device)
    e = net(x)
    if flip:
        e = e + net(x.flip(3))
    return devices.to_numpy(F.normalize(e, dim=1) if normalize else e.float())


def embed(net: Recognizer, images, batch_size: int | None = None, flip: bool = False) -> np.ndarray:
    """(N, D) embeddings: the images stream, the embeddings (D floats an image) are kept, written into one
    array allocated up front (a list of small batch arrays kept between the large transient activations
    fragmented the heap: 1.9 GB peak for 80,000 images at 112 px, against 0.8 GB for the same pass unkept)."""
    out = np.empty((len(images), net.head.weight.shape[1]), np.float32)
    lo = 0
    for e in embed_batches(net, images, batch_size, flip):
        out[lo : lo + len(e)] = e
        lo += len(e)
    return out


def class_centres(emb, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class centre: mean of the L2-normalised embeddings, re-normalised. (num_classes, D). `emb`: an
    (N, D) array, or its batches in order (`embed_batches`), so the N x D array need never exist."""
    centres, start = None, 0
    for e in [emb] if isinstance(emb, np.ndarray) else emb:
        if centres is None:
            centres = np.zeros((num_classes, e.shape[1]), np.float64)
        np.add.at(centres, labels[start : start + len(e)], e)
        start += len(e)
    norms = np.linalg.norm(centres, axis=1, keepdims=True)
    return (centres / np.where(norms > 0, norms, 1)).astype(np.float32)
