"""What a lost Train worker costs: the generator trained twice through Ray Train's TorchTrainer on a local Ray,
once uninterrupted and once with its worker SIGKILLed right after a checkpoint is written. The difference in wall
time is the failure's cost (detection + a new worker group + the replay of the steps since that checkpoint),
given in seconds and as a ratio to one uninterrupted step. The kill lands `--kill-after` steps past a
checkpoint, so the replay is that many steps. Target: a failure costs less than the steps between two
checkpoints plus a fixed restart of seconds, not a rerun from step 0. Measured on the 2-core dev box (16 px
digits, a 2-thread worker, 33 ms a step): a kill 100 steps past the step-200 checkpoint cost 7.9 s = 237 steps,
3.3 s of it the replay and 4.6 s detection and a new worker group. Ends with one JSON line.

    python benchmarks/faults.py [--steps 600 --checkpoint-every 200 --kill-after 100]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path


def train_worker() -> int:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    (pid,) = [int(line.split()[0]) for line in out.splitlines() if "ray::RayTrainWorker" in line]
    return pid


def step_of_history(d: Path) -> int:
    from scoremix_ray.foundations.checkpoints import read_history

    rows = read_history(d)
    return rows[-1]["step"] if rows else 0


def main() -> None:
    import ray

    from scoremix_ray.config import load_config
    from scoremix_ray.pipeline import data_stage
    from scoremix_ray.runtime.context import RunContext
    from scoremix_ray.runtime.train import fit

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--kill-after", type=int, default=100, help="steps past the first checkpoint")
    a = p.parse_args()
    from scoremix_ray.runtime.context import RUNTIME_ENV

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, runtime_env=RUNTIME_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        sets = [
            f"out_dir={tmp}",
            "data.image_size=16",
            "generator.block_out_channels=16,32",
            f"generator.steps={a.steps}",
            "generator.batch_size=32",
            f"generator.checkpoint_every={a.checkpoint_every}",
            "generator.log_every=10",
            "ray.cpus_per_worker=2",
            "ray.use_gpu=false",
        ]
        ctx = RunContext(gpus=0, executor="ray")
        cfg = ctx.devices(load_config(None, sets))
        _, data_dir = data_stage(cfg)
        t0 = time.perf_counter()
        fit(ctx, cfg, "generator", data_dir / "split.npz", Path(tmp) / "plain")
        plain = time.perf_counter() - t0
        from scoremix_ray.foundations.checkpoints import read_history

        rates = [r["images_per_s"] for r in read_history(Path(tmp) / "plain")[1:]]  # steady state, not the start
        step_s = cfg.generator.batch_size / (sum(rates) / len(rates))
        d = Path(tmp) / "killed"
        job = threading.Thread(target=fit, args=(ctx, cfg, "generator", data_dir / "split.npz", d))
        t0 = time.perf_counter()
        job.start()
        target = a.checkpoint_every + a.kill_after
        while step_of_history(d) < target and job.is_alive():
            time.sleep(0.02)
        killed_step = step_of_history(d)
        os.kill(train_worker(), signal.SIGKILL)
        t_kill = time.perf_counter()
        while step_of_history(d) >= killed_step and job.is_alive():  # the restarted group cut the history back
            time.sleep(0.02)
        while step_of_history(d) < killed_step + 10 and job.is_alive():  # ... and replayed past the kill
            time.sleep(0.02)
        back = time.perf_counter() - t_kill
        job.join()
        killed = time.perf_counter() - t0
    ray.shutdown()
    cost = killed - plain
    figures = {
        "steps": a.steps,
        "checkpoint_every": a.checkpoint_every,
        "killed_at_step": killed_step,
        "replayed_steps": killed_step - a.checkpoint_every,
        "uninterrupted_s": round(plain, 1),
        "with_failure_s": round(killed, 1),
        "failure_cost_s": round(cost, 1),
        "step_s": round(step_s, 4),
        "failure_cost_in_steps": round(cost / step_s, 1),
        "restart_s": round(cost - (killed_step - a.checkpoint_every) * step_s, 1),  # detection + new worker group
        "kill_to_past_it_again_s": round(back, 1),
        "rerun_from_zero_would_cost_steps": killed_step,
    }
    print(
        f"a worker killed at step {killed_step} (checkpoint at {a.checkpoint_every}) cost {cost:.1f} s = "
        f"{cost / step_s:.0f} uninterrupted steps of {step_s * 1000:.0f} ms, of which "
        f"{killed_step - a.checkpoint_every} replayed; a rerun from step 0 by hand would have replayed {killed_step}"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
