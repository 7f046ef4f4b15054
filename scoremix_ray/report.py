"""Compare strategies and methods from MLflow: mean +- std over seeds, a table and a bar plot."""

from __future__ import annotations

import math
from pathlib import Path

from scoremix_ray.config import Config
from scoremix_ray.core.evaluation.diagnostics import readiness
from scoremix_ray.core.evaluation.statistics import holm, paired_interval, paired_p, verdict
from scoremix_ray.core.methods import get_method
from scoremix_ray.foundations.errors import ScoreMixError
from scoremix_ray.foundations.files import new_figure, save_figure
from scoremix_ray.runtime.checks import with_study_defaults
from scoremix_ray.runtime.mlflow_store import experiment_id
from scoremix_ray.runtime.tracking import client, load_runs


def strategy_table(cfg: Config, experiment: str | None = None, metric: str = "augmented.verification_accuracy"):
    """One row per (method, strategy): n runs, mean and std of `metric`, and of the paired delta to the
    baseline where the metric has one (augmented.X -> delta.X)."""
    df = load_runs(cfg, experiment)
    col = f"metrics.{metric}"
    if len(df) == 0 or col not in df:
        raise ScoreMixError(
            f"no finished runs with metric '{metric}' in MLflow experiment "
            f"'{experiment or cfg.tracking.experiment}' ({cfg.tracking.tracking_uri or cfg.out_dir})"
        )
    df = df[df["status"] == "FINISHED"].copy()
    df["method"] = df.get("tags.scoremix.method", "scoremix")
    df["strategy"] = df.get("tags.scoremix.strategy", "?")
    df.loc[df["method"] != "scoremix", "strategy"] = "-"
    delta = col.replace("metrics.augmented.", "metrics.delta.")
    agg = {"runs": (col, "count"), "mean": (col, "mean"), "std": (col, "std")}
    if delta != col and delta in df:
        agg |= {"delta_mean": (delta, "mean"), "delta_std": (delta, "std")}
    base = col.replace("metrics.augmented.", "metrics.baseline.")
    if base != col and base in df:
        agg |= {"baseline_mean": (base, "mean")}
    table = df.groupby(["method", "strategy"], as_index=False).agg(**agg)
    return table.fillna({"std": 0.0}).sort_values("mean", ascending=False, ignore_index=True)


def plot_strategies(table, metric: str, path: str | Path) -> Path:
    labels = [s if m == "scoremix" else m for m, s in zip(table["method"], table["strategy"])]
    fig = new_figure(figsize=(max(4, 0.9 * len(table) + 2), 3.5))
    ax = fig.subplots()
    ax.bar(labels, table["mean"], yerr=table["std"], capsize=4, color="#4c72b0")
    if "baseline_mean" in table:
        ax.axhline(float(table["baseline_mean"].mean()), color="k", ls="--", lw=1, label="baseline (real only)")
        ax.legend(loc="lower right")
    lo = float((table["mean"] - table["std"]).min())
    ax.set_ylim(max(0.0, lo - 0.05), None)
    ax.set_ylabel(metric)
    ax.set_title("mean +- std over seeds")
    for label in ax.get_xticklabels():
        label.set(rotation=30, ha="right")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=120)
    return path


# ---- the study: paired differences to the real-only baseline, per condition -------------------------------

BASELINE = "baseline (real only)"


def study_runs(cfg: Config):
    """(parent run, its child runs as a DataFrame) of the latest study named `cfg.name` in the experiment."""
    mc = client(cfg)
    parents = mc.search_runs(
        [experiment_id(mc, cfg.tracking.experiment)],
        f"tags.`scoremix.kind` = 'study' AND tags.`mlflow.runName` = '{cfg.name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        raise ScoreMixError(
            f"no study named '{cfg.name}' in MLflow experiment '{cfg.tracking.experiment}' "
            f"({cfg.tracking.tracking_uri or cfg.out_dir}); run `scoremix-ray study` first"
        )
    parent = parents[0]
    runs = load_runs(cfg)
    runs = runs[runs["tags.mlflow.parentRunId"] == parent.info.run_id].copy() if len(runs) else runs
    return parent, runs


def condition_of(method: str, strategy: str, dose=None) -> str:
    """ "method / strategy" for methods that make new classes, else the method; " @ <dose>" in a dose study."""
    name = f"{method} / {strategy}" if get_method(method).new_classes else method
    return name if dose is None else f"{name} @ {int(dose)}"


def study_conditions(cfg: Config) -> list[str]:
    """Every condition of the study, in the config's order (the report lists each, run or not)."""
    st = with_study_defaults(cfg).study
    return [
        condition_of(m, s, d)
        for m in st.methods
        for s in (st.strategies if get_method(m).new_classes else [""])
        for d in (st.doses or [None])
    ]


def study_table(cfg: Config, runs, metric: str):
    """One row per condition (the baseline first): cells run and failed, mean +- std of `metric` over
    cells, and the paired difference to the baseline of the same cell with its interval and verdict."""
    import pandas as pd

    st = cfg.study
    aug, delta, base = (f"metrics.{s}.{metric}".replace("@", "_at_") for s in ("augmented", "delta", "baseline"))
    runs = with_conditions(runs, cfg)
    ok = runs[runs["status"] == "FINISHED"]
    cells = ok.drop_duplicates(["params.data.split_seed", "params.seed"])
    b = cells[base].astype(float) if base in cells else pd.Series(dtype=float)
    rows = [
        {
            "condition": BASELINE,
            "cells": len(b),
            "failed": 0,
            "mean": b.mean(),
            "std": b.std(ddof=1),
            "diff": 0.0,
            "low": float("nan"),
            "high": float("nan"),
            "verdict": "reference",
        }
    ]
    for cond in study_conditions(cfg):
        mine = ok[ok["condition"] == cond]
        values = mine[aug].astype(float) if aug in mine else pd.Series(dtype=float)
        diffs = mine[delta].astype(float) if delta in mine else pd.Series(dtype=float)
        mean, low, high = paired_interval(diffs.to_numpy(), st.confidence, st.interval, seed=cfg.seed)
        rows.append(
            {
                "condition": cond,
                "cells": len(values),
                "failed": int((runs["condition"] == cond).sum() - len(mine)),
                "mean": values.mean(),
                "std": values.std(ddof=1),
                "diff": mean,
                "low": low,
                "high": high,
                "verdict": verdict(low, high) if len(diffs) else "not run",
                "p": paired_p(diffs.to_numpy(), st.interval, seed=cfg.seed),
            }
        )
    table = with_holm(pd.DataFrame(rows[1:]), st.confidence)  # family: the conditions, not the reference
    return pd.concat([pd.DataFrame(rows[:1]).assign(p_holm=math.nan, holm="reference"), table], ignore_index=True)


def with_conditions(runs, cfg: Config):
    """The runs with a `condition` column (`condition_of`; the dose is the trial's selection.count)."""
    doses = runs["params.selection.count"] if cfg.study.doses else [None] * len(runs)
    methods, strategies = runs["tags.scoremix.method"], runs["tags.scoremix.strategy"]
    return runs.assign(condition=[condition_of(m, s, d) for m, s, d in zip(methods, strategies, doses)])


def with_holm(table, confidence: float):
    """A table of tests (`diff`, `p`) with Holm's adjusted p over its rows and the verdict it allows
    (family-wise error 1 - confidence)."""

    def verdict(diff: float, p: float) -> str:
        if p != p:
            return "too few cells"
        return ("higher" if diff > 0 else "lower") if p < 1 - confidence else "not detected"

    table = table.assign(p_holm=holm(table["p"].to_numpy()))
    return table.assign(holm=[verdict(d, p) for d, p in zip(table["diff"], table["p_holm"])])


CONTRASTS = [
    ("scoremix / embedding-distant", "scoremix / embedding-close"),  # the paper's headline ablation
    ("scoremix / embedding-distant", "scoremix / random"),
    ("scoremix / condition-distant", "scoremix / condition-close"),
]


def study_contrasts(cfg: Config) -> list[tuple[str, str]]:
    """CONTRASTS, at every dose of a dose study."""
    doses = cfg.study.doses or [None]
    return [
        tuple(f"{c} @ {d}" if d is not None else c for c in pair)  # type: ignore[misc]
        for d in doses
        for pair in CONTRASTS
    ]


def contrast_table(cfg: Config, runs, metric: str, contrasts=CONTRASTS):
    """Condition A minus condition B, paired by cell (both ran on the same split, generator and baseline):
    mean, interval, p and verdict of each contrast whose two conditions ran, Holm-adjusted over them."""
    import pandas as pd

    st = cfg.study
    aug = f"metrics.augmented.{metric}".replace("@", "_at_")
    ok = with_conditions(runs[runs["status"] == "FINISHED"], cfg)
    ok = ok.assign(cell=list(zip(ok["params.data.split_seed"], ok["params.seed"])))
    if aug not in ok:
        return pd.DataFrame(columns=["contrast", "cells", "diff", "low", "high", "verdict", "p", "p_holm", "holm"])
    by = ok.set_index(["condition", "cell"])[aug].astype(float)
    rows = []
    for a, b in contrasts:
        if a not in by.index.get_level_values(0) or b not in by.index.get_level_values(0):
            continue
        d = (by.loc[a] - by.loc[b]).dropna().to_numpy()  # cells where both finished
        mean, low, high = paired_interval(d, st.confidence, st.interval, seed=cfg.seed)
        rows.append(
            {
                "contrast": f"{a} - {b}",
                "cells": len(d),
                "diff": mean,
                "low": low,
                "high": high,
                "verdict": verdict(low, high),
                "p": paired_p(d, st.interval, seed=cfg.seed),
            }
        )
    return with_holm(
        pd.DataFrame(rows, columns=["contrast", "cells", "diff", "low", "high", "verdict", "p"]), st.confidence
    )


ALIGNMENT_KEYS = ["cka_linear", "cka_linear_biased", "cknna", "mutual_knn", "distance_spearman"]


def alignment_by_fold(runs):
    """Condition-space vs embedding-space alignment per fold (mean over the fold's seeds), beside the
    permutation null; every trial of a cell logs the same alignment, so one row per cell is kept."""
    return by_fold(runs, "alignment", [f"{k}{n}" for k in ALIGNMENT_KEYS for n in ("", "_null", "_p")])


# the generator's checks, each beside its real-image reference (`evaluation.diagnostics`)
GENERATOR_KEYS = ["class_accuracy", "identity_accuracy", "fd", "precision", "recall"]
MIXING_KEYS = ["cos_to_parent", "cos_between_parents", "assigned_to_parent", "tar", "far"]


def generator_by_fold(runs):
    """The generator's checks per fold (mean over the fold's seeds), with their references; one row per cell."""
    return by_fold(runs, "generator", [f"{k}{n}" for k in GENERATOR_KEYS for n in ("", "_real")])


def by_fold(runs, section: str, keys: list[str]):
    """`metrics.<section>.<key>` per fold, mean over the fold's seeds; a number every trial of a cell logs
    alike (it depends on the cell's generator and baseline), so one row per cell is kept."""
    ok = runs[runs["status"] == "FINISHED"].drop_duplicates(["params.data.split_seed", "params.seed"])
    cols = {f"metrics.{section}.{k}": k for k in keys if f"metrics.{section}.{k}" in ok}
    table = ok.assign(fold=ok["params.data.split_seed"].astype(int)).groupby("fold")[list(cols)].mean()
    return table.rename(columns=cols).reset_index()


def mixing_by_condition(cfg: Config, runs):
    """The mixed-class checks per condition that makes new classes: mean over its cells."""
    ok = with_conditions(runs[runs["status"] == "FINISHED"], cfg)
    cols = {f"metrics.mixing.{k}": k for k in MIXING_KEYS if f"metrics.mixing.{k}" in ok}
    if not cols:
        return ok.iloc[:0]
    table = ok.dropna(subset=list(cols)).groupby("condition")[list(cols)].mean()
    table = table.loc[[c for c in study_conditions(cfg) if c in table.index]]  # the config's order
    return table.rename(columns=cols).reset_index()


def _fmt(v: float, sign: bool = False) -> str:
    return "–" if v != v else (f"{v:+.3f}" if sign else f"{v:.3f}")


def study_markdown(
    cfg: Config, parent, tables: dict, alignment, plot_name: str, contrasts=(), generator=(), mixing=()
) -> str:
    """The study as markdown: how it ran, the primary metric's table, the other metrics' differences, the
    alignment per fold; every condition of the config appears."""
    st, tags = cfg.study, parent.data.tags
    first = st.metrics[0]
    pct = f"{st.confidence:.0%}"
    wall = int(tags.get("scoremix.wall_time_s", "0"))
    lines = [
        f"Study `{cfg.name}` (config sha {tags.get('scoremix.config_sha', '?')}): folds (data.split_seed) "
        f"{', '.join(map(str, st.folds))} x seeds {', '.join(map(str, st.seeds))} = "
        f"{len(st.folds) * len(st.seeds)} cells; {tags.get('scoremix.trials', '?')} trials. "
        f"Wall time {wall // 3600} h {wall % 3600 // 60} min {wall % 60} s on {tags.get('scoremix.machine', '?')}.",
        "",
        f"`{first}` of the recognizer on unseen classes: mean +- std over cells; difference to the real-only "
        f"baseline of the same cell with its {pct} interval ({st.interval}) and raw verdict; beside it the p-value "
        f"adjusted by Holm over the {len(tables[first]) - 1} conditions and the verdict it allows (family-wise "
        f"error {1 - st.confidence:.0%}).",
        "",
        f"| condition | cells | {first} | difference [{pct} CI] | verdict | p (Holm) | Holm verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in tables[first].itertuples():
        ci = "" if r.low != r.low else f" [{_fmt(r.low, True)}, {_fmt(r.high, True)}]"
        failed = f" ({r.failed} failed)" if r.failed else ""
        diff = "" if r.condition == BASELINE else f"{_fmt(r.diff, True)}{ci}"
        lines.append(
            f"| {r.condition} | {r.cells}{failed} | {_fmt(r.mean)} +- {_fmt(r.std)} | {diff} | {r.verdict} "
            f"| {_fmt(r.p_holm)} | {r.holm} |"
        )
    if len(contrasts):
        lines += [
            "",
            f"Contrasts between conditions, paired by cell (`{first}`, A - B, {pct} CI; p adjusted by "
            f"Holm over the contrasts):",
            "",
            "| A - B | cells | difference [CI] | verdict | p (Holm) | Holm verdict |",
            "|---|---|---|---|---|---|",
        ]
        for r in contrasts.itertuples():
            lines.append(
                f"| {r.contrast} | {r.cells} | {_fmt(r.diff, True)} [{_fmt(r.low, True)}, {_fmt(r.high, True)}] "
                f"| {r.verdict} | {_fmt(r.p_holm)} | {r.holm} |"
            )
    others = [m for m in tables if m != first]  # the configured metrics, then the benchmarks' headline numbers
    if others:
        lines += [
            "",
            f"Differences in the other metrics ({pct} CI; * = the interval excludes 0):",
            "",
            "| condition | " + " | ".join(others) + " |",
            "|---" * (len(others) + 1) + "|",
        ]
        for i, cond in enumerate(tables[first]["condition"]):
            if cond == BASELINE:
                lines.append(f"| {BASELINE} | " + " | ".join(_fmt(tables[m]["mean"][0]) for m in others) + " |")
                continue
            cells = []
            for m in others:
                r = tables[m].iloc[i]
                star = "*" if r["verdict"] in ("higher than baseline", "lower than baseline") else ""
                cells.append(f"{_fmt(r['diff'], True)}{star} [{_fmt(r['low'], True)}, {_fmt(r['high'], True)}]")
            lines.append(f"| {cond} | " + " | ".join(cells) + " |")
    if len(alignment):
        keys = [k for k in ALIGNMENT_KEYS if k in alignment]
        lines += [
            "",
            "Alignment of the generator's condition space with the baseline recognizer's class centres, per "
            "fold (mean over seeds; in brackets the permutation null and the permutation p-value):",
            "",
            "| fold | " + " | ".join(keys) + " |",
            "|---" * (len(keys) + 1) + "|",
        ]
        for _, r in alignment.iterrows():
            lines.append(
                f"| {int(r['fold'])} | "
                + " | ".join(
                    f"{r[k]:+.3f} ({r[k + '_null']:+.3f}" + (f", p {r[k + '_p']:.2f})" if k + "_p" in r else ")")
                    for k in keys
                )
                + " |"
            )
    lines += diagnostics_markdown(generator, mixing)
    lines += ["", f"![differences to the baseline]({plot_name})", ""]
    return "\n".join(lines)


def diagnostics_markdown(generator, mixing) -> list[str]:
    """The generator's checks per fold beside their real references, and the mixed classes' per condition."""
    lines = []
    if len(generator):
        keys = [k for k in GENERATOR_KEYS if k in generator and k + "_real" in generator]
        judged = all(k in keys for k in ("precision", "recall", "identity_accuracy"))
        lines += _md_table(
            "The generator beside real images (per fold, mean over seeds; in brackets the same measure on held-out "
            "real images: the ceiling for accuracies, the floor for FD): pixel-classifier class accuracy, the "
            "baseline recognizer's nearest-centre identity accuracy, and FD / precision / recall in its embedding "
            "space; the verdict by `evaluation.diagnostics.readiness` (precision and recall both at least 0.7 of "
            "their references: ready; 0.4: marginal; below: not ready, mixed classes likely noise):",
            "fold",
            keys + (["verdict"] if judged else []),
            [
                f"| {int(r['fold'])} | "
                + " | ".join(f"{r[k]:.3g} ({r[k + '_real']:.3g})" for k in keys)
                + (f" | {readiness(r)}" if judged else "")
                + " |"
                for _, r in generator.iterrows()
            ],
        )
    if len(mixing):
        keys = [k for k in MIXING_KEYS if k in mixing]
        lines += _md_table(
            "Mixed classes as the baseline sees them (mean over cells): cosine of a mixed class's centre to its "
            "parents' and of the parents to each other; share of mixed samples taken for a parent; at the "
            "baseline's threshold, pairs within a mixed class accepted (TAR) and across mixed classes (FAR):",
            "condition",
            keys,
            [f"| {r['condition']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |" for _, r in mixing.iterrows()],
        )
    return lines


def _md_table(intro: str, first: str, keys: list[str], rows: list[str]) -> list[str]:
    """A paragraph, then a markdown table whose first column is `first` and the others `keys`."""
    return ["", intro, "", f"| {first} | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|", *rows]


def plot_differences(tables: dict, confidence: float, path: str | Path) -> Path:
    """One panel per metric: each condition's mean paired difference to the baseline with its interval."""
    metrics = list(tables)
    first = tables[metrics[0]]
    conds = [c for c in first["condition"] if c != BASELINE]
    fig = new_figure(figsize=(3.2 * len(metrics) + 1.5, 0.38 * len(conds) + 1.4))
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)
    y = list(range(len(conds)))[::-1]
    for ax, m in zip(axes[0], metrics):
        t = tables[m].set_index("condition").loc[conds]
        err = [(t["diff"] - t["low"]).fillna(0).to_numpy(), (t["high"] - t["diff"]).fillna(0).to_numpy()]
        colors = [
            "#c44e52" if v == "lower than baseline" else "#55a868" if v == "higher than baseline" else "#4c72b0"
            for v in t["verdict"]
        ]
        ax.errorbar(t["diff"], y, xerr=err, fmt="none", ecolor="0.4", capsize=3)
        ax.scatter(t["diff"], y, c=colors, zorder=3)
        ax.axvline(0, color="k", lw=1, ls="--")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("condition - baseline")
    axes[0][0].set_yticks(y, conds)
    fig.suptitle(f"paired difference to the real-only baseline, {confidence:.0%} CI", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=120)
    return path


PLOTTED_BENCHMARK_NUMBERS = ("bins.verification_accuracy", ".tar_at_far_1e-4", ".rank1")


def plot_dose_response(table, metric: str, per_tuple: int, confidence: float, path: str | Path) -> Path:
    """Gain (difference to the baseline, with its interval) against the dose, one line per condition: the
    rows of a dose study's table ("<condition> @ <dose>")."""
    rows = table[table["condition"].str.contains(" @ ")]
    rows = rows.assign(base=rows["condition"].str.split(" @ ").str[0], dose=rows["condition"].str.split(" @ ").str[1])
    fig = new_figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for i, (base, r) in enumerate(rows.groupby("base", sort=False)):
        x = r["dose"].astype(int).to_numpy() * (1 + 0.015 * (i - 1.5))  # side by side at one dose
        y = r["diff"].to_numpy(float)
        err = [y - r["low"].to_numpy(float), r["high"].to_numpy(float) - y]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=base)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    doses = sorted(rows["dose"].astype(int).unique())
    ax.set_xticks(doses, [str(d) for d in doses])
    ax.minorticks_off()
    ax.set_xlabel(f"synthetic classes added (x {per_tuple} images; plain: the same number of images)")
    ax.set_ylabel(f"{metric} - baseline ({confidence:.0%} CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return Path(path)


def benchmark_metrics(cfg: Config, runs) -> list[str]:
    """The benchmarks' headline numbers the trials logged ("lfw.verification_accuracy", "ijbc.tar_at_far_1e-6",
    ...: `evaluation.benchmarks`), beyond the study's configured metrics."""
    prefix = "metrics.delta."
    found = [c.removeprefix(prefix) for c in runs.columns if c.startswith(prefix) and "." in c.removeprefix(prefix)]
    return [m for m in sorted(found) if m not in cfg.study.metrics]


def write_study_report(cfg: Config) -> dict[str, Path]:
    """`<out>/<name>/report.md`, `differences.png` and `study.json` for the latest study named `cfg.name`."""
    cfg = with_study_defaults(cfg)
    import json

    parent, runs = study_runs(cfg)
    if len(runs) == 0:
        raise ScoreMixError(f"study '{cfg.name}' (MLflow run {parent.info.run_id}) has no trial runs yet")
    tables = {m: study_table(cfg, runs, m) for m in [*cfg.study.metrics, *benchmark_metrics(cfg, runs)]}
    alignment = alignment_by_fold(runs)
    contrasts = contrast_table(cfg, runs, cfg.study.metrics[0], study_contrasts(cfg))
    d = cfg.run_dir
    d.mkdir(parents=True, exist_ok=True)
    # the picture: the configured metrics and one number a benchmark kind (the table has them all)
    shown = [m for m in tables if m in cfg.study.metrics or m.endswith(PLOTTED_BENCHMARK_NUMBERS)]
    plot = plot_differences({m: tables[m] for m in shown}, cfg.study.confidence, d / "differences.png")
    md = d / "report.md"
    dose = None
    if cfg.study.doses:
        first = cfg.study.metrics[0]
        dose = plot_dose_response(
            tables[first], first, cfg.generation.per_tuple, cfg.study.confidence, d / "dose_response.png"
        )
    generator, mixing = generator_by_fold(runs), mixing_by_condition(cfg, runs)
    text = study_markdown(cfg, parent, tables, alignment, plot.name, contrasts, generator, mixing)
    md.write_text(text + (f"\n![gain against dose]({dose.name})\n" if dose else ""))
    data = {
        "parent_run_id": parent.info.run_id,
        "tags": dict(parent.data.tags),
        "tables": {m: t.to_dict(orient="records") for m, t in tables.items()},
        "alignment": alignment.to_dict(orient="records"),
        "contrasts": contrasts.to_dict(orient="records"),
        "generator": generator.to_dict(orient="records"),
        "mixing": mixing.to_dict(orient="records"),
    }
    js = d / "study.json"
    js.write_text(json.dumps(data, indent=2, default=float))
    return {"markdown": md, "plot": plot, "json": js, **({"dose_response": dose} if dose else {})}
