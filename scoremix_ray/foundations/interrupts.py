"""The one SIGTERM handler: SIGTERM (`ray job stop`, a scheduler, `kill`) raised as Ctrl-C in the main thread, so
every command ends on its one "stopped" line and every open MLflow run is marked KILLED. Installed where a
process starts and again right after `ray.init` (whose own handler exits at once): `runtime.context`."""

from __future__ import annotations

import signal
import threading

# set by SIGTERM: whatever a library wraps the interrupt in, it was a stop. A signal is process-wide state, so
# this flag is too; nothing else here is.
STOP_REQUESTED = threading.Event()


def _interrupt(signum, frame):
    STOP_REQUESTED.set()
    raise KeyboardInterrupt()


def sigterm_interrupts() -> None:
    """Install the handler (a no-op outside the main thread: a Tune trial's driver handles signals)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
