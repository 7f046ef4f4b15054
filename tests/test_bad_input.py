"""Every bad input a user can give, and every environment that fails: one line naming the culprit, before any
work, nothing stale reused, nothing hung, no code run from a data file. Tiny folders made in each test."""

from __future__ import annotations

import io
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scoremix_ray.config import ConfigError, load_config
from scoremix_ray.foundations.errors import ScoreMixError


def _cli(*args, cwd=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-c", "from scoremix_ray.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _faces(root, classes=6, per_class=4, size=8):
    """`root/<class>/<i>.png`: each class a grey level, each image a slightly different one."""
    for c in range(classes):
        (root / f"id{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / f"id{c}" / f"{i}.png").write_bytes(_png(np.full((size, size), 30 * c + i, np.uint8)))
    return root


def test_a_changed_source_is_a_new_data_stage(tmp_path, caplog):
    """The data key holds the source's fingerprint: a fixed image or a new class folder is a new data stage
    (and a new generator and recognizer), an untouched source is reused and says so."""
    from scoremix_ray import pipeline

    root = _faces(tmp_path / "faces")
    cfg = load_config(None, [f"out_dir={tmp_path / 'out'}", "data.source=folder", f"data.path={root}"])
    split, d1 = pipeline.data_stage(cfg)
    assert split.train.num_classes + split.test.num_classes == 6
    with caplog.at_level(logging.INFO, logger="scoremix_ray"):
        assert pipeline.data_stage(cfg)[1] == d1
    assert f"data: reusing {d1}" in caplog.text
    (root / "id0" / "0.png").write_bytes(_png(np.full((8, 8), 99, np.uint8)))  # a fixed image
    _, d2 = pipeline.data_stage(cfg)
    assert d2 != d1
    _faces(tmp_path / "faces", classes=7)  # a 7th class (and the others rewritten)
    split, d3 = pipeline.data_stage(cfg)
    assert d3 not in (d1, d2) and split.train.num_classes + split.test.num_classes == 7
    assert pipeline.GENERATOR.dir(cfg, {"data": d3}) != pipeline.GENERATOR.dir(cfg, {"data": d1})
    assert pipeline.BASELINE.dir(cfg, {"data": d3}) != pipeline.BASELINE.dir(cfg, {"data": d1})


def test_recordio_fingerprint_reads_sizes_and_times_only(tmp_path):
    from scoremix_ray.core.data.readers import fingerprint
    from scoremix_ray.core.data.recordio import pack, write_indexed

    rec = tmp_path / "train.rec"
    write_indexed(rec, [pack(float(i % 2), _png(np.full((4, 4), i, np.uint8))) for i in range(4)])
    before = fingerprint("recordio", rec)
    assert fingerprint("recordio", rec) == before
    os.utime(rec.with_suffix(".idx"), ns=(1, 1))
    assert fingerprint("recordio", rec) != before
    with pytest.raises(ScoreMixError, match="file not found: .*gone.idx"):
        (tmp_path / "gone.rec").write_bytes(b"")
        fingerprint("recordio", tmp_path / "gone.rec")


def test_seeds_and_strict_types():
    for override, needle in [
        ("seed=-1", "'seed': Input should be greater than or equal to 0"),
        ("data.split_seed=-1", "'data.split_seed'"),
        ("study.folds=[0,-2]", "'study.folds'"),
        ("generator.steps=true", "'generator.steps': expects a number, not a boolean"),
        ("recognizer.hflip=1", "'recognizer.hflip': expects true or false"),
        ("ray.use_gpu=2", "'ray.use_gpu': expects true, false or auto"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            load_config(None, [override])
    assert load_config(None, ["ray.use_gpu=auto", "generator.lr=1"]).generator.lr == 1.0  # an int is a number


def test_config_file_errors_name_the_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("seed: 1\ndata:\n  source: [digits\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML, line \d+ column \d+"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "latin.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin.yaml is not UTF-8 text"):
        load_config(tmp_path / "latin.yaml")


def test_inputs_are_checked_before_any_work(tmp_path):
    from scoremix_ray.runtime.checks import check_inputs, within

    def check(*sets):
        return check_inputs(load_config(None, [f"out_dir={tmp_path / 'out'}", *sets]))

    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check(f"out_dir={tmp_path / 'file'}")
    with pytest.raises(ConfigError, match="out_dir /proc/scoremix is not a writable folder"):
        check("out_dir=/proc/scoremix")
    with pytest.raises(ScoreMixError, match="verification .bin file not found: .*nope.bin"):
        check(f"evaluation.benchmarks=[{{name: lfw, kind: bin, path: {tmp_path / 'nope.bin'}}}]")
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(ScoreMixError, match="junk.bin is not an InsightFace .bin set"):
        check(f"evaluation.benchmarks=[{{name: lfw, kind: bin, path: {tmp_path / 'junk.bin'}}}]")
    with pytest.raises(ScoreMixError, match="benchmarks 'ijbc': .*meta/ijbc_template_pair_label.txt is missing"):
        (tmp_path / "IJBC" / "meta").mkdir(parents=True)
        (tmp_path / "IJBC" / "meta" / "ijbc_face_tid_mid.txt").write_text("")
        check(f"evaluation.benchmarks=[{{name: ijbc, kind: ijb, path: {tmp_path / 'IJBC'}}}]")
    with pytest.raises(ConfigError, match="recognizer.pretrained not found: .*r50.pth"):
        check(f"recognizer.pretrained={tmp_path / 'r50.pth'}")
    with pytest.raises(ConfigError, match="data.path not found"):
        check("data.source=folder", f"data.path={tmp_path / 'none'}")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"tracking server http://127.0.0.1:1 does not answer"):
        check("tracking.tracking_uri=http://127.0.0.1:1", "connect_timeout_s=3")
    with pytest.raises(ConfigError, match=r"out_dir /mnt/hung: no answer within 0.5 s"):  # a hung mount
        within(0.5, "out_dir /mnt/hung", lambda: time.sleep(60))
    assert time.monotonic() - t0 < 10


def test_an_unreachable_ray_cluster_fails_within_its_limit():
    from scoremix_ray.runtime.context import reach_ray

    t0 = time.monotonic()
    with pytest.raises(ScoreMixError, match=r"cannot reach the Ray cluster at 127.0.0.1:1 .*connect_timeout_s"):
        reach_ray("127.0.0.1:1", 2.0)
    with pytest.raises(ScoreMixError, match="expected host:port"):
        reach_ray("nonsense", 2.0)
    assert time.monotonic() - t0 < 5


def test_cli_error_is_one_line_with_its_traceback_in_a_log(tmp_path):
    """A command that fails says one line naming the culprit and the log holding the traceback; --debug also
    prints the traceback; an unreachable cluster fails in seconds, not in Ray's minutes of retries."""
    t0 = time.monotonic()
    r = _cli("train-generator", "--out", str(tmp_path), "--set", "ray.address=127.0.0.1:1", "--set", "seed=0")
    assert time.monotonic() - t0 < 30
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: cannot reach the Ray cluster at 127.0.0.1:1")
    log = r.stderr.rsplit("(traceback: ", 1)[1].rstrip(")\n")
    assert log.startswith(str(tmp_path / "logs"))
    assert "Traceback (most recent call last)" in Path(log).read_text()
    r = _cli("config", "show", "--set", "seed=-1", "--debug")
    assert r.returncode == 2 and "Traceback (most recent call last)" in r.stderr
    assert r.stderr.strip().splitlines()[0].startswith("error: bad value for config key 'seed'")


def test_sigterm_during_ray_work_prints_the_stopped_line(tmp_path):
    """A `kill` (or `ray job stop`) once Ray runs: our one line and exit 130, not Ray's exit or stack dumps."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from scoremix_ray.cli import main; main()", "train-generator", "--out", str(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in proc.stderr:  # "ray: {...}" is logged once ray.init has returned
        lines.append(line)
        if " ray: {" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, "".join(lines) + rest
    tail = [ln for ln in rest.splitlines() if ln.strip()]
    assert tail[-1] == "stopped; rerun the same command to go on (every finished stage is kept)"
    assert "abseil" not in rest.lower() and "*** SIGTERM" not in rest


def test_images_in_16_bit_and_odd_shapes(tmp_path, caplog):
    """16-bit grey keeps its levels (PIL alone clips it white); float images in [0, 1] scale up; a non-square
    image is centre-cropped, with a note, not stretched."""
    from scoremix_ray.config import DataConfig
    from scoremix_ray.core.data.images import decode
    from scoremix_ray.core.data.readers import scan
    from scoremix_ray.pipeline import image_shape

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(buf, "PNG")  # mid grey in 16 bits
    assert abs(int(decode(buf.getvalue(), 8, 1, "grey16").mean()) - 128) <= 1
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(buf, "TIFF")
    assert abs(int(decode(buf.getvalue(), 8, 1, "float").mean()) - 128) <= 1
    wide = np.zeros((8, 24), np.uint8)
    wide[:, 8:16] = 200  # the middle square is bright, the sides dark
    img = decode(_png(wide), 8, 1, "wide")
    assert img.min() == 200  # cropped to the middle: a stretch would have pulled in the dark sides
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.png").write_bytes(_png(wide))
    with caplog.at_level(logging.WARNING, logger="scoremix_ray"):
        image_shape(DataConfig(source="folder", path=tmp_path), scan("folder", tmp_path))
    assert "24x8 px (not square): each is centre-cropped" in caplog.text


def test_broken_links_and_cut_records_are_bad_images_that_skip_leaves_out(tmp_path):
    from scoremix_ray.core.data.images import BadImage
    from scoremix_ray.core.data.readers import scan
    from scoremix_ray.core.data.recordio import pack, write_indexed

    root = _faces(tmp_path / "faces", classes=2, per_class=3)
    os.symlink(tmp_path / "missing.png", root / "id0" / "9.png")
    cat = scan("folder", root)
    with pytest.raises(BadImage, match=r"cannot read image .*9.png: No such file"):
        cat.load(8, 1)
    kept, bad = cat.without_bad()
    assert len(kept) == 6 and bad == [str(root / "id0" / "9.png")]

    rec = tmp_path / "t.rec"
    write_indexed(rec, [pack(float(i % 2), _png(np.full((8, 8), 40 * i, np.uint8))) for i in range(4)])
    with open(rec, "r+b") as f:  # the download was cut in the last image
        f.truncate(rec.stat().st_size - 20)
    cat = scan("recordio", rec)
    with pytest.raises(BadImage, match=r"t.rec#3: record cut short"):
        cat.load(8, 1)
    kept, bad = cat.without_bad()
    assert len(kept) == 3 and bad == [f"{rec}#3"]


def test_undecodable_bytes_name_the_file_not_a_buffer():
    from scoremix_ray.core.data.images import BadImage, decode

    with pytest.raises(BadImage) as e:
        decode(b"not an image", 8, 1, "faces/a/1.png")
    assert str(e.value) == "cannot decode image faces/a/1.png: not an image format PIL reads"
    assert "BytesIO" not in str(e.value)


def test_verification_pairs_are_distinct_and_capped(caplog):
    from scoremix_ray.core.data.split import make_pairs

    labels = np.repeat(np.arange(5), 3)  # 15 images: 15 same-class and 90 different-class pairs
    with caplog.at_level(logging.WARNING, logger="scoremix_ray"):
        pairs, issame = make_pairs(labels, 3000, np.random.default_rng(0))
    assert len(pairs) == 105 and issame.sum() == 15
    assert len({tuple(sorted(p)) for p in pairs.tolist()}) == 105
    assert "105 verification pairs instead of data.num_pairs=3000" in caplog.text
    labels = np.repeat(np.arange(50), 6)
    pairs, issame = make_pairs(labels, 400, np.random.default_rng(1))
    assert len({tuple(sorted(p)) for p in pairs.tolist()}) == 400 and issame.sum() == 200
    assert np.array_equal(labels[pairs[:, 0]] == labels[pairs[:, 1]], issame)


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_crafted_bin_runs_no_code(tmp_path):
    from scoremix_ray.core.data.recordio import read_bin

    marker = tmp_path / "ran"
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([_Exploit(marker), b"x"], [True]), protocol=4))
    with pytest.raises(ScoreMixError, match=r"evil.bin is not an InsightFace .bin set .*refused, it refers to "):
        read_bin(tmp_path / "evil.bin")
    assert not marker.exists()
    images = [_png(np.full((4, 4), v, np.uint8)) for v in (1, 2)]
    (tmp_path / "py2.bin").write_bytes(pickle.dumps((images, [False]), protocol=2))  # bytes via _codecs.encode
    assert read_bin(tmp_path / "py2.bin")[0] == images
    (tmp_path / "ints.bin").write_bytes(pickle.dumps((images, [1]), protocol=2))
    with pytest.raises(ScoreMixError, match="an issame entry is not a boolean"):
        read_bin(tmp_path / "ints.bin")


def test_corrupt_weights_and_metadata_are_one_line(tmp_path, tiny_recognizer):
    import shutil

    from scoremix_ray.core.recognition.train import Recognizer
    from scoremix_ray.foundations.checkpoints import load_state, save_checkpoint

    d = tmp_path / "rec"
    shutil.copytree(tiny_recognizer / "final", d)
    (d / "model.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(ScoreMixError, match=r"cannot read weights .*model.pt: ") as e:
        Recognizer.load(d)
    assert "\n" not in str(e.value)
    (d / "recognizer.json").write_text("{not json")
    with pytest.raises(ScoreMixError, match=r"cannot read metadata .*recognizer.json"):
        Recognizer.load(d)
    marker = tmp_path / "ran"
    ckpt = save_checkpoint(tmp_path / "ckpt", 1, {"net": {"w": torch.zeros(1)}})
    assert load_state(ckpt)["net"]["w"].shape == (1,)
    torch.save({"net": _Exploit(marker)}, ckpt / "state.pt")  # a checkpoint that would run code
    with pytest.raises(ScoreMixError, match="cannot read weights .*state.pt"):
        load_state(ckpt)
    assert not marker.exists()


def test_a_new_bin_is_evaluated_not_trained_again(tmp_path, tiny_recognizer, tiny_generator):
    import json
    import shutil

    from scoremix_ray.core.data.images import encode_png
    from scoremix_ray.core.data.recordio import write_bin
    from scoremix_ray.runtime.benchmarks import with_benchmarks
    from scoremix_ray.runtime.context import RunContext

    d = tmp_path / "rec"
    shutil.copytree(tiny_recognizer, d)
    (d / "metrics.json").write_text(json.dumps({"verification_accuracy": 0.5}))
    test = tiny_generator[2].test
    rows = np.arange(40) % len(test.images)
    write_bin(tmp_path / "a.bin", [encode_png(test.images[i]) for i in rows], [bool(i % 2) for i in range(20)])
    bench = f"evaluation.benchmarks=[{{name: a, kind: bin, path: {tmp_path / 'a.bin'}}}]"
    cfg = load_config(None, [bench, "ray.use_gpu=false"])
    first = with_benchmarks(RunContext(), cfg, d, json.loads((d / "metrics.json").read_text()))
    assert 0 <= first["benchmarks"]["a"]["verification_accuracy"] <= 1 and first["verification_accuracy"] == 0.5
    assert json.loads((d / "metrics.json").read_text())["benchmarks"] == first["benchmarks"]
    os.utime(tmp_path / "a.bin", ns=(1, 1))  # the same path, another file
    again = with_benchmarks(RunContext(), cfg, d, first)["benchmarks"]["a"]
    assert again["source"] != first["benchmarks"]["a"]["source"]


def test_training_shows_progress_within_an_epoch(digits_split, tmp_path, caplog, monkeypatch):
    from scoremix_ray.config import RecognizerConfig
    from scoremix_ray.core.data.batches import InMemory
    from scoremix_ray.core.recognition.train import train_recognizer
    from scoremix_ray.foundations import progress

    monkeypatch.setattr(progress, "PROGRESS_S", 0.0)
    cfg = RecognizerConfig(widths=(8,), blocks=(1,), embedding_dim=8, epochs=1, batch_size=64)
    split = digits_split
    with caplog.at_level(logging.INFO, logger="scoremix_ray"):
        train_recognizer(InMemory(split.train.images, split.train.labels), split.train.num_classes, cfg, 0, tmp_path)
    lines = [r.getMessage() for r in caplog.records if "left; epoch 1/1, step" in r.getMessage()]
    assert len(lines) >= 2 and all(" img/s, about " in ln for ln in lines), caplog.text
