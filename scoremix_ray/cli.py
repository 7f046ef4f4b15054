"""`scoremix-ray` command line. Every command takes `--config FILE` and repeated `--set a.b=value`.

The only module whose internal imports sit inside functions: each command imports its work when it runs, so
`--help`, `config show` and a bad flag answer at once instead of after torch, diffusers and Ray load (~4 s).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated

import typer

from scoremix_ray.config import Config, convex, load_config, to_yaml
from scoremix_ray.foundations.errors import ScoreMixError, first_line
from scoremix_ray.foundations.interrupts import STOP_REQUESTED, sigterm_interrupts
from scoremix_ray.foundations.progress import LOG_FORMAT, log_setup

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="ScoreMix on Ray: mixed-class diffusion augmentation for recognition datasets.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the resolved configuration.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect the data and its split.")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override: a.b=value (repeatable).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Output folder (config key out_dir).")]
UriOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (default: SQLite in --out).")]


def _cfg(
    config: Path | None,
    sets: list[str] | None,
    out: Path | None = None,
    uri: str | None = None,
    check: bool = True,
    inputs: bool = True,
) -> Config:
    """The config, checked against the registries (`checks.check_config`) unless it is a sweep's base, whose
    trials (other strategies and methods) are each checked instead; then what the command will read and write
    (`checks.check_inputs`), before any work. From here the command's log also goes to `<out_dir>/logs/`."""
    overrides = list(sets or [])
    if out is not None:
        overrides.append(f"out_dir={out}")
    if uri is not None:
        overrides.append(f"tracking.tracking_uri={uri}")
    from scoremix_ray.runtime.checks import check_config, check_inputs, with_study_defaults  # start-up: torch

    cfg = load_config(config, overrides)
    cfg = check_config(cfg) if check else with_study_defaults(cfg)
    if inputs:
        check_inputs(cfg)
        _log_to(Path(cfg.out_dir) / "logs")
    return cfg


def _log_to(folder: Path) -> None:
    """This command's log file in `folder` (its lines and, on an error, the traceback), beside the console."""
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "scoremix-ray")
    command = re.sub(r"[^A-Za-z0-9_-]", "_", command)[:40]  # a name, not a path (argv may hold anything)
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{command}-{os.getpid()}.log")
    handler.setFormatter(logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S"))
    logging.getLogger().addHandler(handler)


def _log_file() -> Path | None:
    """The log file `_log_to` opened, read back from the logging set-up rather than kept in a global."""
    files = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return Path(files[-1]) if files else None


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config as YAML."""
    typer.echo(to_yaml(_cfg(config, set_, inputs=False)), nl=False)


@data_app.command("inspect")
def data_inspect(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None) -> None:
    """Print counts per split and write a grid PNG of samples per class."""
    import numpy as np

    from scoremix_ray.pipeline import data_stage  # lazy: start-up

    split, d = data_stage(_cfg(config, set_, out))
    s = split.summary()
    typer.echo(f"protocol: {s['protocol']}")
    typer.echo(
        f"train: {s['train_images']} images in {s['train_classes']} classes; images {s['image_shape']} (H, W, C)"
    )
    counts = split.train.counts()
    for name, n in list(zip(split.train.class_names, counts))[:20]:
        typer.echo(f"  class {name}: {n}")
    if len(counts) > 20:  # a face dataset has 10,000 identities: the spread, not a line each
        typer.echo(
            f"  ... {len(counts) - 20} more; images per class min {counts.min()}, median "
            f"{int(np.median(counts))}, max {counts.max()}"
        )
    typer.echo(
        f"test: {s['test_images']} images in {s['test_classes']} classes; "
        f"{s['pairs']} verification pairs ({s['same_pairs']} same)"
    )
    typer.echo(f"grid: {d / 'train_grid.png'}")


@app.command()
def run(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None, tracking_uri: UriOpt = None) -> None:
    """Run the whole experiment for one strategy: data, generator, baseline recognizer (all three cached),
    select, generate, augmented recognizer, evaluate; prints baseline vs augmented and logs to MLflow."""
    from scoremix_ray import jobs  # lazy: start-up
    from scoremix_ray.core.evaluation.diagnostics import readiness_line  # lazy: start-up
    from scoremix_ray.runtime import tracking  # lazy: start-up

    cfg = _cfg(config, set_, out, tracking_uri)
    result, metrics, run_id, seconds = jobs.experiment(cfg)
    typer.echo(
        metrics_table({"baseline": metrics["baseline"], "augmented": metrics["augmented"], "delta": metrics["delta"]})
    )
    typer.echo(delta_noise(metrics["baseline"], metrics["augmented"]))
    a = metrics["alignment"]
    typer.echo(
        f"alignment (condition vs embedding space): CKA linear {a['cka_linear']:.3f} (null "
        f"{a['cka_linear_null']:.3f}), mutual kNN {a['mutual_knn']:.3f} (null {a['mutual_knn_null']:.3f})"
    )
    if "precision" in metrics["generator"]:
        typer.echo(readiness_line(metrics["generator"]))
    typer.echo(f"samples: {result['generate']['grid']}")
    typer.echo(f"mlflow: {tracking.ui_hint(cfg, run_id)}")
    typer.echo(f"done in {seconds:.0f} s; run folder: {cfg.run_dir} (metrics.json, pairs.parquet)")


@app.command()
def preflight(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None, tracking_uri: UriOpt = None) -> None:
    """Before a long job on a cluster (submit it as the job would run): every node sees out_dir and the tracking
    server, runs the driver's Python, torch, Ray and scoremix-ray, under token auth. One line per failure."""
    from scoremix_ray import jobs  # lazy: start-up

    cfg = _cfg(config, set_, out, tracking_uri)
    failures = jobs.check_cluster(cfg)
    for line in failures:
        typer.echo(f"preflight: {line}", err=True)
    if failures:
        raise typer.Exit(1)
    store = cfg.tracking.tracking_uri or "SQLite in out_dir"
    typer.echo(f"preflight: every node is ready (out_dir {Path(cfg.out_dir).resolve()}, tracking {store})")


def _list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@app.command()
def sweep(
    strategies: Annotated[
        str | None, typer.Option("--strategies", help="Comma-separated selection strategies.")
    ] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")] = "0",
    methods: Annotated[
        str | None, typer.Option("--methods", help="Comma-separated methods (default: generation.method).")
    ] = None,
    grid: Annotated[
        list[str] | None, typer.Option("--grid", help="Extra axis key=v1,v2 (';' between tuple values).")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Sweep name (MLflow parent run, Tune folder).")] = "sweep",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    tracking_uri: UriOpt = None,
) -> None:
    """Ray Tune sweep over strategies x methods x seeds (x --grid axes); one MLflow child run per trial."""
    from scoremix_ray.runtime import tracking  # lazy: start-up
    from tuning.sweep import parse_grid, run_sweep  # lazy: start-up

    cfg = _cfg(config, set_, out, tracking_uri, check=False)
    try:
        seed_list = [int(s) for s in _list(seeds)]
    except ValueError:
        raise ScoreMixError(f"--seeds must be comma-separated integers, got '{seeds}'") from None
    summary = run_sweep(
        cfg,
        _list(strategies) or [cfg.selection.strategy],
        seed_list,
        _list(methods) or None,
        parse_grid(grid or []),
        name,
    )
    _trials_summary(summary)
    typer.echo(f"mlflow: {tracking.ui_hint(cfg, summary['parent_run_id'], runs_of_experiment=True)}")
    typer.echo(f"compare: scoremix-ray report --out {cfg.out_dir}")
    _exit_if_failed(summary)


def _trials_summary(summary: dict) -> None:
    """One line for the sweep (naming the failed trials), then each failure's last error line."""
    trials = summary["trials"]
    failed = [t for t in trials if t["error"]]
    earlier = sum(bool(t.get("earlier")) for t in trials)
    names = f" ({', '.join(t['name'] for t in failed)})" if failed else ""
    typer.echo(
        f"{len(trials)} trials, {len(failed)} failed{names}"
        f"{f', {earlier} finished in an earlier attempt' if earlier else ''}; MLflow parent run "
        f"{summary['parent_run_id']} in {summary['tracking_uri']}"
    )
    for t in failed:
        typer.echo(f"failed: {t['name']}: {t['error'].strip().splitlines()[-1][:300]}")


def _exit_if_failed(summary: dict) -> None:
    if any(t["error"] for t in summary["trials"]):
        typer.echo("rerun the same command to run the failed and unfinished trials again", err=True)
        raise typer.Exit(1)


@app.command()
def study(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None, tracking_uri: UriOpt = None) -> None:
    """The study of a config's `study` section: every method x strategy on every fold x seed as one Ray Tune
    sweep (stages cached per fold and seed), logged to MLflow; writes and prints the report with paired
    differences to the real-only baseline and their confidence intervals."""
    from scoremix_ray.runtime import tracking  # lazy: start-up
    from tuning.study import run_study  # lazy: start-up

    cfg = _cfg(config, set_, out, tracking_uri)
    summary = run_study(cfg)
    typer.echo(Path(summary["report"]["markdown"]).read_text())
    typer.echo(f"study: {summary['wall_time_s']:.0f} s")
    _trials_summary(summary)
    typer.echo(f"mlflow: {tracking.ui_hint(cfg, summary['parent_run_id'], runs_of_experiment=True)}")
    typer.echo(f"report: {summary['report']['markdown']} (plot {summary['report']['plot']})")
    _exit_if_failed(summary)


@app.command()
def report(
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="MLflow experiment (tracking.experiment).")
    ] = None,
    metric: Annotated[str, typer.Option("--metric", help="Metric to compare.")] = "augmented.verification_accuracy",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    tracking_uri: UriOpt = None,
) -> None:
    """Strategies (and methods) from MLflow: mean +- std over seeds as a table and a bar plot PNG. With a
    study config (a `study` section): the study's markdown table, interval plot and alignment per fold."""
    from scoremix_ray.report import plot_strategies, strategy_table, write_study_report  # lazy: start-up

    cfg = _cfg(config, set_, out, tracking_uri)
    if cfg.study is not None:
        paths = write_study_report(cfg)
        typer.echo(paths["markdown"].read_text())
        typer.echo(f"report: {paths['markdown']}; plot: {paths['plot']}; data: {paths['json']}")
        return
    table = strategy_table(cfg, experiment, metric)
    typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    typer.echo(f"plot: {plot_strategies(table, metric, Path(cfg.out_dir) / 'report.png')}")


@app.command("train-generator")
def train_generator_cmd(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None) -> None:
    """Train (or resume) the class-conditional EDM generator with Ray Train; prints sample quality."""
    from scoremix_ray import jobs  # lazy: start-up

    d, q = jobs.train_generator(_cfg(config, set_, out))
    typer.echo(f"generator: {d / 'final'}")
    typer.echo(
        f"class accuracy of samples (pixel classifier): {q['class_accuracy']:.3f}, of held-out real images "
        f"{q['class_accuracy_real']:.3f}; grid: {q.get('grid', d / 'samples.png')}"
    )


def delta_noise(baseline: dict, augmented: dict) -> str:
    """What one run's delta can say: its interval over the verification folds (paired: the same pairs), which
    counts only the draw of pairs; retraining with other seeds moves it more, which only a study measures."""
    from scoremix_ray.core.evaluation.statistics import paired_interval  # lazy: start-up

    b, a = baseline.get("verification_accuracy_folds"), augmented.get("verification_accuracy_folds")
    folds = ""
    if b and a and len(a) == len(b):
        mean, low, high = paired_interval([y - x for x, y in zip(b, a)])
        folds = f"over its {len(b)} folds of pairs the accuracy delta is {mean:+.4f} [{low:+.4f}, {high:+.4f}] (95%), "
    return (
        f"note: one run's delta is not a verdict: {folds}which counts only the draw of pairs; other seeds "
        f"(generator, initialisation, sampling) move it more. Intervals over folds x seeds: scoremix-ray study"
    )


def metrics_table(columns: dict[str, dict]) -> str:
    """Rows = metric names, one column per recognizer (or evaluation set); '-' where not measured."""
    from scoremix_ray.core.evaluation.benchmarks import numbers  # lazy: start-up
    from scoremix_ray.pipeline import DELTA_KEYS  # the metrics a recognizer has, and the spread of its accuracy

    names = list(columns)
    columns = {n: {**c, **numbers(c)} for n, c in columns.items()}  # the benchmarks' headline numbers as rows
    bench = list(dict.fromkeys(k for c in columns.values() for k in c if "." in k))  # "<benchmark>.<metric>"
    lines = [f"{'metric':<32}" + "".join(f"{n:>14}" for n in names)]
    for key in [DELTA_KEYS[0], "verification_accuracy_std", *DELTA_KEYS[1:], *bench]:
        if not any(key in c for c in columns.values()):
            continue
        cells = [columns[n].get(key) for n in names]
        lines.append(f"{key:<32}" + "".join(f"{'-' if v is None else f'{v:.4f}':>14}" for v in cells))
    notes = sorted({note for c in columns.values() for note in c.get("notes", [])})
    return "\n".join(lines + [f"note: {n}" for n in notes])


@app.command("train-recognizer")
def train_recognizer_cmd(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None) -> None:
    """Train (or resume) the baseline recognizer on the real training split with Ray Train; evaluate it."""
    from scoremix_ray import jobs  # lazy: start-up

    d, metrics = jobs.train_recognizer(_cfg(config, set_, out))
    typer.echo(metrics_table({"recognizer": metrics}))
    typer.echo(f"recognizer: {d / 'final'}; metrics: {d / 'metrics.json'}")


@app.command()
def evaluate(
    recognizer: Annotated[Path, typer.Option("--recognizer", help="Recognizer folder (a stage folder or its final/).")],
    bin_: Annotated[
        list[Path] | None, typer.Option("--bin", help="InsightFace verification .bin file (repeatable).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
) -> None:
    """Evaluate a trained recognizer on the config's verification pairs and its benchmarks
    (evaluation.benchmarks, plus each --bin); writes metrics.json next to the model."""
    from scoremix_ray import jobs  # lazy: start-up

    sets = list(set_ or []) + [f"evaluation.benchmarks={jobs.with_bins(config, set_, bin_)}"] if bin_ else set_
    cols, path = jobs.evaluate(_cfg(config, sets, out), recognizer)
    typer.echo(metrics_table(cols))
    typer.echo(f"metrics: {path}")


@app.command()
def export(
    recognizer: Annotated[Path, typer.Option("--recognizer", help="Recognizer folder (a stage folder or its final/).")],
    to: Annotated[Path, typer.Option("--to", help="Folder to write backbone.pth, model.onnx, export.json into.")],
) -> None:
    """Write a trained recognizer for insightface's tools: backbone.pth (insightface's parameter names, loads
    into arcface_torch's IResNet with strict=True when the architecture is one of its) and model.onnx (input
    N x 3 x 112 x 112 RGB, (x - 127.5) / 127.5, dynamic batch), checked against onnxruntime."""
    from scoremix_ray.core.recognition.insightface import export as export_model  # lazy: start-up
    from scoremix_ray.jobs import model_folder  # lazy: start-up

    info = export_model(model_folder(recognizer), to)
    arch = info["arcface_torch"] or "not an arcface_torch IResNet: insightface's names, its classes cannot build it"
    typer.echo(f"backbone: {to / info['backbone']} ({arch})")
    diff = info["onnx_max_abs_diff"]
    typer.echo(
        f"onnx: {to / info['onnx']} (input {info['input']['shape']}; onnxruntime - torch: "
        + ("not checked, onnxruntime is not installed)" if diff is None else f"{diff:.1e})")
    )


@app.command("select")
def select_cmd(
    strategy: Annotated[
        str | None, typer.Option("--strategy", help="Selection strategy (config selection.strategy).")
    ] = None,
    count: Annotated[int | None, typer.Option("--count", help="Number of tuples (config selection.count).")] = None,
    top: Annotated[int, typer.Option("--top", help="Rows to print.")] = 10,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
) -> None:
    """Rank class tuples with a strategy (stages 1-3 are computed or reused); writes pairs.parquet."""
    from scoremix_ray import jobs  # lazy: start-up

    sets = (
        list(set_ or [])
        + ([f"selection.strategy={strategy}"] if strategy else [])
        + ([f"selection.count={count}"] if count else [])
    )
    sel, path, names = jobs.select(_cfg(config, sets, out))
    typer.echo(f"{'rank':>4}  {'classes':<16}{'score':>10}{'emb dist':>10}{'cond dist':>10}")
    for r in range(min(top, len(sel.tuples))):
        cls = ",".join(names[c] for c in sel.tuples[r])
        typer.echo(
            f"{r:>4}  {cls:<16}{sel.scores[r]:>10.4f}{sel.embedding_distance[r]:>10.4f}"
            f"{sel.condition_distance[r]:>10.4f}"
        )
    typer.echo(f"pairs: {path} ({len(sel.tuples)} tuples, strategy {sel.strategy})")


@app.command()
def generate(
    pairs: Annotated[
        Path | None, typer.Option("--pairs", help="pairs.parquet from `select` (default: select now).")
    ] = None,
    per_tuple: Annotated[
        int | None, typer.Option("--per-tuple", help="Images per tuple (generation.per_tuple).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
) -> None:
    """Render the synthetic classes with the Ray Data actor pool into Parquet shards (resumes if interrupted)."""
    from scoremix_ray import jobs  # lazy: start-up

    cfg = _cfg(config, list(set_ or []) + ([f"generation.per_tuple={per_tuple}"] if per_tuple else []), out)
    d = jobs.generate(cfg, pairs)
    info = json.loads((d / "generation.json").read_text()) if (d / "generation.json").is_file() else {}
    typer.echo(f"synthetic: {d / 'shards'} ({info.get('rows_written', '?')} images, manifest {d / 'manifest.json'})")
    typer.echo(f"grid: {d / 'samples.png'}")


@app.command()
def align(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None) -> None:
    """Alignment of the generator's condition space with the recognizer's class centres, beside each
    metric's permutation null; written to metrics.json under "alignment"."""
    from scoremix_ray import jobs  # lazy: start-up

    a, path = jobs.align(_cfg(config, set_, out))
    typer.echo(
        f"{'metric':<20}{'value':>10}{'null':>10}   ({a['classes']} classes, k={a['topk']}, "
        f"null = mean of {a['permutations']} shuffled class orders)"
    )
    for key in ("cka_linear", "cka_linear_biased", "cka_rbf", "mutual_knn", "cknna", "distance_spearman"):
        typer.echo(f"{key:<20}{a[key]:>10.4f}{a[key + '_null']:>10.4f}")
    typer.echo(f"metrics: {path}")


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise ScoreMixError(f"{what} must be comma-separated numbers, got '{text}'") from None


@app.command()
def sample(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    classes: Annotated[str | None, typer.Option(help="Training classes to sample, by name: 0,1,5")] = None,
    mix: Annotated[str | None, typer.Option(help="Classes to mix, by name: 1,5 (or three for a triplet)")] = None,
    weights: Annotated[str | None, typer.Option(help="Mixing weights, convex: 0.5,0.5")] = None,
    per_class: Annotated[int, typer.Option("--per-class", help="Images per row")] = 8,
    sweep_weights: Annotated[
        bool, typer.Option("--sweep-weights", help="Rows of weights 0, .2, .5, .8, 1 for a pair")
    ] = False,
    png: Annotated[Path | None, typer.Option(help="Where to write the grid PNG")] = None,
) -> None:
    """Write a PNG grid: plain class-conditional rows (--classes) or ScoreMix rows (--mix)."""
    from scoremix_ray import jobs  # lazy: start-up

    cfg = _cfg(config, set_, out)
    given_w = _floats(weights, "--weights") if weights else None
    if given_w is not None and not convex(given_w):  # reject before any work is done
        raise ScoreMixError(f"--weights must be non-negative and sum to 1, got {given_w}")
    rows, path = jobs.sample(cfg, classes, mix, given_w, per_class, sweep_weights, png)
    for row in rows:
        typer.echo(f"row: {row}")
    typer.echo(f"grid: {path}")


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="On an error, print its traceback here too (it always goes to the log).")
    ] = False,
) -> None:
    """`--debug` is read by `main` wherever it stands on the line; this lists it in --help."""


def main() -> None:

    debug = "--debug" in sys.argv or os.environ.get("SCOREMIX_DEBUG") == "1"
    sys.argv = [a for a in sys.argv if a != "--debug"]
    log_setup()  # the one place: process start
    # Tune's own Ctrl-C handler ends a sweep's fit() as if it were done; this process handles Ctrl-C and SIGTERM
    # itself (open runs marked KILLED, exit 130). Read by Tune in this process: set here, before anything starts.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    # A local Ray started here runs with token auth, Ray's own default, said here rather than by its notice on every
    # start. Before Ray is imported: its client reads the mode once. Not for a job of a cluster (RAY_ADDRESS set):
    # its processes have the cluster's mode.
    if "RAY_ADDRESS" not in os.environ:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    sigterm_interrupts()  # from the start: a `kill` during the imports or the first contact says "stopped" too
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (`ray job stop`): open MLflow runs are already marked KILLED
        _stopped()
    except SystemExit as e:
        if e.code in (15, 130):  # typer turns Ctrl-C into exit 130; a SIGTERM handler of Ray's exits with 15
            _stopped()
        raise
    except Exception as e:  # noqa: BLE001 -- every error ends in one line; the traceback goes to the log
        if STOP_REQUESTED.is_set() or _interrupted(e):  # an interrupt a library wrapped (pydantic, Ray) is a stop
            _write_traceback(e)
            _stopped()
        culprit = user_error(e)
        path = _write_traceback(e)
        typer.echo(f"error: {culprit} (traceback: {path})", err=True)
        if debug:
            traceback.print_exception(e)
        sys.exit(2 if isinstance(culprit, ScoreMixError) else 1)


def _stopped() -> None:
    typer.echo("stopped; rerun the same command to go on (every finished stage is kept)", err=True)
    sys.exit(130)


def _interrupted(e: BaseException) -> bool:
    """Whether Ctrl-C is what `e` wraps: a KeyboardInterrupt among its causes, or named by an error raised from
    compiled code that keeps no cause (pydantic's serializer: "Error calling function ...: KeyboardInterrupt")."""
    for _ in range(20):
        if isinstance(e, KeyboardInterrupt) or "KeyboardInterrupt" in str(e).split("\n", 1)[0]:
            return True
        if e.__cause__ is None and e.__context__ is None:
            return False
        e = e.__cause__ or e.__context__
    return False


def user_error(e: BaseException) -> BaseException | str:
    """The error to show: the first of ours (`ScoreMixError`, which names the file, key or value) in the chain
    of causes, through Ray's wrappers (a task's `cause`, a Train run's worker failures); else the innermost
    error's type and first line."""
    queue, seen, innermost = [e], set(), None
    while queue:
        x = queue.pop(0)
        if id(x) in seen:
            continue
        seen.add(id(x))
        wrapped = getattr(x, "cause", None)  # a RayTaskError: its message carries the remote traceback
        if isinstance(x, ScoreMixError) and not isinstance(wrapped, BaseException):
            return x
        failures = getattr(x, "worker_failures", None)
        nested = [wrapped, x.__cause__, x.__context__, *(failures.values() if isinstance(failures, dict) else ())]
        nested = [n for n in nested if isinstance(n, BaseException)]
        queue += nested
        innermost = x if innermost is None and not nested else innermost  # the first error with no cause
    innermost = innermost or e
    return f"{type(innermost).__name__}: {first_line(innermost)}"


def _write_traceback(e: BaseException) -> Path:
    """The traceback appended to this command's log (or, before there is one, to a file in the temp folder)."""
    import tempfile

    path = _log_file() or Path(tempfile.gettempdir()) / "scoremix-ray" / f"error-{time.strftime('%Y%m%d-%H%M%S')}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write("".join(traceback.format_exception(e)))
    except OSError:
        return Path("(unwritable log; rerun with --debug)")
    return path
