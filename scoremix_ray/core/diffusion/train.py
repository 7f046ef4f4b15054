"""Generator training loop, free of Ray: `scoremix_ray.runtime.train` runs it on Ray Train workers,
the benchmark and tests run it in a plain process.

Every random draw of step s comes from a generator seeded by (seed, rank, s), so a run resumed from a
checkpoint continues exactly where the interrupted one was, not merely "from similar weights".
Checkpoints (`<dir>/checkpoints/step_XXXXXXX/state.pt`) hold model, EMA, optimizer and the config.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from scoremix_ray.config import GeneratorConfig
from scoremix_ray.core.data.batches import schedule
from scoremix_ray.core.data.images import to_model_tensor
from scoremix_ray.core.diffusion.edm import EDMDenoiser, build_denoiser, edm_loss
from scoremix_ray.foundations.checkpoints import (
    KEEP,
    Monitor,
    Report,
    log_progress,
    resume,
    resume_history,
    save_checkpoint,
)
from scoremix_ray.foundations.errors import ScoreMixError
from scoremix_ray.foundations.progress import Progress

log = logging.getLogger("scoremix_ray")


def learning_rate(cfg: GeneratorConfig, step: int) -> float:
    """The rate of optimizer step `step` (0-based): linear warm-up over `warmup_steps`, then constant or, with
    `lr_decay_steps` = t_ref, EDM2's inverse-square-root decay lr / sqrt(max(t / t_ref, 1)) (Karras et al. 2024,
    eq. 9: a long run keeps learning without a schedule tied to its length)."""
    t = step + 1
    lr = cfg.lr * min(1.0, t / max(1, cfg.warmup_steps))
    if cfg.lr_decay_steps is not None:
        lr /= float(np.sqrt(max(t / cfg.lr_decay_steps, 1.0)))
    return lr


@functools.cache  # one root-finding per setting, not one per training step
def power_ema_exponent(std: float) -> float:
    """gamma of the power-function EMA profile with relative standard deviation `std` (EDM2 eq. 126): the
    largest real root of gamma^3 + 7 gamma^2 + (16 - std^-2) gamma + (12 - std^-2) = 0."""
    inv = std**-2
    return float(np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv]).real.max())


def ema_beta(cfg: GeneratorConfig, step: int) -> float:
    """Decay of the EMA update after optimizer step `step` (0-based).
    Power-function EMA (`ema_std`, EDM2 eq. 127): beta_t = (1 - 1/t)^(gamma + 1) after t steps, so the average
    weights step s in proportion to s^gamma: its length is a fixed share of training however long that is.
    Otherwise the fixed `ema_decay`, warmed up as (1 + step) / (10 + step) so a short run's average is not
    dominated by the random initialisation."""
    if cfg.ema_std is not None:
        return (1.0 - 1.0 / (step + 1)) ** (power_ema_exponent(cfg.ema_std) + 1.0)
    return min(cfg.ema_decay, (1 + step) / (10 + step))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), net.parameters()):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), net.buffers()):
        e.copy_(b)


def train_generator(
    feed,
    num_classes: int,
    cfg: GeneratorConfig,
    seed: int,
    out_dir: str | Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    prepare: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    report: Report | None = None,
    device: str = "cpu",
    monitor: Monitor | None = None,
    keep: int = KEEP,
) -> Path:
    """Train (or resume) the EDM generator on a feed of uint8 images (`data.batches`: InMemory or Streamed);
    returns the final model folder.

    Rank 0 writes checkpoints and the curve (`history.jsonl`; loss, learning rate, images/s every
    `log_every` steps, also handed to `monitor`); `prepare` wraps the network for data parallelism (DDP under
    Ray Train).
    Each rank draws batch_size // world_size images per step.
    """
    out_dir = Path(out_dir)
    ckpt_root = out_dir / "checkpoints"
    sched = schedule("generator", cfg, len(feed), seed, rank, world_size)
    torch.manual_seed(seed)  # model initialisation: identical on every rank
    net = build_denoiser(cfg, num_classes, feed.image_shape[0], feed.image_shape[2]).to(device)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    guide_step = cfg.guide_checkpoint_step or max(1, cfg.steps // 4)
    ckpt, state = resume(ckpt_root, device, net=net, ema=ema, opt=opt)
    step = state.get("step", 0)
    if ckpt is not None:
        log.info("generator: resumed from %s (step %d of %d)", ckpt, step, cfg.steps)
    if rank == 0:
        resume_history(out_dir, step, monitor)
    model = prepare(net)
    per_rank = sched.per_rank
    batches = feed.batches(sched, step)
    t0, seen, losses = time.time(), 0, []
    progress = Progress("generator", cfg.steps, "steps").begin_at(step)  # between `log_every` lines, however slow
    while step < cfg.steps:
        _, gen = sched.draw(step)  # the step's stream after its rows were drawn: the loss's noise comes next
        images, labels = next(batches)
        y, c = to_model_tensor(images, device), labels.to(device)
        if net.null_label is not None:  # label dropout trains the unconditional model for CFG
            drop = torch.rand(per_rank, generator=gen) < cfg.label_dropout
            c = torch.where(drop.to(device), torch.full_like(c, net.null_label), c)
        for g in opt.param_groups:
            g["lr"] = learning_rate(cfg, step)
        loss = edm_loss(model, y, c, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _ema_update(ema, net, ema_beta(cfg, step))
        step += 1
        seen += per_rank * world_size
        losses.append(loss.item())
        if rank == 0:
            progress.tick(step)
        ckpt_dir = None
        if rank == 0 and step == guide_step:
            ema.save(out_dir / "guide")  # the weaker, earlier model for autoguidance
        if (step % cfg.checkpoint_every == 0 or step == cfg.steps) and rank == 0:
            ckpt_dir = save_checkpoint(
                ckpt_root,
                step,
                {
                    "net": net.state_dict(),
                    "ema": ema.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step,
                    "config": cfg.model_dump(mode="json"),
                },
                keep=keep,
            )
        if step % cfg.log_every == 0 or ckpt_dir is not None or step == cfg.steps:
            dt = time.time() - t0
            metrics = {
                "step": step,
                "loss": float(np.mean(losses)),
                "lr": opt.param_groups[0]["lr"],
                "steps_per_s": len(losses) / dt,
                "images_per_s": seen / dt,
            }
            if rank == 0:  # every log point is in history.jsonl and the run's curve; the console gets one in 15 s
                progress.say(
                    "generator: step %d/%d loss %.4f  %.2f steps/s  %.0f img/s",
                    step,
                    cfg.steps,
                    metrics["loss"],
                    metrics["steps_per_s"],
                    metrics["images_per_s"],
                    last=step == cfg.steps,
                )
                log_progress(out_dir, metrics, step, monitor)
            if report is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                report(metrics, ckpt_dir)  # with checkpoints only: a Ray Train report costs ~1 s on 2 cores
            t0, seen, losses = time.time(), 0, []
    final = out_dir / "final"
    if rank == 0:
        if not (out_dir / "guide").exists():  # resumed past guide_step in an older layout, or steps < guide
            ema.save(out_dir / "guide")
        ema.save(final)
    return final


def load_generator(stage_dir: str | Path, which: str = "final", device: str = "cpu") -> EDMDenoiser:
    return EDMDenoiser.load(Path(stage_dir) / which, device)


def guide_path(stage_dir: str | Path, guide_dir: str | Path | None = None) -> Path:
    """Autoguidance's guide: the guide network's stage (`guide_dir`, `generator.guide.kind: network`) or the
    generator's own EMA snapshot (`<stage>/guide`)."""
    return Path(guide_dir) / "final" if guide_dir else Path(stage_dir) / "guide"


def check_guidance(scfg, stage_dir: str | Path, guide_dir: str | Path | None = None) -> None:
    """Before any generation: the generator in `stage_dir` has what `sampler.guidance` needs (a guide checkpoint
    or network for autoguidance, a null label for cfg). Reads only the small metadata files."""
    import json

    d = Path(stage_dir)
    guide = guide_path(d, guide_dir)
    if scfg.guidance == "autoguidance" and not (guide / "edm.json").is_file():
        what = "network" if guide_dir else "checkpoint"
        raise ScoreMixError(f"sampler.guidance=autoguidance needs the generator's guide {what}, missing: {guide}")
    if scfg.guidance == "cfg":
        meta = d / "final" / "edm.json"
        if meta.is_file() and json.loads(meta.read_text())["null_label"] is None:
            raise ScoreMixError(
                f"sampler.guidance=cfg needs a generator trained with generator.label_dropout > 0; "
                f"the one in {d} has no null label"
            )


def load_for_sampling(
    stage_dir: str | Path, scfg, device: str = "cpu", guide_dir: str | Path | None = None
) -> tuple[EDMDenoiser, EDMDenoiser | None]:
    """(generator, guide): the guide (`guide_path`) is loaded only when `sampler.guidance` is autoguidance, once
    per caller (`check_guidance` has passed: the generator stage runs it before it hands its folder on)."""
    guide = EDMDenoiser.load(guide_path(stage_dir, guide_dir), device) if scfg.guidance == "autoguidance" else None
    return load_generator(stage_dir, "final", device), guide
