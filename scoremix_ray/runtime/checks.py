"""Checks that fail a run in seconds, before any training, in one line naming the key.

Three moments: `check_config` right after a config is loaded (every CLI command, every sweep trial, `pipeline.run`),
against the registries of strategies and methods; `check_inputs` next, where a command starts (what it will read
and write outside its stages: the output folder, the .bin set, the data path, the tracking server), each first
contact bounded by `connect_timeout_s`; `check_with_data` right after the data stage, against the
training classes. (What pydantic can check of one config alone is in `config.py`; the split refuses a
data.per_class above a class's images and a side with fewer than 2 classes, from the labels, before decoding.)
"""

from __future__ import annotations

import os
from pathlib import Path

from scoremix_ray.config import EMBEDDED, Config, ConfigError
from scoremix_ray.core.evaluation import benchmarks
from scoremix_ray.core.methods import get_method, registry
from scoremix_ray.core.selection.strategies import STRATEGIES, check_feasible, tuple_size_of


def with_study_defaults(cfg: Config) -> Config:
    """`study.strategies` / `study.methods` left unset: every registered strategy that ranks pairs (the triplet
    ones make tuples of 3), and ScoreMix then every other method. The config names no registry (they live in
    the core, above it); this is where the two meet."""
    st = cfg.study
    if st is None or (st.strategies is not None and st.methods is not None):
        return cfg
    fill = {
        "strategies": st.strategies or tuple(s for s in STRATEGIES if tuple_size_of(s, 2) == 2),
        "methods": st.methods or ("scoremix", *(m for m in registry() if m != "scoremix")),
    }
    return cfg.model_copy(update={"study": st.model_copy(update=fill)})


def check_config(cfg: Config) -> Config:
    """Strategy and method names (listing the valid ones), mixing weights one per class of each strategy's
    tuples, and a `generation.budget` that ScoreMix, whose budget is count x per_tuple, can keep; the study's
    unset lists filled in (`with_study_defaults`)."""
    cfg = with_study_defaults(cfg)
    sel, gen, study = cfg.selection, cfg.generation, cfg.study
    strategies = [
        ("selection.strategy", sel.strategy),
        *(("study.strategies", s) for s in (study.strategies if study else ())),
    ]
    methods = [("generation.method", gen.method), *(("study.methods", m) for m in (study.methods if study else ()))]
    for (key, name), known in [*((s, STRATEGIES) for s in strategies), *((m, registry()) for m in methods)]:
        if name not in known:
            raise ConfigError(f"unknown {key} '{name}' (valid: {', '.join(known)})")
    for key in ("weights", "weights_end"):
        w = getattr(gen, key)
        for name in {name for _, name in strategies} if w is not None else ():
            k = tuple_size_of(name, sel.tuple_size)
            if len(w) != k:
                raise ConfigError(
                    f"generation.{key} has {len(w)} values for tuples of {k} classes "
                    f"(selection.tuple_size={sel.tuple_size}, strategy {name})"
                )
    made = sel.count * gen.per_tuple  # ScoreMix's images: per_tuple of each selected tuple
    if gen.budget is not None and gen.budget != made and any(registry()[m].new_classes for _, m in methods):
        raise ConfigError(
            f"generation.budget={gen.budget} differs from the {made} images ScoreMix makes "
            f"(selection.count {sel.count} x generation.per_tuple {gen.per_tuple}): the methods "
            f"would not compare on one budget; change one of them"
        )
    return cfg


def check_with_data(cfg: Config, split) -> None:
    """Right after the data stage: the selection can be drawn from the training classes."""
    sc = cfg.selection
    if get_method(cfg.generation.method).new_classes:
        check_feasible(sc.strategy, split.train.num_classes, sc.count, sc.tuple_size, sc.max_uses_per_class)


def check_inputs(cfg: Config) -> Config:
    """Before any work: `out_dir` is a folder this process can write (created if missing), `data.path` exists,
    every benchmark's layout is there (a .bin starts like one), `recognizer.pretrained` is a file, and an HTTP
    tracking server answers. A hung mount or a dead server fails after `connect_timeout_s` seconds, in one line
    naming it."""
    within(cfg.connect_timeout_s, f"out_dir {cfg.out_dir}", lambda: writable_dir(Path(cfg.out_dir)))
    if cfg.data.source not in EMBEDDED and not Path(cfg.data.path).exists():
        raise ConfigError(f"data.path not found: {cfg.data.path}")
    for b in cfg.evaluation.benchmarks:
        benchmarks.check(b)
    if cfg.recognizer.pretrained is not None and not Path(cfg.recognizer.pretrained).is_file():
        raise ConfigError(f"recognizer.pretrained not found: {cfg.recognizer.pretrained}")
    uri = cfg.tracking.tracking_uri
    if uri and uri.startswith(("http://", "https://")):
        answers(uri, cfg.connect_timeout_s)
    return cfg


def writable_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"out_dir {out} is not a writable folder: {e.strerror or e}") from None


def within(seconds: float, what: str, fn) -> None:
    """`fn()` in a daemon thread, given up on after `seconds`: a stat on a hung network mount never returns,
    and the thread is left behind (a daemon: it does not hold the exit) while the command ends in one line."""
    import threading

    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 -- handed to the caller's thread
            outcome.append(e)

    thread = threading.Thread(target=call, daemon=True, name=f"check {what}")
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise ConfigError(
            f"{what}: no answer within {seconds:g} s (a hung network mount?); the limit is connect_timeout_s"
        )
    if outcome[0] is not None:
        raise outcome[0]


def answers(uri: str, seconds: float) -> None:
    """An MLflow server at `uri` answers an HTTP request within `seconds` (any status: it is there)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=seconds).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConfigError(
            f"tracking server {uri} does not answer ({reason}; waited up to {seconds:g} s): check that "
            f"`mlflow server` runs there and the address and port (tracking.tracking_uri; the limit is "
            f"connect_timeout_s)"
        ) from None
