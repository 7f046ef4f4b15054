"""Compare strategies and methods from MLflow: mean +- std over seeds, a table and a bar plot."""

from __future__ import annotations

from pathlib import Path

from scoremix_ray.config import Config
from scoremix_ray.errors import ScoreMixError


def strategy_table(cfg: Config, experiment: str | None = None, metric: str = "augmented.verification_accuracy"):
    """One row per (method, strategy): n runs, mean and std of `metric`, and of the paired delta to the
    baseline where the metric has one (augmented.X -> delta.X)."""
    from scoremix_ray.tracking import load_runs

    df = load_runs(cfg, experiment)
    col = f"metrics.{metric}"
    if len(df) == 0 or col not in df:
        raise ScoreMixError(f"no finished runs with metric '{metric}' in MLflow experiment "
                            f"'{experiment or cfg.tracking.experiment}' ({cfg.tracking.tracking_uri or cfg.out_dir})")  # fmt: skip
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [s if m == "scoremix" else m for m, s in zip(table["method"], table["strategy"])]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(table) + 2), 3.5))
    ax.bar(labels, table["mean"], yerr=table["std"], capsize=4, color="#4c72b0")
    if "baseline_mean" in table:
        ax.axhline(float(table["baseline_mean"].mean()), color="k", ls="--", lw=1, label="baseline (real only)")
        ax.legend(loc="lower right")
    lo = float((table["mean"] - table["std"]).min())
    ax.set_ylim(max(0.0, lo - 0.05), None)
    ax.set_ylabel(metric)
    ax.set_title("mean +- std over seeds")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
