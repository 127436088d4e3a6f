"""Bounded execution of a child process (nvidia-smi, lxc, incus) that may hang.

``subprocess.run(timeout=...)`` is not enough: after the timeout it kills only the
direct child and then waits, without a bound, for the pipes to close, which a
grandchild or a process stuck in uninterruptible sleep may never do. Here the child runs
in its own process group, both pipes are read with a deadline, the whole group is
SIGKILLed at the deadline, the pipes are closed without waiting, and a child that is
still alive is remembered so that no second call starts until it is gone.
"""

import os
import selectors
import signal
import subprocess
import time
from collections import namedtuple

RunResult = namedtuple("RunResult", "state returncode stdout stderr elapsed")
RunResult.__doc__ = """Outcome of :meth:`BoundedRunner.run`.

``state``: ``ok`` (exited; see ``returncode``), ``timeout`` (killed at the deadline),
``busy`` (a previous call's child is still alive; nothing started), ``not_found``
(executable missing), ``error`` (could not start: permission, exec format).
``stdout``/``stderr``: bytes read (capped). ``elapsed``: seconds.
"""

MAX_OUTPUT = 8 * 1024 * 1024
# After the child exits, how long a grandchild may keep the pipe open before we stop reading.
EXIT_GRACE = 0.2


class BoundedRunner:
    """Runs one child at a time, never blocking longer than the timeout (plus ~0.1 s)."""

    def __init__(self):
        self._lingering = None  # Popen killed at its deadline that had not exited yet
        self._current = None  # Popen of the call in progress (run() may be in another thread)

    def busy(self):
        """True while a child killed at its deadline has not exited yet."""
        if self._lingering is not None and self._lingering.poll() is None:
            return True
        self._lingering = None
        return False

    @staticmethod
    def not_found():
        """The :data:`RunResult` of an executable that does not exist (nothing started)."""
        return RunResult("not_found", None, b"", b"", 0.0)

    def run(self, argv, timeout, env=None):
        """Run ``argv`` with a hard ``timeout`` in seconds; returns a :data:`RunResult`."""
        start = time.monotonic()
        if self.busy():
            return RunResult("busy", None, b"", b"", 0.0)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # own process group, killable as a whole
                close_fds=True,
                env=env,
            )
        except FileNotFoundError:
            return RunResult("not_found", None, b"", b"", time.monotonic() - start)
        except OSError as exc:
            return RunResult("error", None, b"", str(exc).encode(), time.monotonic() - start)
        self._current = proc
        try:
            return self._wait(proc, start, timeout)
        finally:
            self._current = None

    def kill_current(self):
        """SIGKILL the process group of the call in progress, if any (agent shutdown)."""
        proc = self._current
        if proc is not None and proc.poll() is None:
            self._kill_group(proc)

    def _wait(self, proc, start, timeout):
        out, err = bytearray(), bytearray()
        buffers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
        deadline = start + timeout
        exited_at = None
        timed_out = lingering_pipe = False
        with selectors.DefaultSelector() as sel:
            for stream in (proc.stdout, proc.stderr):
                os.set_blocking(stream.fileno(), False)
                sel.register(stream.fileno(), selectors.EVENT_READ)
            while sel.get_map():
                now = time.monotonic()
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None and now - exited_at > EXIT_GRACE:
                    lingering_pipe = True  # child is done; a grandchild holds the pipe open
                    break
                if now >= deadline:
                    timed_out = True
                    break
                wait = min(deadline - now, 0.05 if exited_at is None else EXIT_GRACE)
                for key, _ in sel.select(wait):
                    try:
                        chunk = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    buf = buffers[key.fd]
                    if len(buf) < MAX_OUTPUT:
                        buf.extend(chunk[: MAX_OUTPUT - len(buf)])
        if timed_out or lingering_pipe:
            self._kill_group(proc)
        proc.stdout.close()
        proc.stderr.close()
        if not timed_out:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                timed_out = True
                self._kill_group(proc)
        elapsed = time.monotonic() - start
        if timed_out:
            try:
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                self._lingering = proc  # e.g. uninterruptible sleep; reaped by busy()
            return RunResult("timeout", proc.returncode, bytes(out), bytes(err), elapsed)
        return RunResult("ok", proc.returncode, bytes(out), bytes(err), elapsed)

    @staticmethod
    def _kill_group(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.kill()
        except OSError:
            pass
