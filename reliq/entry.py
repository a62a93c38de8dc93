"""The ``reliq`` command's entry point: it owns SIGTERM and SIGINT from its first instant.

Loading the roles takes a second or more on a busy machine, and so can a user's
``--app`` module. A SIGTERM in that time killed the process with no exit code of ours
(-15: a supervisor or a deploy sees a crash), and a Ctrl-C printed a KeyboardInterrupt
traceback. Nothing has been claimed or opened by then, so stopping is simply exiting:
code 0, one line saying so. Once a role's event loop runs, it takes the signals over
(``roles.Signals``) and drains instead.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _exit(signum: int, frame: FrameType | None) -> None:
    print(f"reliq: {signal.Signals(signum).name} while starting: exiting, nothing was started", file=sys.stderr)
    raise SystemExit(0)


@contextlib.contextmanager
def starting() -> Iterator[None]:
    """While inside, SIGTERM/SIGINT end the process cleanly (code 0) instead of killing it."""
    previous = {sig: signal.signal(sig, _exit) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main() -> None:
    """Console-script entry point (``reliq``, ``python -m reliq``)."""
    with starting():
        from reliq.cli import entry
    entry()
