"""Ray Data: a benchmark's faces (IJB-C's 469k, TinyFace's 160k) embedded by an actor pool that holds the
recognizer once per actor (a GPU each when the run uses GPUs). Rows are face indices; an actor reads, aligns
and embeds a batch of them and returns (index, embedding), which the driver writes into a memory-mapped array
on disk: memory is bounded by a batch on both sides, whatever the benchmark's size. The finished array is the
cache of that (recognizer, benchmark), read again instead of recomputed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from scoremix_ray.config import Config
from scoremix_ray.core.recognition.train import Recognizer, embed_images
from scoremix_ray.foundations.checkpoints import read_meta
from scoremix_ray.foundations.devices import local_device
from scoremix_ray.foundations.files import locked
from scoremix_ray.foundations.progress import Progress
from scoremix_ray.runtime.actor_pools import map_on_actors, with_new_pools
from scoremix_ray.runtime.context import resolved

log = logging.getLogger("scoremix_ray")


class FaceEmbedder:
    """Ray Data callable class: {"id": face indices} -> {"id", "emb"}; `reader` gives the faces' uint8 images
    (`ijb.AlignedCrops`, `tinyface.ResizedFiles`)."""

    def __init__(self, model_dir: str, reader, flip: bool, normalize: bool, gpu: bool, threads: int | None = None):
        import torch

        self.device = local_device(gpu)
        if self.device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        self.net = Recognizer.load(model_dir, self.device)
        self.reader, self.flip, self.normalize = reader, flip, normalize
        self.size, self.channels = self.net.meta["image_size"], self.net.meta["channels"]

    def __call__(self, batch: dict) -> dict:
        rows = np.asarray(batch["id"])
        images = self.reader.images(rows, self.size, self.channels)
        return {"id": rows, "emb": embed_images(self.net, images, self.device, self.flip, self.normalize)}


def embeddings(ctx, cfg: Config, model_dir: Path, reader, cache: Path, flip: bool, normalize: bool) -> np.ndarray:
    """(N, D) embeddings of the reader's faces by the recognizer in `model_dir`, memory-mapped from
    `cache/embeddings.npy`: computed once (Ray Data actors, or in this process for one CPU actor), then read."""
    path = cache / "embeddings.npy"
    with locked(cache / ".lock"):  # two trials evaluating one recognizer compute it once; the second reads it
        if path.is_file():
            log.info("embeddings: reusing %s", path)
        else:
            _compute(ctx, cfg, model_dir, reader, cache, flip, normalize, path)
    return np.load(path, mmap_mode="r")


def _compute(ctx, cfg: Config, model_dir: Path, reader, cache: Path, flip: bool, normalize: bool, path: Path) -> None:
    e, gpu = cfg.evaluation, bool(resolved(cfg).ray.use_gpu)
    dim = read_meta(Path(model_dir) / "recognizer.json")["config"]["embedding_dim"]  # not the weights: 170 MB at r50
    tmp = cache / "embeddings.partial.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(reader), dim))
    progress = Progress(f"embed {cache.name}", len(reader), "faces")
    args = (str(model_dir), reader, flip, normalize)
    if ctx.in_process(e.num_actors, gpu):
        threads = torch.get_num_threads()
        try:
            embedder = FaceEmbedder(*args, False)
            for lo in range(0, len(reader), e.batch_size):
                b = embedder({"id": np.arange(lo, min(lo + e.batch_size, len(reader)))})
                out[b["id"]] = b["emb"]
                progress.tick(lo + len(b["id"]))
        finally:
            torch.set_num_threads(threads)
    else:
        ctx.ray()
        _on_actors(cfg, args, gpu, out, progress, f"embed {cache.name}")
    out.flush()
    del out
    os.replace(tmp, path)  # complete or absent


def _on_actors(cfg: Config, args: tuple, gpu: bool, out: np.ndarray, progress: Progress, what: str) -> None:
    """Every face's row of `out` by a pool of `FaceEmbedder` actors, without Ray's actor restarts
    (`actor_pools`): a pass that loses an actor is run again whole, rows being written by face index (a face
    embedded twice writes the same row)."""
    import ray
    from ray.data import ActorPoolStrategy

    e, n = cfg.evaluation, len(out)
    threads = max(1, int(e.actor_cpus)) if not gpu else None
    blocks = max(1, min(n // e.batch_size, 4 * e.num_actors))
    done = 0

    def one_pass():
        nonlocal done
        done = 0
        ds = map_on_actors(
            ray.data.range(n, override_num_blocks=blocks),
            FaceEmbedder,
            fn_constructor_args=(*args, gpu, threads),
            batch_size=e.batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=e.num_actors),
            num_cpus=e.actor_cpus,
            num_gpus=1 if gpu else None,
        )
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            out[b["id"]] = b["emb"]
            done += len(b["id"])
            progress.tick(done)

    with_new_pools(what, cfg.ray.max_failures, one_pass, lambda: f"{n - done} of {n} face(s) not embedded")
