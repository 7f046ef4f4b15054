"""Which rows each training step reads (`Schedule`), and the two feeds that turn them into batches.

The schedule is fixed by the seed, never by how the data are read: the generator draws each rank's rows with
replacement from the random stream of (seed, rank, step); the recognizer gives rank r its slice of one
permutation per epoch, seeded by (seed, epoch) and shared by every rank. `InMemory` indexes a cached array;
`Streamed` (fed by Ray Data, see distributed/train.py) checks that each batch holds the rows the schedule
names. So the same config and worker count give the same batches in the same order either way, and a run
resumed from a checkpoint continues the schedule exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from scoremix_ray.foundations.checkpoints import latest_checkpoint, step_generator


@dataclass(frozen=True)
class Schedule:
    kind: str  # "draw" (generator: with replacement, per step) or "epochs" (recognizer: permutation per epoch)
    n: int  # rows in the training set
    seed: int
    rank: int
    world: int
    per_rank: int  # rows per step on this rank
    length: int  # of the whole run: steps ("draw") or epochs ("epochs")

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.n // (self.per_rank * self.world))  # the ragged last batch is dropped

    @property
    def total(self) -> int:
        """Steps of the whole run."""
        return self.length if self.kind == "draw" else self.length * self.steps_per_epoch

    def draw(self, step: int) -> tuple[torch.Tensor, torch.Generator]:
        """(rows, the step's random stream after drawing them): the generator draws its noise from the rest."""
        if self.kind == "draw":
            gen = step_generator(self.seed, self.rank, step)
            return torch.randint(self.n, (self.per_rank,), generator=gen), gen
        epoch, i = divmod(step, self.steps_per_epoch)
        lo = (i * self.world + self.rank) * self.per_rank
        return self._order(epoch)[lo : lo + self.per_rank], None

    def rows(self, step: int) -> np.ndarray:
        return self.draw(step)[0].numpy()

    @lru_cache(maxsize=2)  # noqa: B019 -- two epochs' orders per feed, freed with it
    def _order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=step_generator(self.seed, 0, epoch))  # rank 0's stream: shared


def schedule(kind: str, cfg, n: int, seed: int, rank: int = 0, world: int = 1) -> Schedule:
    """The schedule of a "generator" or "recognizer" run with config section `cfg` over `n` rows."""
    per_rank = max(1, cfg.batch_size // world)
    if kind == "generator":
        return Schedule("draw", n, seed, rank, world, per_rank, cfg.steps)
    return Schedule("epochs", n, seed, rank, world, per_rank, cfg.epochs)


def resume_step(sched: Schedule, out_dir: str | Path) -> int:
    """The step a run in `out_dir` resumes at, from its newest checkpoint's name (step_N: a step for the
    generator, an epoch for the recognizer)."""
    ckpt = latest_checkpoint(Path(out_dir) / "checkpoints")
    if ckpt is None:
        return 0
    k = int(ckpt.name.split("_")[1])
    return k if sched.kind == "draw" else k * sched.steps_per_epoch


class InMemory:
    """The training set held whole (uint8, within `ray.cache_mb`): batches by indexing."""

    def __init__(self, images, labels: np.ndarray):
        self.images = np.asarray(images)  # an ImageStore reads itself whole here, once
        self.labels = torch.from_numpy(np.asarray(labels, np.int64))
        self.image_shape = self.images.shape[1:]

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, sched: Schedule, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(start, sched.total):
            rows = sched.draw(step)[0]
            yield torch.from_numpy(self.images[rows.numpy()]), self.labels[rows]


class Streamed:
    """Batches from an iterator of {"row", "image", "label"} dicts (Ray Data's `iter_torch_batches` over the
    dataset `distributed/train.py` builds from the same schedule), checked against the schedule."""

    def __init__(self, batches, n: int, image_shape: tuple[int, int, int]):
        self._batches, self.n, self.image_shape = batches, n, tuple(image_shape)

    def __len__(self) -> int:
        return self.n

    def batches(self, sched: Schedule, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step, b in zip(range(start, sched.total), self._batches):
            if not np.array_equal(b["row"].cpu().numpy(), sched.rows(step)):
                raise RuntimeError(
                    f"streamed batch of step {step} holds other rows than the schedule names "
                    "(the dataset must be read in order: preserve_order)"
                )
            yield b["image"], b["label"]


def read_rows(store, labels: np.ndarray, sched: Schedule, steps: range) -> dict:
    """The rows of `steps` read from `store` (an ImageStore or ConcatStore): one block of the stream."""
    rows = np.concatenate([sched.rows(s) for s in steps]) if len(steps) else np.zeros(0, np.int64)
    return {"row": rows, "image": store.take(rows), "label": labels[rows]}
