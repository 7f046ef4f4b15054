import subprocess
import sys

import yaml


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", "from scoremix_ray.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_config_show():
    r = _cli("config", "show", "--set", "data.image_size=24")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["data"]["image_size"] == 24


def test_bad_input_is_one_line():
    r = _cli("config", "show", "--set", "data.imgsize=24")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "data.imgsize" in r.stderr
    r = _cli("data", "inspect", "--set", "data.source=folder", "--set", "data.path=/nonexistent/faces")
    assert r.returncode == 2 and r.stderr.strip() == "error: image folder not found: /nonexistent/faces"


def test_data_inspect(tmp_path):
    r = _cli("data", "inspect", "--out", str(tmp_path), "--set", "data.per_class=20")
    assert r.returncode == 0, r.stderr
    assert "train: 100 images in 5 classes" in r.stdout
    grids = list(tmp_path.glob("stages/data-*/train_grid.png"))
    assert len(grids) == 1 and grids[0].stat().st_size > 500
