"""The user's whole path on an on-prem cluster, on this one machine: sshd on loopback, `ray up -y` of
cluster-onprem.yaml (head at 127.0.0.1, a worker at 127.0.0.2, both over SSH), `ray job submit` of the
documented commands on configs/tiny.yaml under token auth (preflight, a run, a sweep), `ray job status/logs`, the
runs in the head's MLflow server, `ray down -y`. Its own step of `.ci/run`, after the test suite:

    python tests/cluster_path.py

It runs `ray stop` (the head's start commands do), which ends every Ray on the machine: never beside other Ray
work. A missing prerequisite fails it (exit 1, one line saying what to install), it does not skip. Prints each
step with its time, then one JSON line of them.

How the tested config differs from the shipped one (everything else is cluster-onprem.yaml as shipped):
- addresses, SSH user and key: 127.0.0.1 / 127.0.0.2, this user, a key made here (sshd runs with its own config,
  host key and authorized keys in a temporary folder, listening on those two addresses only);
- the project's Python: this checkout's venv, already installed (setup checks it imports; it installs nothing;
  its line in ~/.bashrc is added as shipped and taken out again at the end);
- the shared folder and the MLflow server's port: a temporary folder and a free port;
- the worker's start: no `ray stop` (on one machine it would stop the head) and its own node address and ports.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
BIN = VENV / "bin"
HEAD, WORKER = "127.0.0.1", "127.0.0.2"
DASHBOARD = "http://127.0.0.1:8265"
steps: dict[str, float] = {}


class PathFailed(Exception):
    pass


def step(name: str, cmd: list[str] | str, env: dict | None = None, timeout: float = 600, check: bool = True):
    """Run one step of the path, timed; its output when it fails."""
    t0 = time.monotonic()
    r = subprocess.run(
        cmd,
        shell=isinstance(cmd, str),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    steps[name] = round(time.monotonic() - t0, 1)
    print(f"{name}: {steps[name]} s (exit {r.returncode})", flush=True)
    if check and r.returncode != 0:
        raise PathFailed(f"{name} failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prerequisites() -> None:
    missing = [
        p
        for p in ("/usr/sbin/sshd", shutil.which("ssh") or "ssh", shutil.which("rsync") or "rsync")
        if not Path(p).exists()
    ]
    if missing:
        raise PathFailed(f"missing {', '.join(missing)}: apt-get install openssh-server openssh-client rsync")
    for host in (HEAD, WORKER):
        with socket.socket() as s:
            if s.connect_ex((host, 22)) == 0:
                raise PathFailed(f"something already listens on {host}:22; this check runs its own sshd there")
    with socket.socket() as s:
        if s.connect_ex((HEAD, 6379)) == 0:
            raise PathFailed("a Ray already runs on this machine (port 6379): the path's `ray stop` would end it")


def start_sshd(tmp: Path) -> subprocess.Popen:
    """sshd with its own config, host key and authorized keys, on the two loopback addresses only."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "host_key")], check=True)
    shutil.copy(tmp / "key.pub", tmp / "authorized_keys")
    (tmp / "sshd_config").write_text(
        f"Port 22\nListenAddress {HEAD}\nListenAddress {WORKER}\nHostKey {tmp / 'host_key'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nPidFile {tmp / 'sshd.pid'}\n"
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation folder
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(tmp / "sshd_config"), "-E", str(tmp / "sshd.log")])
    for host in (HEAD, WORKER):
        step(
            f"ssh {host}",
            [
                "ssh",
                "-i",
                str(tmp / "key"),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "ConnectionAttempts=5",
                f"{getpass.getuser()}@{host}",
                "true",
            ],
        )
    return proc


def tested_config(tmp: Path, mlflow_port: int) -> Path:
    """cluster-onprem.yaml with this machine's addresses, key, Python and folders (the module docstring lists
    each difference)."""
    cfg = yaml.safe_load((ROOT / "cluster-onprem.yaml").read_text())
    cfg["provider"].update(head_ip=HEAD, worker_ips=[WORKER])
    cfg["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(tmp / "key")}
    shipped_venv = "~/scoremix-venv"

    def here(cmd: str) -> str:
        return cmd.replace("$HOME/scoremix-venv", str(VENV)).replace(shipped_venv, str(VENV))

    # installed: reuse it; on the login PATH as the shipped config puts its venv (`ray down` runs a bare `ray stop`)
    cfg["setup_commands"] = [f"{BIN / 'python'} -c 'import scoremix_ray, torch, ray'"] + [
        here(c) for c in cfg["setup_commands"] if "bashrc" in c
    ]
    shared = tmp / "shared"
    cfg["head_setup_commands"] = [
        here(c)
        .replace("/shared/scoremix", str(shared))
        .replace("--port 5000", f"--port {mlflow_port}")
        .replace(":5000/", f":{mlflow_port}/")
        for c in cfg["head_setup_commands"]
    ]
    cfg["head_start_ray_commands"] = [
        here(c).replace("ray start --head", "ray start --head --num-cpus=2") for c in cfg["head_start_ray_commands"]
    ]
    ports = " ".join(
        f"--{k}={free_port()}"
        for k in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
        )
    )
    cfg["worker_start_ray_commands"] = [
        here(c).replace("ray start --address", f"ray start --node-ip-address={WORKER} --num-cpus=1 {ports} --address")
        for c in cfg["worker_start_ray_commands"]
        if not c.endswith("ray stop")
    ]
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def wait_for_nodes(n: int, env: dict, seconds: float = 300) -> None:
    """Until `n` nodes are alive (the autoscaler on the head starts the worker over SSH after `ray up`)."""
    t0, count = time.monotonic(), "import ray; ray.init(); print('ALIVE', sum(x['Alive'] for x in ray.nodes()))"
    r = None
    while time.monotonic() - t0 < seconds:
        r = subprocess.run(
            [str(BIN / "python"), "-c", count],
            env={**os.environ, **env, "RAY_ADDRESS": f"{HEAD}:6379"},
            capture_output=True,
            text=True,
        )
        alive = [int(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("ALIVE ")]
        if alive and alive[0] >= n:
            steps["nodes up"] = round(time.monotonic() - t0, 1)
            print(f"nodes up: {steps['nodes up']} s ({n})", flush=True)
            return
        time.sleep(3)
    raise PathFailed(f"{n} nodes were not up within {seconds} s:\n{(r.stdout + r.stderr)[-2000:] if r else ''}")


def submit(name: str, args: list[str], env: dict) -> str:
    """`ray job submit` of `scoremix-ray <args>` as the README writes it; then `ray job status` and `ray job logs`
    of it. Returns the job's log."""
    sid = f"{name}-{int(time.time())}"
    step(
        f"submit {name}",
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            DASHBOARD,
            "--submission-id",
            sid,
            "--working-dir",
            str(ROOT),
            "--",
            "scoremix-ray",
            *args,
        ],
        env=env,
        timeout=900,
    )
    status = step(f"status {name}", [str(BIN / "ray"), "job", "status", "--address", DASHBOARD, sid], env=env)
    if "succeeded" not in status.stdout + status.stderr:  # "Job ... succeeded"
        raise PathFailed(f"job {sid} is not SUCCEEDED: {status.stdout[-500:]}")
    return step(f"logs {name}", [str(BIN / "ray"), "job", "logs", "--address", DASHBOARD, sid], env=env).stdout


def main() -> dict:
    prerequisites()
    tmp = Path(tempfile.mkdtemp(prefix="cp-", dir="/tmp"))  # short: Ray's socket paths must stay short
    mlflow_port = free_port()
    uri = f"http://127.0.0.1:{mlflow_port}"
    env = {"RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    bashrc = Path.home() / ".bashrc"
    before = bashrc.read_text() if bashrc.is_file() else None
    sshd = start_sshd(tmp)
    config = tested_config(tmp, mlflow_port)
    out = tmp / "shared" / "runs"
    report: dict = {"steps": steps}
    try:
        step("token", [str(BIN / "ray"), "get-auth-token", "--generate"], env={"RAY_AUTH_MODE": "token"})
        step("ray up", [str(BIN / "ray"), "up", "-y", str(config), "--no-config-cache"], env=env, timeout=900)
        wait_for_nodes(2, env)
        t0 = time.monotonic()  # the head's MLflow server, started in the background by its set-up
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() - t0 > 180:
                    raise PathFailed(f"the head's MLflow server does not answer at {uri}") from None
                time.sleep(1)
        steps["mlflow up"] = round(time.monotonic() - t0, 1)
        common = ["--config", "configs/tiny.yaml", "--out", str(out), "--tracking-uri", uri]
        log = submit("preflight", ["preflight", *common], env)
        if "every node is ready" not in log:
            raise PathFailed(f"preflight did not pass:\n{log[-2000:]}")
        log = submit("run", ["run", *common], env)
        report["run_log_lines"] = len(log.splitlines())
        report["run_log_errors"] = [line for line in log.splitlines() if " ERROR " in line or "WARNING" in line]
        log = submit("sweep", ["sweep", "--strategies", "random,embedding-distant", "--name", "cluster", *common], env)
        if "2 trials, 0 failed" not in log:
            raise PathFailed(f"the sweep did not finish its 2 trials:\n{log[-2000:]}")
        report["sweep_log_lines"] = len(log.splitlines())
        from mlflow.tracking import MlflowClient

        mc = MlflowClient(uri)
        exp = mc.get_experiment_by_name("tiny")
        runs = {r.info.run_name: r.info.status for r in mc.search_runs([exp.experiment_id])}
        report["mlflow_runs"] = runs
        want = {"tiny", "cluster", "scoremix-random-s0", "scoremix-embedding-distant-s0"}
        if not want <= set(runs) or {runs[k] for k in want} != {"FINISHED"}:
            raise PathFailed(f"the head's MLflow server has {runs}, wanted {sorted(want)} FINISHED")
        urllib.request.urlopen(f"{uri}/health", timeout=5).read()
    finally:
        step("ray down", [str(BIN / "ray"), "down", "-y", str(config)], env=env, check=False, timeout=300)
        subprocess.run(["pkill", "-f", f"mlflow server --host 127.0.0.1 --port {mlflow_port}"], check=False)
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, check=False)  # the worker's raylet
        sshd.terminate()
        sshd.wait(10)
        if before is None:
            bashrc.unlink(missing_ok=True)
        else:
            bashrc.write_text(before)
    return report


if __name__ == "__main__":
    try:
        report = main()
    except PathFailed as e:
        print(f"cluster path: {e}", file=sys.stderr)
        print(json.dumps({"ok": False, "steps": steps}))
        sys.exit(1)
    print(json.dumps({"ok": True, **report}))
