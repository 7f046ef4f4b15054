"""Class-tuple selection: which classes ScoreMix mixes into each new synthetic class."""

from scoremix_ray.core.selection.strategies import STRATEGIES, Selection, select

__all__ = ["STRATEGIES", "Selection", "select"]
