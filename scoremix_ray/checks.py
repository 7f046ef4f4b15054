"""Checks that fail a run in seconds, before any training, in one line naming the key.

Two moments: `check_config` right after a config is loaded (every CLI command, every sweep trial, `pipeline.run`),
against the registries of strategies and methods; `check_with_data` right after the data stage, against the
training classes. (What pydantic can check of one config alone is in `config.py`; the split refuses a
data.per_class above a class's images and a side with fewer than 2 classes, from the labels, before decoding.)
"""

from __future__ import annotations

from scoremix_ray.config import Config, ConfigError


def check_config(cfg: Config) -> Config:
    """Strategy and method names (listing the valid ones), mixing weights one per class of each strategy's
    tuples, and a `generation.budget` that ScoreMix, whose budget is count x per_tuple, can keep."""
    from scoremix_ray.methods import registry
    from scoremix_ray.selection.strategies import STRATEGIES, tuple_size_of

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
    from scoremix_ray.methods import get_method
    from scoremix_ray.selection.strategies import check_feasible

    sc = cfg.selection
    if get_method(cfg.generation.method).new_classes:
        check_feasible(sc.strategy, split.train.num_classes, sc.count, sc.tuple_size, sc.max_uses_per_class)
