import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from face_fixtures import make_ijb


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-c", "from scoremix_ray.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_config_show():
    r = _cli("config", "show", "--set", "data.image_size=24")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["data"]["image_size"] == 24


def test_bad_input_is_one_line():
    r = _cli("config", "show", "--set", "data.imgsize=24")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "data.imgsize" in r.stderr
    r = _cli("data", "inspect", "--set", "data.source=folder", "--set", "data.path=/nonexistent/faces")
    assert r.returncode == 2 and r.stderr.startswith("error: data.path not found: /nonexistent/faces (traceback: ")
    assert r.stderr.strip().count("\n") == 0


def test_data_inspect(tmp_path):
    r = _cli("data", "inspect", "--out", str(tmp_path), "--set", "data.per_class=20")
    assert r.returncode == 0, r.stderr
    assert "train: 100 images in 5 classes" in r.stdout
    grids = list(tmp_path.glob("stages/data-*/train_grid.png"))
    assert len(grids) == 1 and grids[0].stat().st_size > 500


TINY = [
    "--set",
    "data.image_size=8",
    "--set",
    "data.per_class=30",
    "--set",
    "generator.block_out_channels=16,32",
    "--set",
    "generator.steps=30",
    "--set",
    "generator.batch_size=16",
    "--set",
    "generator.log_every=10",
    "--set",
    "sampler.steps=6",
]


def test_train_generator_and_sample(tmp_path, caplog):
    import logging

    from scoremix_ray.foundations.errors import ScoreMixError

    r = _cli("train-generator", "--out", str(tmp_path), *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "class accuracy of samples" in r.stdout
    gen = next(tmp_path.glob("stages/generator-*"))
    assert (gen / "final" / "edm.json").is_file() and (gen / "guide" / "edm.json").is_file()
    assert (gen / "samples.png").is_file()
    assert "steps/s" in r.stderr and "loss" in r.stderr  # progress while training
    names = yaml.safe_load((next(tmp_path.glob("stages/data-*")) / "summary.json").read_text())
    assert names["train_classes"] == 5
    # the cached generator is reused: sampling does not train again (in this process: a command's start-up is
    # tested above, and each one costs seconds of imports)
    from scoremix_ray.core.data import Split

    caplog.set_level(logging.INFO, logger="scoremix_ray")
    train_names = Split.load(next(tmp_path.glob("stages/data-*")) / "split.npz").train.class_names
    a, b = train_names[0], train_names[1]
    r = _in_process("sample", "--out", tmp_path, *TINY, "--mix", f"{a},{b}", "--sweep-weights", "--per-class", "4")
    assert r.exit_code == 0, r.output[-2000:]
    assert "reusing" in caplog.text and "step 10/30" not in caplog.text
    assert r.output.count("row:") == 5 and f"0.5*class {a} + 0.5*class {b}" in r.output
    from PIL import Image

    png = Image.open(tmp_path / "default" / f"mix_{a}_{b}_sweep.png")
    assert png.size == (4 * (4 * 9 + 1), 4 * (5 * 9 + 1))  # 4 columns x 5 weight rows of 8px + 1px pads, x4
    r = _in_process("sample", "--out", tmp_path, *TINY, "--classes", a, "--per-class", "3")
    assert r.exit_code == 0 and (tmp_path / "default" / f"classes_{a}.png").is_file()
    unseen = next(str(c) for c in range(10) if str(c) not in train_names)
    with pytest.raises(ScoreMixError, match=f"class '{unseen}' is not a training class"):
        _in_process("sample", "--out", tmp_path, *TINY, "--mix", f"{a},{unseen}")
    with pytest.raises(ScoreMixError, match="sum to 1"):  # (main prints any such error as one line: see above)
        _in_process("sample", "--out", tmp_path, *TINY, "--mix", f"{a},{b}", "--weights", "0.9,0.3")


def _in_process(*args):
    """The CLI in this process, on the session's Ray (no Ray start-up per command)."""
    from typer.testing import CliRunner

    from scoremix_ray.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r


def test_train_recognizer_select_align_generate(ray_session, tmp_path, caplog):
    import json
    import logging

    from scoremix_ray.core.data import Split
    from scoremix_ray.core.data.images import encode_png
    from scoremix_ray.core.data.recordio import write_bin
    from scoremix_ray.core.selection import Selection
    from scoremix_ray.foundations.errors import ScoreMixError

    caplog.set_level(logging.INFO, logger="scoremix_ray")
    rec = [
        *TINY,
        "--set",
        "recognizer.widths=8,16",
        "--set",
        "recognizer.blocks=1,1",
        "--set",
        "recognizer.epochs=3",
        "--set",
        "recognizer.batch_size=32",
        "--set",
        "data.num_pairs=400",
        "--set",
        "ray.cpus_per_worker=1",
    ]
    r = _in_process("train-recognizer", "--out", tmp_path, *rec)
    assert r.exit_code == 0, r.output[-2000:]
    assert "verification_accuracy" in r.output
    assert "note: FAR 0.001 needs >= 1000 different pairs, have 200" in r.output
    stage = next(tmp_path.glob("stages/recognizer-*"))
    assert (stage / "centres.npy").is_file() and (stage / "final" / "model.pt").is_file()
    # a .bin made of the unseen test images, in the InsightFace layout (pairs stored consecutively)
    split = Split.load(next(tmp_path.glob("stages/data-*")) / "split.npz")
    blobs = [encode_png(split.test.images[i]) for pair in split.pairs[:100] for i in pair]
    write_bin(tmp_path / "digits.bin", blobs, split.issame[:100].tolist())
    # and an IJB-C folder: its 42 faces embedded by the Ray Data actor pool (the "ray" executor of a command)
    make_ijb(tmp_path / "IJBC")
    ijbc = f"evaluation.benchmarks=[{{name: ijbc, kind: ijb, path: {tmp_path / 'IJBC'}}}]"
    r = _in_process(
        "evaluate", "--recognizer", stage, "--bin", tmp_path / "digits.bin", "--out", tmp_path, *rec, "--set", ijbc
    )
    assert r.exit_code == 0, r.output[-2000:]
    m = json.loads((stage / "metrics.json").read_text())
    assert m["benchmarks"]["digits"]["pairs"] == 100 and 0 <= m["benchmarks"]["digits"]["roc_auc"] <= 1
    assert m["benchmarks"]["ijbc"]["templates"] == 20 and "ijbc.tar_at_far_1e-3" in r.output
    assert "digits.verification_accuracy" in r.output and "bins.verification_accuracy" in r.output
    assert m["verification_accuracy"] > 0.5 and m["train"]["epoch"] == 3
    # export for insightface's tools, then the same weights as a pretrained baseline: no training, same metrics
    r = _in_process("export", "--recognizer", stage, "--to", tmp_path / "exported")
    assert r.exit_code == 0 and "onnxruntime - torch: " in r.output, r.output[-2000:]
    r = _in_process(
        "train-recognizer",
        "--out",
        tmp_path,
        *rec,
        "--set",
        f"recognizer.pretrained={tmp_path / 'exported' / 'backbone.pth'}",
    )
    assert r.exit_code == 0, r.output[-2000:]
    loaded = [d for d in tmp_path.glob("stages/recognizer-*") if d != stage]
    assert len(loaded) == 1 and not (loaded[0] / "checkpoints").exists()
    got = json.loads((loaded[0] / "metrics.json").read_text())
    assert got["verification_accuracy"] == m["verification_accuracy"] and got["train"]["pretrained"].endswith(".pth")
    with pytest.raises(ScoreMixError, match="expects 8px"):
        _in_process("evaluate", "--recognizer", stage, "--out", tmp_path, "--set", "data.image_size=16")
    # stage 4 and the alignment on the same (cached) stages: only the generator is new work
    caplog.clear()
    r = _in_process("select", "--strategy", "embedding-close", "--count", "3", "--out", tmp_path, *rec)
    assert r.exit_code == 0, r.output[-2000:]
    assert "recognizer: reusing" in caplog.text and "pairs:" in r.output
    sel = Selection.read(tmp_path / "default" / "pairs.parquet")
    assert sel.tuples.shape == (3, 2) and np.all(np.diff(sel.scores) >= 0)  # closest first
    r = _in_process("align", "--out", tmp_path, *rec)
    assert r.exit_code == 0, r.output[-2000:]
    a = json.loads((tmp_path / "default" / "metrics.json").read_text())["alignment"]
    assert a["classes"] == 5 and -1 <= a["cka_linear"] <= 1 and "cknna_null" in a
    r = _in_process(
        "generate",
        "--pairs",
        tmp_path / "default" / "pairs.parquet",
        "--per-tuple",
        "4",
        "--out",
        tmp_path,
        *rec,
        "--set",
        "generation.unit_size=4",
    )
    assert r.exit_code == 0, r.output[-2000:]
    gen = next(tmp_path.glob("stages/generate-*"))
    manifest = json.loads((gen / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows_written"] == 12 and len(manifest["shards"]) == 3
    assert (gen / "samples.png").is_file() and "12 images" in r.output
    with pytest.raises(ScoreMixError, match=re.escape("unknown selection.strategy 'nearest' (valid: random,")):
        _in_process("select", "--strategy", "nearest", "--out", tmp_path, *rec)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["sample", "--mix", "1,99"], "class '99' is not a training class"),
        (["run", "--set", "selection.count=50"], "selection.count=50 exceeds the 10 possible 2-tuples of 5 classes"),
        (["run", "--set", "selection.max_uses_per_class=1", "--set", "selection.count=3"], "allow 5"),
        (
            ["generate", "--set", "selection.strategy=triplet-sum-max", "--set", "selection.count=11"],
            "10 possible 3-tuples",
        ),
    ],
)
def test_checks_on_the_data_stop_before_any_training(tmp_path, args, needle):
    """Right after the data stage (seconds at toy size), before a generator or recognizer is trained."""
    from scoremix_ray.foundations.errors import ScoreMixError

    with pytest.raises(ScoreMixError, match=re.escape(needle)):
        _in_process(*args, "--out", tmp_path, "--set", "data.image_size=8", "--set", "data.per_class=30")
    assert [p.name.split("-")[0] for p in (tmp_path / "stages").iterdir()] == ["data"]


def test_a_run_says_how_noisy_its_delta_is():
    """The paired interval over the verification folds (the same pairs for both recognizers), and the pointer
    to a study; without per-fold accuracies (a baseline evaluated by an older version), the pointer alone."""
    from scoremix_ray.cli import delta_noise

    b = [0.70, 0.72, 0.74, 0.71, 0.73, 0.70, 0.72, 0.74, 0.71, 0.73]
    a = [x + d for x, d in zip(b, [0.01, 0.03, -0.01, 0.02, 0.0, 0.01, 0.03, -0.01, 0.02, 0.0])]
    line = delta_noise({"verification_accuracy_folds": b}, {"verification_accuracy_folds": a})
    # mean 0.01, sd 0.01491 (ddof 1), t_9 = 2.2622: half-width 0.01067
    assert "over its 10 folds of pairs the accuracy delta is +0.0100 [-0.0007, +0.0207] (95%)" in line
    assert "scoremix-ray study" in line and "\n" not in line
    assert "accuracy delta" not in delta_noise({}, {}) and "scoremix-ray study" in delta_noise({}, {})


@pytest.mark.e2e
def test_a_healthy_run_prints_few_lines_and_no_warning(ray_session, tmp_path):
    """`scoremix-ray run` on configs/tiny.yaml as a job would run it (stdout not a terminal, on a running Ray):
    every stage trained fresh, Train workers and generation actors included. At most 100 lines, no WARNING or ERROR
    (Ray's, MLflow's or ours; core_worker's notice of ray-project/ray#53727 included); the whole log
    is in <out>/logs."""
    address = ray_session.get_runtime_context().gcs_address
    r = subprocess.run(
        [sys.executable, "-m", "scoremix_ray", "run", "--config", "configs/tiny.yaml", "--out", str(tmp_path)]
        + ["--set", f"ray.address={address}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = (r.stdout + r.stderr).splitlines()
    assert r.returncode == 0, "\n".join(lines[-40:])
    noisy = [line for line in lines if re.search(r"\bERROR\b|\bWARNING\b|Warning:|Traceback| E \d+ ", line)]
    assert noisy == [], "\n".join(noisy)
    # Ray Train's per-checkpoint INFO line, from a logger its LoggingConfig does not hold (progress.quiet_console)
    assert not [line for line in lines if "Reporting training result" in line]
    assert len(lines) <= 100, "\n".join(lines)
    assert "done in" in r.stdout.splitlines()[-1] and list((tmp_path / "logs").glob("*-run-*.log"))
