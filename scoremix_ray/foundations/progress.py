"""Progress lines for long work: what is done of how much, at what rate, and the time left, at most every
`PROGRESS_S` seconds, so no pass over a large set (an epoch of 80,000 faces, an embedding pass) is silent."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("scoremix_ray")
LOG_FORMAT = "%(asctime)s %(message)s"  # every process's log lines: the command's, Ray workers'


def worker_setup() -> None:
    """Where a Ray worker process starts (the setup hook of `runtime.context.RUNTIME_ENV`): its log lines like
    the command's. Kept here, with nothing heavy imported, since every worker process runs it."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S")


PROGRESS_S = 30.0  # the longest silence between two progress lines (a first line after as long)


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3.4 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class Progress:
    """`tick(done)` logs "<what>: <done>/<total> <unit>, <rate> <unit>/s, about <time> left[, extra]" when
    `every_s` have passed since the last line (or the start); a pass shorter than that prints nothing."""

    def __init__(self, what: str, total: int, unit: str = "img", every_s: float | None = None):
        self.what, self.total, self.unit = what, total, unit
        self.every_s = PROGRESS_S if every_s is None else every_s
        self.start = self.last = time.monotonic()
        self.first = 0

    def begin_at(self, done: int) -> Progress:
        """Count the rate from `done` (a resumed run: the work before it took no time in this process)."""
        self.first = done
        return self

    def tick(self, done: int, extra: str = "") -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        rate = (done - self.first) / max(now - self.start, 1e-9)
        left = (self.total - done) / rate if rate > 0 else float("inf")
        log.info(
            "%s: %d/%d %s, %.0f %s/s, about %s left%s",
            self.what,
            done,
            self.total,
            self.unit,
            rate,
            self.unit,
            duration(left) if left != float("inf") else "? s",
            f"; {extra}" if extra else "",
        )

    def over(self, starts):
        """`starts` (the first item of each batch), ticked as each batch begins."""
        for lo in starts:
            self.tick(lo)
            yield lo
