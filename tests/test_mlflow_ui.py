"""The tiny sweep's MLflow store in the MLflow UI, in headless Chromium (tests/mlflow_ui.py): what a user opening
the printed link sees. `pytest -m e2e` (a step of `.ci/run`, so the default suite needs no browser). Needs Debian's
chromium and chromium-driver (`.ci/run` installs them); missing, the test fails and says what to install, it does
not skip."""

from __future__ import annotations

import pytest
from mlflow_ui import ML_VIEW, look, missing, server

from scoremix_ray.runtime.tracking import ui_link


@pytest.mark.e2e
def test_the_sweep_in_the_mlflow_ui(tiny_sweep, tmp_path):
    assert not missing(), f"missing: {missing()} (apt-get install chromium chromium-driver; pip install -e '.[test]')"
    out, base, summary = tiny_sweep
    with server(out / "mlflow.db") as url:
        seen = look(url, base.tracking.experiment, tmp_path)
    # the model-training view: MLflow's kind tag on the experiment, and the link we print opens that view
    assert seen["tags"]["mlflow.experimentKind"] == "custom_model_development"
    assert ML_VIEW in ui_link(url, seen["experiment_id"], summary["parent_run_id"])
    runs = seen["runs_page"]
    assert "Model training" in runs and "Token Usage" not in runs and "Traces\n0" not in runs
    # the parent and every trial listed by names that say what each is (method, strategy, seed)
    assert "tiny" in seen["runs"] and "tiny" in runs
    finished = [t for t in summary["trials"] if not t["error"]]
    for t in summary["trials"]:
        assert t["name"] in runs
    # their data stage as a logged dataset (the Dataset column), the headline metric as a column with its values
    assert f"{base.data.source}-split{base.data.split_seed}" in runs
    assert "augmented.verification_accuracy" in runs
    for t in finished:
        assert str(t["augmented.verification_accuracy"])[:5] in runs  # the UI shows the value as logged, cut
    # a trial's page lists the metrics, and the compare view of the finished trials renders
    assert "augmented.verification_accuracy" in seen["run_page"] and "baseline.roc_auc" in seen["run_page"]
    assert f"Comparing {len(finished)} Runs from 1 Experiment" in seen["compare_page"]
    assert all(p.stat().st_size > 20_000 for p in seen["shots"].values())  # pictures, not blank pages
