"""Child processes that cannot outlive the reliq process that started them.

A child in its own process group does not get the terminal's Ctrl-C: the parent decides
when it stops (after its own drain, for a worker's Redis; by forwarding the signal, for
the supervisor's workers). If the parent is killed outright, Linux sends the child
SIGTERM, so nothing is left running behind it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` asking Linux to send the child SIGTERM when ``parent`` dies.

    Linux ties this to the *thread* that started the child: start it from a thread that
    lives as long as the child should (the main thread).
    """

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)

    return preexec
