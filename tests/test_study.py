"""The study: paired intervals, the report from MLflow runs (every condition listed, paired differences
computed per cell), the study config and its fold check, and a tiny study end to end on Ray."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from scoremix_ray.config import ConfigError, load_config
from scoremix_ray.core.evaluation.statistics import holm, paired_interval, paired_p, verdict

STUDY = str(Path(__file__).resolve().parents[1] / "configs" / "study-digits.yaml")


def test_t_interval_by_hand():
    mean, low, high = paired_interval([1.0, 2.0, 3.0], 0.95, "t")
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{2, 0.975} * s / sqrt(n), s = 1
    assert mean == 2.0 and low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    assert verdict(low, high) == "no detectable difference"
    assert verdict(*paired_interval([0.02, 0.03, 0.025, 0.028], 0.95, "t")[1:]) == "higher than baseline"
    assert verdict(*paired_interval([-0.02, -0.03, -0.025], 0.95, "bootstrap")[1:]) == "lower than baseline"
    # the p-value agrees with the interval: p < 0.05 exactly when the 95% interval excludes 0
    for d in ([1.0, 2.0, 3.0], [0.02, 0.03, 0.025, 0.028], [0.01, -0.02, 0.015]):
        low, high = paired_interval(d, 0.95, "t")[1:]
        assert (paired_p(d, "t") < 0.05) == (low > 0 or high < 0)
    assert list(holm([0.01, math.nan, 0.04, 0.03])) == pytest.approx([0.03, math.nan, 0.06, 0.06], nan_ok=True)
    assert math.isnan(paired_interval([0.1], 0.95, "t")[1]) and verdict(math.nan, math.nan).startswith("too few")
    with pytest.raises(ValueError, match="unknown interval method 'z'"):
        paired_interval([1, 2], 0.95, "z")


@pytest.mark.parametrize("method", ["t", "bootstrap"])
def test_interval_covers_zero_about_95_percent_under_no_effect(method):
    rng = np.random.default_rng(0)
    sims = [paired_interval(rng.normal(0, 0.02, 8), 0.95, method, resamples=2000, seed=i) for i in range(600)]
    coverage = np.mean([lo <= 0 <= hi for _, lo, hi in sims])
    # t is exact for normal cells; the percentile bootstrap is known to under-cover at n = 8
    assert (0.93 <= coverage <= 0.97) if method == "t" else (0.86 <= coverage <= 0.95)
    shifted = [paired_interval(rng.normal(0.03, 0.02, 8), 0.95, method, resamples=2000) for _ in range(100)]
    assert np.mean([lo > 0 for _, lo, _ in shifted]) > 0.9  # a real gain of 1.5 sd is detected


def test_study_section_validates():
    cfg = load_config(STUDY)
    st = cfg.study
    assert len(st.folds) >= 4 and len(st.seeds) >= 2 and "scoremix" in st.methods and len(st.strategies) == 5
    assert load_config(None, []).study is None  # ordinary runs have no study
    assert load_config(STUDY, ["study.seeds=3"]).study.seeds == (3,)
    with pytest.raises(ConfigError, match=r"study.folds repeats a value: \[0, 0\]"):
        load_config(STUDY, ["study.folds=0,0"])
    with pytest.raises(ConfigError, match="study.interval"):
        load_config(STUDY, ["study.interval=z"])


def test_folds_with_the_same_partition_are_refused(tmp_path):
    from tuning.study import check_folds

    cfg = load_config(STUDY, [f"out_dir={tmp_path}", "study.folds=0,1,17"])
    with pytest.raises(ConfigError, match="study.folds 1 and 17 give the same training classes"):
        check_folds(cfg)  # split seeds 1 and 17 draw the same 5 of 10 digits
    parts = check_folds(load_config(STUDY, [f"out_dir={tmp_path}"]))
    assert len({tuple(p) for p in parts.values()}) == 4


def _fake_study(tmp_path):
    """An MLflow store as a study leaves it: a parent tagged as a study and one child per (condition, cell),
    with metrics made up so the paired differences are known; one failed trial; diffii never ran."""
    from scoremix_ray.config import with_overrides
    from scoremix_ray.runtime import tracking

    base = load_config(
        STUDY,
        [
            f"out_dir={tmp_path}",
            "study.folds=0,1",
            "study.seeds=0,1",
            "study.methods=scoremix,plain,diffii",
            "study.strategies=random,embedding-distant",
        ],
    )
    tags = {
        "scoremix.kind": "study",
        "scoremix.wall_time_s": "3723",
        "scoremix.machine": "test box",
        "scoremix.trials": "12",
    }
    gain = {("scoremix", "random"): 0.0, ("scoremix", "embedding-distant"): 0.05, ("plain", "x"): -0.04}
    rng = np.random.default_rng(0)
    expected = {}
    with tracking.live_run(base, tracking.Tracker(tracking.tracking_uri(base)), tags=tags) as parent:
        for (method, strategy), g in gain.items():
            for fold in (0, 1):
                for seed in (0, 1):
                    b = 0.7 + 0.05 * fold + 0.01 * seed  # cells differ a lot; the paired difference does not
                    d = g + rng.normal(0, 0.005)
                    expected.setdefault((method, strategy), []).append(d)
                    sets = [
                        f"name={method}-{strategy}-{fold}-{seed}",
                        f"seed={seed}",
                        f"data.split_seed={fold}",
                        f"generation.method={method}",
                    ] + ([f"selection.strategy={strategy}"] if method == "scoremix" else [])
                    cfg = with_overrides(base, sets)
                    metrics = {
                        "baseline": {"verification_accuracy": b, "roc_auc": b + 0.1},
                        "augmented": {"verification_accuracy": b + d, "roc_auc": b + 0.1 + d},
                        "delta": {"verification_accuracy": d, "roc_auc": d},
                        "alignment": {
                            "cka_linear": 0.1 * fold,
                            "cka_linear_null": 0.0,
                            "cknna": 0.2,
                            "cknna_null": 0.1,
                        },
                    }
                    tracking.log_run(cfg, metrics, parent=parent)
        tracking.log_run(
            with_overrides(base, ["name=plain-fail", "generation.method=plain"]),
            None,
            parent=parent,
            status="FAILED",
            error="boom",
        )
    return with_overrides(base, ["study.metrics=verification_accuracy,roc_auc"]), expected


def test_study_report_from_mlflow(tmp_path):
    from scipy import stats

    from scoremix_ray.report import write_study_report

    cfg, expected = _fake_study(tmp_path)
    paths = write_study_report(cfg)
    data = json.loads(paths["json"].read_text())
    rows = {r["condition"]: r for r in data["tables"]["verification_accuracy"]}
    assert list(rows) == [
        "baseline (real only)",
        "scoremix / random",
        "scoremix / embedding-distant",
        "plain",
        "diffii",
    ]
    assert rows["baseline (real only)"]["cells"] == 4
    assert rows["baseline (real only)"]["mean"] == pytest.approx(np.mean([0.7, 0.71, 0.75, 0.76]))
    for (method, strategy), diffs in expected.items():
        r = rows[f"scoremix / {strategy}" if method == "scoremix" else method]
        mean, low, high = paired_interval(diffs, 0.95, "t")
        assert r["cells"] == 4 and r["diff"] == pytest.approx(mean) and r["low"] == pytest.approx(low)
    assert rows["scoremix / embedding-distant"]["verdict"] == "higher than baseline"
    assert rows["scoremix / random"]["verdict"] == "no detectable difference"
    assert rows["plain"]["verdict"] == "lower than baseline" and rows["plain"]["failed"] == 1
    assert rows["diffii"]["cells"] == 0 and rows["diffii"]["verdict"] == "not run"
    # Holm over the 3 conditions that ran: the smallest p times 3, the next times 2 (never below the one before)
    p = {
        c: stats.ttest_1samp(expected[k], 0).pvalue
        for c, k in (
            ("scoremix / random", ("scoremix", "random")),
            ("scoremix / embedding-distant", ("scoremix", "embedding-distant")),
            ("plain", ("plain", "x")),
        )
    }
    order = sorted(p, key=p.get)
    adj = np.maximum.accumulate([min(1, (3 - j) * p[c]) for j, c in enumerate(order)])
    assert [rows[c]["p_holm"] for c in order] == pytest.approx(list(adj))
    assert rows["scoremix / embedding-distant"]["holm"] == "higher" and rows["plain"]["holm"] == "lower"
    assert rows["scoremix / random"]["holm"] == "not detected"
    # the contrast embedding-distant - random, paired by cell (embedding-close never ran: that contrast is absent)
    (c,) = data["contrasts"]
    d = np.subtract(expected[("scoremix", "embedding-distant")], expected[("scoremix", "random")])
    assert c["contrast"] == "scoremix / embedding-distant - scoremix / random" and c["cells"] == 4
    assert c["diff"] == pytest.approx(d.mean()) and c["low"] == pytest.approx(paired_interval(d, 0.95, "t")[1])
    md = paths["markdown"].read_text()
    assert "| scoremix / embedding-distant - scoremix / random | 4 |" in md
    assert "1 h 2 min 3 s on test box" in md and "| plain | 4 (1 failed) |" in md and "| diffii | 0 |" in md
    assert "![differences to the baseline](differences.png)" in md and paths["plot"].stat().st_size > 5000
    align = {r["fold"]: r for r in data["alignment"]}
    assert align[1]["cka_linear"] == pytest.approx(0.1) and align[0]["cknna_null"] == pytest.approx(0.1)


def test_report_command_without_a_study_says_so(tmp_path):
    from typer.testing import CliRunner

    from scoremix_ray.cli import app

    r = CliRunner().invoke(app, ["report", "--config", STUDY, "--out", str(tmp_path)])
    assert r.exit_code != 0 and "no study named 'study-digits'" in str(r.exception)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the tiny sweep it builds on may be its setup
def test_tiny_study_over_all_methods_end_to_end(tiny_sweep, tiny_benchmarks):
    """Every method on the embedded default (digits at toy size) with autoguidance through the study's Tune
    sweep, MLflow and the report. One cell (fold 0, seed 0), the tiny sweep's: its generator and baseline are
    reused, as a study reuses them across conditions (intervals over many cells are tested on a synthetic store
    above; each cell costs ~7 Ray Train + Ray Data trials, ~35 s each on 2 cores). The notebook then runs on that
    folder: the sweep's table and grids and the study's report."""
    from conftest import TINY_RUN
    from typer.testing import CliRunner

    from scoremix_ray.cli import app
    from scoremix_ray.config import GeneratorConfig
    from scoremix_ray.core.generation import read_shards
    from tuning.study import run_study

    out = tiny_sweep[0]
    sets = [
        f"out_dir={out}",
        *TINY_RUN,
        "study.folds=0",
        "study.seeds=0",
        "study.strategies=random",
        "study.metrics=verification_accuracy,roc_auc",
        "generation.weights=",
        # every method end to end under the paper's guidance (the guide loaded once per actor)
        "sampler.guidance=autoguidance",
        "sampler.guidance_scale=1.5",
        tiny_benchmarks,
        # the default recipe, as the tiny sweep's generator (the config pins the one its report ran with)
        *(f"generator.{k}={getattr(GeneratorConfig(), k)}" for k in ("p_mean", "p_std", "lr_decay_steps")),
    ]
    summary = run_study(load_config(STUDY, sets))
    STUDY_METHODS = load_config(STUDY).study.methods  # the study config lists every method
    trials = {t["name"]: t for t in summary["trials"]}
    assert len(trials) == len(STUDY_METHODS) and not [n for n, t in trials.items() if t["error"]]
    assert len(list(out.glob("stages/generator-*"))) == 1  # the sweep's, reused
    budget = 2 * 8  # selection.count x generation.per_tuple, the same for every method
    for name, t in trials.items():
        stages = json.loads((Path(t["run_dir"]) / "stages.json").read_text())
        table = read_shards(Path(stages["generate"]["dir"]), ["method"])
        assert table.num_rows == budget and set(table.column("method").to_pylist()) == {name.split("-")[0]}
        assert load_config(Path(t["run_dir"]) / "config.yaml").sampler.guidance == "autoguidance"
    data_dirs = {}  # every condition of a fold saw the same split (real images, pairs) and the same baseline
    for name, t in trials.items():
        stages = json.loads((Path(t["run_dir"]) / "stages.json").read_text())
        data_dirs.setdefault(name.rsplit("split_seed", 1)[1], set()).add(
            (stages["data"]["dir"], stages["recognizer"]["dir"])
        )
    assert {k: len(v) for k, v in data_dirs.items()} == {"0": 1}
    report = json.loads(Path(summary["report"]["json"]).read_text())
    rows = report["tables"]["verification_accuracy"]
    assert [r["condition"] for r in rows][1:] == ["scoremix / random", *STUDY_METHODS[1:]]
    assert all(r["cells"] == 1 for r in rows) and {r["verdict"] for r in rows[1:]} == {"too few cells for an interval"}
    assert report["tags"]["scoremix.kind"] == "study" and float(report["tags"]["scoremix.wall_time_s"]) > 0
    assert {r["fold"] for r in report["alignment"]} == {0}
    # the generator's checks beside their real references, and the mixed classes of each new-class method
    (gen,) = report["generator"]
    for key in ("class_accuracy", "identity_accuracy", "fd", "precision", "recall"):
        assert gen[key] >= 0 and gen[key + "_real"] >= 0, key
    mixing = {r["condition"]: r for r in report["mixing"]}
    assert "scoremix / random" in mixing and "plain" not in mixing
    assert 0 <= mixing["scoremix / random"]["assigned_to_parent"] <= 1 and -1 <= mixing["scoremix / random"]["tar"] <= 1
    # the benchmarks' paired differences beside the configured metrics, in the report and on the MLflow run
    for metric in ("tiny_bin.verification_accuracy", "ijbc.tar_at_far_1e-6", "tinyface.rank1"):
        assert [r["condition"] for r in report["tables"][metric]][1] == "scoremix / random", metric
    from scoremix_ray.runtime.tracking import client

    logged = client(load_config(STUDY, sets)).get_run(report["parent_run_id"]).data.metrics
    assert "diff.scoremix.random.tinyface.rank1" in logged and "diff.plain.verification_accuracy" in logged
    # `report` rebuilds the same markdown from MLflow alone
    md = Path(summary["report"]["markdown"]).read_text()
    r = CliRunner().invoke(app, ["report", "--config", STUDY, *[a for s in sets for a in ("--set", s)]])
    assert r.exit_code == 0, r.output
    assert Path(summary["report"]["markdown"]).read_text() == md and "| diffii | 1 |" in md
    assert "ijbc.tar_at_far_1e-6" in md
    # and the notebook shows the same study
    import nbformat
    from nbclient import NotebookClient

    from scoremix_ray.config import to_yaml

    (out / "tiny-study.yaml").write_text(to_yaml(load_config(STUDY, sets)))
    nb = nbformat.read(Path(STUDY).parents[1] / "notebooks" / "compare_strategies.ipynb", as_version=4)
    os.environ.update(SCOREMIX_OUT=str(out), SCOREMIX_STUDY=str(out / "tiny-study.yaml"))
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(out)}}).execute()
    finally:
        del os.environ["SCOREMIX_OUT"], os.environ["SCOREMIX_STUDY"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not any(o.output_type == "error" for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # sweep plot, sample grids, study plot
    assert any("| scoremix / random | 1 |" in o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert (out / "report.png").is_file()  # the sweep part of the notebook ran on the tiny sweep's runs


def test_dose_study_report(tmp_path):
    """A dose-response study (study.doses) as MLflow leaves it: every condition at each dose, the baseline
    once per cell; the table per (condition, dose), the distant - close contrast at each dose, the plot."""
    from scoremix_ray.config import with_overrides
    from scoremix_ray.report import write_study_report
    from scoremix_ray.runtime import tracking

    base = load_config(
        STUDY,
        [
            f"out_dir={tmp_path}",
            "study.folds=0,1,2",
            "study.seeds=0",
            "study.methods=scoremix,plain",
            "study.strategies=embedding-distant,embedding-close",
            "study.doses=2,6",
            "study.metrics=verification_accuracy",
        ],
    )
    gain = {"embedding-distant": 0.01, "embedding-close": 0.0, "x": -0.01}  # per dose unit
    with tracking.live_run(base, tracking.Tracker(tracking.tracking_uri(base)), tags={"scoremix.kind": "study"}) as p:
        for strategy, g in gain.items():
            method = "plain" if strategy == "x" else "scoremix"
            for dose in (2, 6):
                for fold in (0, 1, 2):
                    d = g * dose + 0.001 * fold
                    sets = [
                        f"name={method}-{strategy}-{dose}-{fold}",
                        f"data.split_seed={fold}",
                        f"generation.method={method}",
                        f"selection.count={dose}",
                    ] + ([f"selection.strategy={strategy}"] if method == "scoremix" else [])
                    metrics = {
                        "baseline": {"verification_accuracy": 0.8},
                        "augmented": {"verification_accuracy": 0.8 + d},
                        "delta": {"verification_accuracy": d},
                        "generator": {"fd": 2.0 + fold, "fd_real": 1.0, "precision": 0.5, "precision_real": 0.9},
                        **({"mixing": {"tar": 0.9, "far": 0.1 * dose}} if method == "scoremix" else {}),
                    }
                    tracking.log_run(with_overrides(base, sets), metrics, parent=p)
    paths = write_study_report(base)
    data = json.loads(paths["json"].read_text())
    rows = {r["condition"]: r for r in data["tables"]["verification_accuracy"]}
    assert list(rows)[1:] == [
        "scoremix / embedding-distant @ 2",
        "scoremix / embedding-distant @ 6",
        "scoremix / embedding-close @ 2",
        "scoremix / embedding-close @ 6",
        "plain @ 2",
        "plain @ 6",
    ]
    assert rows["scoremix / embedding-distant @ 6"]["diff"] == pytest.approx(0.06 + 0.001)
    assert rows["plain @ 2"]["diff"] == pytest.approx(-0.02 + 0.001) and rows["plain @ 2"]["cells"] == 3
    contrasts = {c["contrast"]: c for c in data["contrasts"]}
    at6 = "scoremix / embedding-distant @ 6 - scoremix / embedding-close @ 6"
    assert contrasts[at6]["diff"] == pytest.approx(0.06) and contrasts[at6]["cells"] == 3
    assert "scoremix / embedding-distant @ 2 - scoremix / embedding-close @ 2" in contrasts
    assert paths["dose_response"].stat().st_size > 5000
    md = paths["markdown"].read_text()
    assert "![gain against dose](dose_response.png)" in md
    # the diagnostics: the generator per fold beside its reference, the mixed classes per condition
    gen = {r["fold"]: r for r in data["generator"]}
    assert gen[2]["fd"] == 4.0 and gen[2]["fd_real"] == 1.0 and "| 2 | 4 (1) | 0.5 (0.9) |" in md
    mixing = {r["condition"]: r for r in data["mixing"]}
    assert mixing["scoremix / embedding-close @ 6"]["far"] == pytest.approx(0.6) and "plain @ 2" not in mixing
