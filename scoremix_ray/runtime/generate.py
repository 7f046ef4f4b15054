"""Ray Data: the plan's work units streamed through an actor pool that holds the generator once per actor.

Rows of the Dataset are work units (unit id, row range of the plan): one unit is one network batch and one
shard file (see `scoremix_ray.core.generation` for why the unit, not Ray's batching, fixes batch composition).
Actors write their shards as they finish, so memory does not grow with the number of tuples; the driver
sees only one small metadata row per unit.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from scoremix_ray.config import Config
from scoremix_ray.core.diffusion.train import load_for_sampling, load_generator
from scoremix_ray.core.generation import missing_units, render_unit, write_manifest, write_plan
from scoremix_ray.core.methods import RenderContext, get_method
from scoremix_ray.foundations.devices import local_device
from scoremix_ray.foundations.progress import Progress
from scoremix_ray.runtime.actor_pools import map_on_actors, with_new_pools
from scoremix_ray.runtime.context import RunContext, resolved

log = logging.getLogger("scoremix_ray")


class UnitRenderer:
    """Ray Data callable class: loads once per actor the config, the plan, and what the method declares it
    needs (`Method.needs`): mixup on a CPU actor loads no network, DiffCoRe-Mix also the baseline recognizer."""

    def __init__(self, conf: dict):
        import pyarrow.parquet as pq
        import torch

        cfg = Config.model_validate(conf["config"])  # devices already resolved by the driver
        g = cfg.generation
        self.method = get_method(conf["method"])
        device = local_device(g.actor_gpus > 0)  # Ray set CUDA_VISIBLE_DEVICES to this actor's (share of a) GPU
        if device.type == "cpu":
            torch.set_num_threads(g.threads_per_actor or max(1, (os.cpu_count() or 1) // g.num_actors))
        net = guide = None
        if "guide" in self.method.needs:  # the generator and, under autoguidance, its guide
            # the guide network's stage, when the run has one (a conf without the key: none)
            net, guide = load_for_sampling(conf["generator_dir"], cfg.sampler, device, conf.get("guide_dir"))
        elif "generator" in self.method.needs:
            net = load_generator(conf["generator_dir"], device=device)
        needs = self.method.needs
        split = Path(conf["split_path"]) if "real_images" in needs else None
        rec = Path(conf["recognizer_dir"]) if "recognizer" in needs and conf["recognizer_dir"] else None
        self.ctx = RenderContext(cfg, net, guide, split, rec)
        self.plan = pq.read_table(Path(conf["out_dir"]) / "plan.parquet")
        self.out_dir = Path(conf["out_dir"])

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"unit": [], "rows": [], "seconds": [], "device": []}
        for u, lo, hi in zip(batch["unit"], batch["start"], batch["stop"]):
            r = render_unit(self.ctx, self.method, self.plan, int(u), int(lo), int(hi), self.out_dir)
            for k in ("unit", "rows", "seconds"):
                out[k].append(r[k])
            out["device"].append(str(self.ctx.device))
        return out


def _pool(todo: list[tuple[int, int, int]], conf: dict, g):
    """The units `todo` through a pool of `UnitRenderer` actors, without Ray's actor restarts (`actor_pools`)."""
    import ray
    from ray.data import ActorPoolStrategy

    ds = ray.data.from_items(
        [{"unit": u, "start": lo, "stop": hi} for u, lo, hi in todo], override_num_blocks=len(todo)
    )
    ds = map_on_actors(
        ds,
        UnitRenderer,
        fn_constructor_kwargs={"conf": conf},
        batch_size=1,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=min(g.num_actors, len(todo))),
        num_cpus=g.actor_cpus,
        num_gpus=g.actor_gpus or None,  # a fraction packs several actors on one GPU
    )
    log.info(
        "generate: %d unit(s) on %d actor(s) x (%g CPU, %g GPU)",
        len(todo),
        min(g.num_actors, len(todo)),
        g.actor_cpus,
        g.actor_gpus,
    )
    return ds


def generate_shards(
    ctx: RunContext,
    cfg: Config,
    method: str,
    plan,
    generator_dir: Path,
    split_path: Path,
    out_dir: Path,
    recognizer_dir: Path | None = None,
    guide_dir: Path | None = None,
) -> dict:
    """Render every missing unit of `plan` into `out_dir/shards` with a Ray Data actor pool, or in this process
    where the context's executor says so; returns the manifest (plus images/s of this call)."""
    g = resolved(cfg).generation
    out_dir = Path(out_dir).resolve()
    write_plan(out_dir, plan)
    todo = missing_units(out_dir, len(plan), g.unit_size)
    done_before = len(plan) - sum(hi - lo for _, lo, hi in todo)
    if done_before:
        log.info(
            "generate: %d of %d images already written, rendering the other %d",
            done_before,
            len(plan),
            len(plan) - done_before,
        )
    t0, rendered, used, first = time.time(), 0, set(), (0.0, 0)
    if todo:
        conf = {
            "config": cfg.model_dump(mode="json"),
            "method": method,
            "generator_dir": str(Path(generator_dir).resolve()),
            "split_path": str(Path(split_path).resolve()),
            "out_dir": str(out_dir),
            "recognizer_dir": str(Path(recognizer_dir).resolve()) if recognizer_dir else None,
            "guide_dir": str(Path(guide_dir).resolve()) if guide_dir else None,
        }
    if todo and ctx.in_process(g.num_actors, g.actor_gpus):  # its one actor's work, here
        import torch

        threads = torch.get_num_threads()
        try:
            renderer = UnitRenderer(conf)  # the actor's set-up: the same threads, so the same bytes
            log.info("generate: %d unit(s) in this process", len(todo))
            for u, lo, hi in todo:
                row = renderer({"unit": [u], "start": [lo], "stop": [hi]})
                if not rendered:
                    first = (time.time(), int(row["rows"][0]))
                rendered += int(row["rows"][0])
                used.add(row["device"][0])
        finally:
            torch.set_num_threads(threads)
    elif todo:
        ctx.ray()
        progress = Progress("generate", len(plan)).begin_at(done_before)

        pending = todo

        def one_pass():
            nonlocal rendered, first
            if not pending:  # the actor lost had finished its units: nothing to render again
                return
            for row in _pool(pending, conf, g).iter_rows():  # streaming: shards are on disk as units finish
                if not rendered:
                    first = (time.time(), int(row["rows"]))  # actors are warm from here on
                rendered += int(row["rows"])
                used.add(str(row["device"]))
                progress.tick(done_before + rendered)

        def left() -> str:
            # called after each lost pass (`with_new_pools`): units are written whole or not at all, so what is
            # missing now is exactly what the next pass renders
            nonlocal pending
            pending = missing_units(out_dir, len(plan), g.unit_size)
            return f"{len(pending)} unit(s) still missing"

        with_new_pools("generate", cfg.ray.max_failures, one_pass, left)
    dt = time.time() - t0
    # once warm: the units after the first, over the time since the first came back (actor start excluded)
    steady = (rendered - first[1]) / (time.time() - first[0]) if rendered > first[1] else 0.0
    manifest = write_manifest(out_dir, len(plan), g.unit_size, {"method": method})
    rate = rendered / dt if rendered else 0.0
    log.info(
        "generate: %d images rendered in %.1f s (%.1f images/s) on %s, %d in total -> %s",
        rendered,
        dt,
        rate,
        ",".join(sorted(used)) or "-",
        manifest["rows_written"],
        out_dir,
    )
    if manifest["stats"]:
        log.info("generate: %s", ", ".join(f"{k} {v}" for k, v in manifest["stats"].items()))
    return {
        **manifest,
        "rendered": rendered,
        "seconds": dt,
        "images_per_s": rate,
        "steady_images_per_s": steady,
        "devices": sorted(used),
    }
