"""The preflight (runtime/preflight.py) on the session's Ray: a ready node passes, and each thing a node lacks is
one line naming the node and the thing. Its run on a real two-node cluster is in tests/cluster_path.py."""

from __future__ import annotations

from mlflow_ui import free_port

from scoremix_ray.config import load_config
from scoremix_ray.runtime.preflight import environment, node_check, preflight


def test_a_ready_node_passes_and_leaves_nothing_behind(ray_session, tmp_path):
    cfg = load_config(None, [f"out_dir={tmp_path}"])
    assert preflight(cfg) == []
    assert not list(tmp_path.glob(".preflight-*"))  # the markers go


def test_a_tracking_server_that_does_not_answer_is_one_line(ray_session, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = load_config(None, [f"out_dir={tmp_path}", f"tracking.tracking_uri={uri}"])
    failures = preflight(cfg)
    assert len(failures) == 1 and failures[0].startswith(f"driver: tracking server {uri}/health does not answer")


def test_a_node_that_does_not_see_out_dir_says_so(tmp_path):
    found = node_check(str(tmp_path), ".preflight-abc", None)  # the driver's marker is not in this folder
    assert found["problems"] == [
        f"out_dir {tmp_path} is not the driver's folder here (its marker .preflight-abc is missing)"
    ]
    assert found["env"]["scoremix-ray"] == environment()["scoremix-ray"]
