"""Progress lines for long work: what is done of how much, at what rate, and the time left, at most every
`PROGRESS_S` seconds, so no pass over a large set (an epoch of 80,000 faces, an embedding pass) is silent."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("scoremix_ray")
LOG_FORMAT = "%(asctime)s %(message)s"  # every process's log lines: the command's, Ray workers'


def quiet_libraries() -> None:
    """Ray Data's console lines at WARNING and above (ray_data_logging.yaml beside this file, through Ray Data's
    RAY_DATA_LOGGING_CONFIG; a user's own setting wins). Before Ray Data is imported: it reads the setting then."""
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(Path(__file__).with_name("ray_data_logging.yaml")))


def _ours_or_warnings(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name.startswith("scoremix_ray")


def log_setup() -> None:
    """A process's logging, where it starts (the command's, every Ray worker's): its console shows this project's
    lines from INFO and every other library's (Ray Train's, Tune's, torch's) from WARNING; a log file added to
    the root (the command's, `cli._log_to`) gets them all. A library's own handlers are its own."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S")
    quiet_console()
    quiet_libraries()


def quiet_console() -> None:
    """The root's console handlers (not its files) pass this project's lines from INFO, others' from WARNING.
    Called again at the start of a Ray Train worker's function: Train replaces the worker's root handlers with
    its own console, whose level filter (LoggingConfig) holds only loggers named `ray.train.*`, and its
    "Reporting training result" INFO line comes from a logger named by its file path (Ray 2.60)."""
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.addFilter(_ours_or_warnings)  # once: addFilter skips a filter already there


def worker_setup() -> None:
    """Where a Ray worker process starts (the setup hook of `runtime.context.RUNTIME_ENV`): its log lines like
    the command's. Kept here, with nothing heavy imported, since every worker process runs it."""
    log_setup()


@contextmanager
def lines_to(path: Path) -> Iterator[Path]:
    """This process's log lines of the block in full to `path` (appended), its console only their warnings and
    errors: a sweep's trial, whose lines would otherwise interleave with every other trial's on the driver."""
    root = logging.getLogger()
    consoles = [h for h in root.handlers if type(h) is logging.StreamHandler]
    levels = [h.level for h in consoles]
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    for h in consoles:
        h.setLevel(max(h.level, logging.WARNING))
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        for h, level in zip(consoles, levels):
            h.setLevel(level)


PROGRESS_S = 15.0  # the longest silence between two progress lines (a first line after as long)


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
            "%s: %d/%d %s, %s %s/s, about %s left%s",
            self.what,
            done,
            self.total,
            self.unit,
            f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}",
            self.unit,
            duration(left) if left != float("inf") else "? s",
            f"; {extra}" if extra else "",
        )

    def say(self, msg: str, *args, last: bool = False) -> None:
        """A stage's own status line (a training's loss at its log step): logged when a progress line would be
        (`every_s` since the last), or when it is the `last`; the others only go to the stage's history."""
        now = time.monotonic()
        if last or now - self.last >= self.every_s:
            self.last = now
            log.info(msg, *args)

    def over(self, starts):
        """`starts` (the first item of each batch), ticked as each batch begins."""
        for lo in starts:
            self.tick(lo)
            yield lo
