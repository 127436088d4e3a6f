"""NVIDIA XID errors from the kernel log, read incrementally from ``/dev/kmsg`` without forking.

``/dev/kmsg`` (Documentation/ABI/testing/dev-kmsg in the Linux source) returns one record per
``read()``::

    prio,seq,usec,flags[,...];message text
     KEY=value            (optional continuation lines, each starting with a space)

``prio`` is syslog facility << 3 | level, ``seq`` a 64-bit sequence number, ``usec`` the
CLOCK_MONOTONIC time of the record in microseconds since boot. Opened with ``O_NONBLOCK``, a
read at the end fails with ``EAGAIN``; ``EPIPE`` means records were overwritten before we
read them (the next read continues at the oldest record still there). The file stays open
between cycles, so each cycle reads only the new records.

The NVIDIA driver prints an XID as ``NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python,
GPU has fallen off the bus.`` (older drivers omit ``pid=``/``name=``). Each one becomes an
event with its bus id in nvidia-smi's ``00000000:3B:00.0`` form so the hub can attribute it
to a GPU.

A regular file in the same record format (one record per line) can stand in for
``/dev/kmsg`` (agent setting ``kmsg_path``), which is how the tests feed it.
"""

import errno
import os
import re
import stat
import time

# NVIDIA's XID catalogue: "XID Errors", NVIDIA GPU deployment and management documentation,
# https://docs.nvidia.com/deploy/xid-errors/ (names as given there, shortened).
XID_NAMES = {
    13: "Graphics Engine Exception",
    31: "GPU memory page fault",
    32: "Invalid or corrupted push buffer stream",
    38: "Driver firmware error",
    43: "GPU stopped processing",
    45: "Preemptive cleanup, due to previous errors",
    48: "Double Bit ECC Error",
    56: "Display Engine error",
    57: "Error programming video memory interface",
    58: "Unstable video memory interface detected",
    61: "Internal micro-controller breakpoint/warning",
    62: "Internal micro-controller halt",
    63: "ECC page retirement or row remapping recording event",
    64: "ECC page retirement or row remapper recording failure",
    68: "NVDEC0 Exception",
    69: "Graphics Engine class error",
    74: "NVLink Error",
    79: "GPU has fallen off the bus",
    92: "High single-bit ECC error rate",
    94: "Contained ECC error",
    95: "Uncontained ECC error",
    109: "Context Switch Timeout Error",
    119: "GSP RPC Timeout",
    120: "GSP Error",
    121: "C2C Link Error",
    140: "Unrecovered ECC Error",
}
# Codes that mean the GPU or its memory is failing or gone (alerted as critical by the hub).
CRITICAL_XIDS = frozenset({48, 63, 64, 74, 79, 94, 95, 119, 120, 140})

_XID = re.compile(
    r"NVRM: Xid \(PCI:(?P<domain>[0-9a-fA-F]{4,8}):(?P<bus>[0-9a-fA-F]{2}):(?P<dev>[0-9a-fA-F]{2})"
    r"(?:\.(?P<fn>[0-7]))?\): (?P<xid>\d{1,5}),\s*(?P<rest>.*)"
)
_PID_NAME = re.compile(r"pid=(?P<pid>[^,]*),\s*name=(?P<name>[^,]*),\s*(?P<text>.*)")

# Records read per cycle at most (the first cycle reads the whole ring buffer once).
MAX_RECORDS = 50000
# Events reported per cycle at most (an XID storm must not swell the report).
MAX_EVENTS = 200
RECORD_SIZE = 8192  # /dev/kmsg records are at most ~1 KiB of text plus dictionary lines


def bus_key(bus_id):
    """A PCI bus id (``00000000:3B:00.0``, ``0000:3b:00.0``, ``0000:3b:00``) as a comparable
    ``(domain, bus, device, function)`` tuple of ints; None when it is not one."""
    if not bus_id:
        return None
    match = re.fullmatch(r"([0-9a-fA-F]{1,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})(?:\.([0-7]))?", bus_id.strip())
    if not match:
        return None
    return (int(match.group(1), 16), int(match.group(2), 16), int(match.group(3), 16), int(match.group(4) or 0))


def parse_record(raw):
    """One record (bytes or str) to ``(seq, usec, message)``, or None when it is not one."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    head, sep, rest = raw.partition(";")
    if not sep:
        return None
    fields = head.split(",")
    if len(fields) < 4:
        return None
    try:
        seq, usec = int(fields[1]), int(fields[2])
    except ValueError:
        return None
    message = rest.split("\n", 1)[0]  # continuation lines (" KEY=value") are not part of the text
    return seq, usec, message


def parse_xid(message):
    """An ``NVRM: Xid`` message to an event dict, else None.

    Returns ``{"pci.bus_id", "xid", "name", "pid", "process_name", "message"}``; ``pci.bus_id`` is
    in nvidia-smi's form (``00000000:3B:00.0``), ``pid``/``process_name`` None when the driver
    did not print them (or printed ``<unknown>``).
    """
    match = _XID.search(message)
    if not match:
        return None
    bus_id = "%08X:%s:%s.%s" % (int(match.group("domain"), 16), match.group("bus").upper(),
                                match.group("dev").upper(), match.group("fn") or "0")
    xid = int(match.group("xid"))
    pid = name = None
    detail = match.group("rest")
    extra = _PID_NAME.match(detail)
    if extra:
        pid_text = extra.group("pid").strip().strip("'\"")
        pid = int(pid_text) if pid_text.isdigit() else None
        name_text = extra.group("name").strip().strip("'\"")
        name = None if name_text in ("", "<unknown>") else name_text[:256]
    return {"pci.bus_id": bus_id, "xid": xid, "name": XID_NAMES.get(xid), "pid": pid, "process_name": name,
            "message": message.strip()[:1024]}


class KmsgReader:
    """Reads new kernel-log records each :meth:`collect` and returns the XID events among them.

    ``path``: ``/dev/kmsg`` or a file in its record format. ``boot_time``: epoch seconds of
    boot (``psutil.boot_time()``), to turn a record's ``usec`` into wall-clock time.
    ``history_s``: on the first read, older records (by their time) are skipped, so a
    restarted agent does not resend a whole boot's events (the hub also stores each
    ``(seq, usec)`` once).
    """

    def __init__(self, path="/dev/kmsg", boot_time=None, history_s=86400):
        self.path = path
        self.boot_time = boot_time
        self.history_s = history_s
        self._fd = None
        self._device = False
        self._buffer = b""
        self._last_seq = -1
        self._first = True
        self.state = None

    def _open(self):
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        self._device = stat.S_ISCHR(os.fstat(fd).st_mode)
        self._fd = fd

    def close(self):
        """Close the file (the next :meth:`collect` reopens it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _records(self):
        """New raw records (bytes), oldest first."""
        records = []
        while len(records) < MAX_RECORDS:
            try:
                chunk = os.read(self._fd, RECORD_SIZE if self._device else 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue  # overwritten before we read it; go on with the oldest left
                if exc.errno == errno.EINVAL:
                    break  # a record larger than the buffer: cannot happen with 8 KiB
                raise
            if not chunk:
                break  # end of a regular file
            if self._device:
                records.append(chunk)
            else:
                self._buffer += chunk
                *lines, self._buffer = self._buffer.split(b"\n")
                records.extend(line for line in lines if line and not line.startswith(b" "))
        return records

    def collect(self, now=None):
        """Read what is new. Returns ``{"kmsg_state": str, "xid_events": [event, ...]}``.

        ``kmsg_state``: ``ok``, ``not_found`` (no such file), ``permission_denied`` (needs root
        or CAP_SYSLOG; ``kernel.dmesg_restrict``), ``error`` (another OS error). An event is
        :func:`parse_xid` output plus ``seq``, ``usec`` and ``time`` (epoch s, None without
        ``boot_time``).
        """
        now = time.time() if now is None else now
        try:
            if self._fd is None:
                self._open()
            records = self._records()
        except OSError as exc:
            self.close()
            self.state = {errno.ENOENT: "not_found", errno.EACCES: "permission_denied",
                          errno.EPERM: "permission_denied"}.get(exc.errno, "error")
            return {"kmsg_state": self.state, "xid_events": []}
        self.state = "ok"
        events = []
        for raw in records:
            parsed = parse_record(raw)
            if parsed is None:
                continue
            seq, usec, message = parsed
            if seq <= self._last_seq:
                continue
            self._last_seq = seq
            if "NVRM: Xid" not in message:
                continue
            event = parse_xid(message)
            if event is None:
                continue
            event_time = self.boot_time + usec / 1e6 if self.boot_time is not None else None
            if self._first and event_time is not None and event_time < now - self.history_s:
                continue
            event.update(seq=seq, usec=usec, time=event_time)
            events.append(event)
        self._first = False
        return {"kmsg_state": self.state, "xid_events": events[-MAX_EVENTS:]}
