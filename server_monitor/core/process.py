"""Child processes that must not outlive their parent (no I/O beyond one ``prctl`` call)."""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig=signal.SIGKILL):
    """Ask Linux to send ``sig`` to this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``),
    so a ``kill -9`` of the hub never leaves workers, the fleet publisher, the /metrics builder or
    Litestream behind holding the port or the database. A no-op elsewhere than Linux, and for a
    process whose parent is already gone; failure is not fatal (the parent still stops its
    children on SIGTERM). Safe in a ``preexec_fn`` (no allocation beyond the ctypes call)."""
    if not sys.platform.startswith("linux") or os.getppid() == 1:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass
