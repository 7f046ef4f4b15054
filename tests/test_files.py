"""Files shared by concurrent writers (`foundations/files.py`): atomic writes, folders published whole, a stage
two processes finish at once; and the layers the package keeps (the scripts and notebook that import it)."""

import ast
import importlib
import json
import multiprocessing as mp
from pathlib import Path

import pytest

from scoremix_ray.foundations.files import atomic_write, merge_json, publish_dir, write_json

ROOT = Path(__file__).resolve().parents[1]
SPAWN = mp.get_context("spawn")  # fresh interpreters: no fork of a process holding Ray or torch threads


def _write_many(path: str, tag: int, n: int) -> None:
    for i in range(n):
        write_json(Path(path), {"writer": tag, "i": i, "pad": "x" * 20_000})  # large enough to interleave


def _merge_many(path: str, tag: int, n: int) -> None:
    for i in range(n):
        merge_json(Path(path), **{f"w{tag}-{i}": i})


def _publish(path: str, tag: int, gate) -> None:
    def fill(tmp: Path) -> None:
        gate.wait()  # both writers hold a complete temp copy before either renames
        (tmp / "a.bin").write_bytes(bytes([tag]) * 100_000)
        (tmp / "done").write_text(str(tag))

    publish_dir(Path(path), fill)


def _data_stage(conf: dict, gate, log_path: str) -> None:
    import logging

    from scoremix_ray import pipeline
    from scoremix_ray.config import Config

    log = logging.getLogger("scoremix_ray")
    log.setLevel(logging.INFO)
    log.addHandler(logging.FileHandler(log_path))
    gate.wait()
    pipeline.data_stage(Config.model_validate(conf))


def _run_all(target, args_of, n=2):
    procs = [SPAWN.Process(target=target, args=args_of(k)) for k in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    return [p.exitcode for p in procs]


def test_two_writers_of_one_file_never_publish_half_of_one(tmp_path):
    path = tmp_path / "shared.json"
    assert _run_all(_write_many, lambda k: (str(path), k, 150)) == [0, 0]
    last = json.loads(path.read_text())  # whole JSON: one writer's last value, never bytes of both
    assert last["i"] == 149 and last["writer"] in (0, 1) and len(last["pad"]) == 20_000
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]  # no temp file left behind


def test_two_processes_merging_one_json_keep_every_section(tmp_path):
    path = tmp_path / "quality.json"
    assert _run_all(_merge_many, lambda k: (str(path), k, 40)) == [0, 0]
    assert len(json.loads(path.read_text())) == 80  # read-modify-write under a lock: no update lost


def test_a_folder_published_by_two_processes_at_once_is_one_complete_copy(tmp_path):
    path, gate = tmp_path / "model", SPAWN.Barrier(2)
    assert _run_all(_publish, lambda k: (str(path), k + 1, gate)) == [0, 0]
    tag = int((path / "done").read_text())
    assert (path / "a.bin").read_bytes() == bytes([tag]) * 100_000  # the files of one writer, not a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the loser's temp copy discarded


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = atomic_write(tmp_path / "a.txt", "old")

    class Boom(Exception):
        pass

    def fill(tmp: Path) -> None:
        (tmp / "partial").write_text("half")
        raise Boom

    with pytest.raises(Boom):
        publish_dir(tmp_path / "stage", fill)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_two_trials_finishing_the_same_stage_leave_one_complete_copy(tmp_path):
    """Two processes run the data stage of one config at the same moment: both succeed on the same folder, which
    was written once (the second waited on the stage's lock and reused it)."""
    from scoremix_ray.config import load_config

    cfg = load_config(None, ["data.per_class=20", "data.num_pairs=100", f"out_dir={tmp_path}"])
    gate = SPAWN.Barrier(2)
    logs = [tmp_path / f"trial-{k}.log" for k in range(2)]
    assert _run_all(_data_stage, lambda k: (cfg.model_dump(mode="json"), gate, str(logs[k]))) == [0, 0]
    said = " ".join(p.read_text() for p in logs)
    assert said.count("data: wrote") == 1 and said.count("data: reusing") == 1  # computed once, then reused
    stages = sorted(p.name for p in (tmp_path / "stages").iterdir())
    assert len(stages) == 1 and stages[0].startswith("data-")
    d = tmp_path / "stages" / stages[0]
    assert (d / "split.npz").is_file() and json.loads((d / "summary.json").read_text())["train_images"] > 0
    assert not [p for p in d.rglob("*") if ".tmp" in p.name]


def _internal_imports(source: str) -> list[tuple[str, list[str]]]:
    """(module, names) of every `from scoremix_ray... / tuning... import names` in `source`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("scoremix_ray", "tuning"):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] in ("scoremix_ray", "tuning")]
    return found


def _scripts() -> list[tuple[str, str]]:
    out = [(p.name, p.read_text()) for p in sorted((ROOT / "benchmarks").glob("*.py"))]
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        out.append((nb.name, "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))))
    return out


@pytest.mark.parametrize("name,source", _scripts(), ids=[n for n, _ in _scripts()])
def test_benchmark_scripts_and_notebooks_import_what_exists(name, source):
    """Every module and name a benchmark script or notebook takes from the package exists (the scripts start
    Ray or train at import, so their imports are resolved rather than the scripts run)."""
    imports = _internal_imports(source)
    assert imports, f"{name} imports nothing of the package"
    for module, names in imports:
        m = importlib.import_module(module)
        for n in names:
            assert hasattr(m, n) or importlib.util.find_spec(f"{module}.{n}"), f"{name}: {module} has no {n}"


def test_every_module_of_the_package_imports():
    """A move or a split that leaves a stale import fails here, not in the one test that happens to reach it."""
    names = [
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for top in ("scoremix_ray", "tuning")
        for p in sorted((ROOT / top).rglob("*.py"))
        if p.name != "__main__.py"
    ]
    assert len(names) > 60
    for name in names:
        importlib.import_module(name)
