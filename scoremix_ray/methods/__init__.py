"""Augmentation methods behind one interface, so one sweep compares them under the same budget.

A method is two plain functions registered by name:
  plan(ctx: PlanContext) -> pyarrow.Table   one row per synthetic image: `label`, `classes`, `weights`, `seed`,
                                            `index` (the Parquet schema minus `image` and `method`), plus any
                                            method-specific columns its renderer needs
  render(ctx: RenderContext, rows: pyarrow.Table) -> uint8 images (n, H, W, C), one per row, depending
                                            only on those rows (so any shard can be regenerated alone);
                                            or (images, stats dict), stats summed into the manifest
The generation path (`scoremix_ray.generation`, Ray Data in `scoremix_ray.distributed.generate`) is shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from scoremix_ray.config import Config
from scoremix_ray.errors import ScoreMixError


@dataclass
class PlanContext:
    cfg: Config
    num_real_classes: int
    selection: Any = None  # scoremix_ray.selection.Selection, for methods that make new classes
    split: Any = None  # scoremix_ray.data.Split, for methods that start from real images


@dataclass
class RenderContext:
    """What an actor holds once: the config, the generator (and its guide, when `sampler.guidance` is
    autoguidance); the data split and the baseline recognizer are loaded on first use (only the methods that
    need them pay for them), the recognizer onto the generator's device."""

    cfg: Config
    net: Any
    guide: Any = None
    split_path: Path | None = None
    recognizer_dir: Path | None = None
    _split: Any = field(default=None, repr=False)
    _recognizer: Any = field(default=None, repr=False)

    @property
    def recognizer(self):
        if self._recognizer is None:
            from scoremix_ray.recognition.train import Recognizer

            if self.recognizer_dir is None:
                raise ScoreMixError("this method needs the baseline recognizer, which was not given")
            self._recognizer = Recognizer.load(Path(self.recognizer_dir) / "final", self.device)
        return self._recognizer

    @property
    def device(self):
        from scoremix_ray.devices import device_of

        return device_of(self.net)

    @property
    def centres(self):
        import numpy as np

        return np.load(Path(self.recognizer_dir) / "centres.npy")

    @property
    def split(self):
        if self._split is None:
            from scoremix_ray.data import Split

            self._split = Split.load(self.split_path)
        return self._split


@dataclass
class Method:
    name: str
    plan: Callable[[PlanContext], Any]
    render: Callable[[RenderContext, Any], Any]
    new_classes: bool  # True: rows are new identities (ScoreMix); False: label-preserving


METHODS: dict[str, Method] = {}


def register(name: str, plan: Callable, render: Callable, new_classes: bool) -> None:
    METHODS[name] = Method(name, plan, render, new_classes)


def get_method(name: str) -> Method:
    # each module registers itself
    import scoremix_ray.methods.classic  # noqa: F401
    import scoremix_ray.methods.diffcoremix  # noqa: F401
    import scoremix_ray.methods.diffii  # noqa: F401
    import scoremix_ray.methods.diffusemix  # noqa: F401
    import scoremix_ray.methods.plain  # noqa: F401
    import scoremix_ray.methods.scoremix  # noqa: F401

    if name not in METHODS:
        raise ScoreMixError(f"unknown generation.method '{name}' (valid: {', '.join(METHODS)})")
    return METHODS[name]
