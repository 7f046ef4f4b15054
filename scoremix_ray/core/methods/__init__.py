"""Augmentation methods behind one interface, so one sweep compares them under the same budget.

A method is two plain functions registered by name:
  plan(ctx: PlanContext) -> pyarrow.Table   one row per synthetic image: `label`, `classes`, `weights`, `seed`,
                                            `index` (the Parquet schema minus `image` and `method`), plus any
                                            method-specific columns its renderer needs
  render(ctx: RenderContext, rows: pyarrow.Table) -> uint8 images (n, H, W, C), one per row, depending
                                            only on those rows (so any shard can be regenerated alone);
                                            or (images, stats dict), stats summed into the manifest
The generation path (`scoremix_ray.core.generation`, Ray Data in `scoremix_ray.runtime.generate`) is shared.
"""

from __future__ import annotations

from scoremix_ray.core.methods import classic, diffcoremix, diffii, diffusemix, plain, scoremix
from scoremix_ray.core.methods.base import METHODS, NEEDS, Method, PlanContext, RenderContext, register
from scoremix_ray.foundations.errors import ScoreMixError

__all__ = ["METHODS", "NEEDS", "Method", "PlanContext", "RenderContext", "register", "registry", "get_method"]
_MODULES = (classic, diffcoremix, diffii, diffusemix, plain, scoremix)  # each registers itself when imported


def registry() -> dict[str, Method]:
    """Every method by name, in one order whichever module a process imported first."""
    return dict(sorted(METHODS.items()))


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ScoreMixError(f"unknown generation.method '{name}' (valid: {', '.join(registry())})")
    return METHODS[name]
