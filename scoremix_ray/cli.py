"""`scoremix-ray` command line. Every command takes `--config FILE` and repeated `--set a.b=value`."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from scoremix_ray.config import Config, load_config, to_yaml
from scoremix_ray.errors import ScoreMixError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ScoreMix on Ray: mixed-class diffusion augmentation for recognition datasets.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the resolved configuration.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect the data and its split.")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override: a.b=value (repeatable).")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Output folder (config key out_dir).")]


def _cfg(config: Path | None, sets: list[str] | None, out: Path | None = None) -> Config:
    overrides = list(sets or [])
    if out is not None:
        overrides.append(f"out_dir={out}")
    return load_config(config, overrides)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config as YAML."""
    typer.echo(to_yaml(_cfg(config, set_)), nl=False)


@data_app.command("inspect")
def data_inspect(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None) -> None:
    """Print counts per split and write a grid PNG of samples per class."""
    from scoremix_ray.pipeline import data_stage

    cfg = _cfg(config, set_, out)
    split, d = data_stage(cfg)
    s = split.summary()
    typer.echo(f"protocol: {s['protocol']}")
    typer.echo(f"train: {s['train_images']} images in {s['train_classes']} classes")
    for name, n in zip(split.train.class_names, split.train.counts()):
        typer.echo(f"  class {name}: {n}")
    typer.echo(f"test: {s['test_images']} images in {s['test_classes']} classes; "
               f"{s['pairs']} verification pairs ({s['same_pairs']} same)")
    typer.echo(f"grid: {d / 'train_grid.png'}")


@app.command()
def run(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None) -> None:
    """Run the whole experiment for one strategy (the stages that exist so far)."""
    from scoremix_ray import pipeline

    _setup_logging()
    cfg = _cfg(config, set_, out)
    start = time.time()
    pipeline.write_run_config(cfg)
    result = pipeline.run(cfg)
    typer.echo(json.dumps(result, indent=2))
    typer.echo(f"done in {time.time() - start:.0f} s; run folder: {cfg.run_dir}")
    if pipeline.STAGES_PENDING:
        typer.echo(f"not implemented yet (skipped): {', '.join(pipeline.STAGES_PENDING)}")


def main() -> None:
    try:
        app()
    except ScoreMixError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
