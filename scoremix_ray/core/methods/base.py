"""What every method is built from: the plan and render contexts, the `Method` record and `register`. The
method modules import this; the package imports them all and is the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scoremix_ray.config import Config
from scoremix_ray.core.data import Split
from scoremix_ray.core.recognition.train import Recognizer
from scoremix_ray.foundations.devices import device_of
from scoremix_ray.foundations.errors import ScoreMixError


@dataclass
class PlanContext:
    cfg: Config
    num_real_classes: int
    selection: Any = None  # scoremix_ray.core.selection.Selection, for methods that make new classes
    split: Any = None  # scoremix_ray.core.data.Split, for methods that start from real images


@dataclass
class RenderContext:
    """What an actor holds once: the config and what the method declares it needs (`Method.needs`): the
    generator (and its guide, under autoguidance), the real training split and the baseline recognizer, the
    last two loaded on first use, the recognizer onto the generator's device."""

    cfg: Config
    net: Any = None
    guide: Any = None
    split_path: Path | None = None
    recognizer_dir: Path | None = None
    _split: Any = field(default=None, repr=False)
    _recognizer: Any = field(default=None, repr=False)

    @property
    def recognizer(self):
        if self._recognizer is None:
            self._recognizer = Recognizer.load(Path(self._given("recognizer_dir", "recognizer")) / "final", self.device)
        return self._recognizer

    @property
    def device(self):
        return device_of(self.net) if self.net is not None else torch.device("cpu")

    @property
    def centres(self):
        return np.load(Path(self._given("recognizer_dir", "recognizer")) / "centres.npy")

    @property
    def split(self):
        if self._split is None:
            self._split = Split.load(self._given("split_path", "real_images"))
        return self._split

    def _given(self, attr: str, need: str):
        if getattr(self, attr) is None:
            raise ScoreMixError(
                f"this method uses '{need}' but was not given it: declare it in the method's register(..., needs=...)"
            )
        return getattr(self, attr)


NEEDS = ("generator", "guide", "recognizer", "real_images")  # what a method's render may use


@dataclass(frozen=True)
class Method:
    name: str
    plan: Callable[[PlanContext], Any]
    render: Callable[[RenderContext, Any], Any]
    new_classes: bool  # True: rows are new identities (ScoreMix); False: label-preserving
    # What render uses, of NEEDS: the generation actors load only that (the generator and its guide, the
    # baseline recognizer, the real training images), and the stage key holds only what feeds the bytes.
    # "guide": samples under the run's guidance policy (the guide model is loaded when that is autoguidance).
    needs: frozenset[str] = frozenset()


METHODS: dict[str, Method] = {}


def register(name: str, plan: Callable, render: Callable, new_classes: bool, needs: tuple[str, ...]) -> None:
    if set(needs) - set(NEEDS):
        raise ValueError(f"method {name} declares unknown needs {sorted(set(needs) - set(NEEDS))} (known: {NEEDS})")
    needs = set(needs) | ({"generator"} if "guide" in needs else set())  # the guide guides the generator
    METHODS[name] = Method(name, plan, render, new_classes, frozenset(needs))
