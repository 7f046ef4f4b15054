"""Ray Data actor pools without Ray's actor restarts, and passes over them that a lost actor repeats.

Ray Data hands its pool actors their set-up as object-store references (its map transformer and DataContext,
`ray.put`). An actor restarted from such arguments fails if they are gone, which core_worker reports as an ERROR
at every pool start where restarts are on, Ray Data's default (ray-project/ray#53727). The pools here run with
max_restarts=0 instead: a lost actor (or its node) ends the pass, and the caller's pass runs again on a new pool
over what is still missing, at most `ray.max_failures` times (tests/cluster_faults.py removes a node mid-pass).
"""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Callable

from scoremix_ray.foundations.errors import ScoreMixError, first_line

log = logging.getLogger("scoremix_ray")


def map_on_actors(ds, fn, **map_batches_args):
    """`ds.map_batches(fn, **map_batches_args)` on actors that Ray does not restart."""
    with warnings.catch_warnings():
        # Ray 2.60 takes max_restarts only as an extra keyword (ray_remote_args, deprecated for 2.64)
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(fn, **map_batches_args, max_restarts=0)


def with_new_pools(what: str, max_failures: int, one_pass: Callable[[], None], left: Callable[[], str]) -> None:
    """Runs `one_pass` (which makes its own pool with `map_on_actors` and consumes it) until a pass loses no
    actor, at most 1 + `max_failures` times. `left()` says what a lost pass left undone: its log line, or the
    one-line error once no pass is left."""
    import ray

    for attempt in range(max_failures + 1):
        try:
            one_pass()
            return
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as e:
            lost = first_line(e)
        # the failed pass's executor, and with it the handles of its actors still alive, hangs in reference cycles
        # of the traceback: collected now, those actors end after their batch and give back their CPUs (else the
        # next pool can wait for them for ever on a full cluster)
        gc.collect()
        if attempt == max_failures:
            raise ScoreMixError(
                f"{what}: {left()} after {attempt} restart(s) of the actor pool (ray.max_failures): {lost}"
            )
        log.info("%s: an actor was lost (%s); %s, new pool", what, lost, left())
