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

# NVIDIA's XID catalogue: "XID Errors" and its "Xid Catalog" (Ampere and newer), NVIDIA GPU
# deployment and management documentation, https://docs.nvidia.com/deploy/xid-errors/ and
# https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html (descriptions as given there).
XID_NAMES = {
    8: "GPU stopped processing",
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
    110: "Security Fault Error",
    119: "GSP RPC Timeout",
    120: "GSP Error",
    121: "C2C Link Error",
    136: "Link Training Failed",
    137: "NVLink Privilege Error",
    140: "Unrecovered ECC Error",
    141: "CUDA Fast Path Error",
    143: "GPU Initialization Error",
    144: "NVLink: SAW Error",
    145: "NVLink: RLW Error",
    146: "NVLink: TLW Error",
    147: "NVLink: TREX Error",
    148: "NVLink: NVLPW_CTRL Error",
    149: "NVLink: NETIR Error",
    150: "NVLink: MSE Error",
    151: "Key rotation Error",
    154: "GPU Recovery Action Changed",
    155: "NVLink: SW Defined Error",
    156: "Resource Retirement Event",
    157: "Resource Retirement Failure",
    158: "GPU Fatal Timeout",
}
# Codes that mean the GPU or its memory is failing or gone (alerted as critical by the hub; the
# hub's server_monitor/jobs/alerts.py repeats this set and a test keeps them equal). From the catalogue:
# uncorrectable memory errors (48, 94, 95, 140), row-remapper/page-retirement events and failures
# (63, 64), NVLink errors before NVLink 5 (74), lost GPU (79), GSP firmware hang/error (119, 120),
# GPU init failure and fatal timeout (143, 158); each needs at least a GPU reset. Not critical by
# code: the NVLink 5 errors 144-150 (fatal or not by sub-code: the message says "Fatal" or
# "Nonfatal"), 154 (only says which recovery another Xid needs), application errors (13, 31, 43, 45).
CRITICAL_XIDS = frozenset({48, 63, 64, 74, 79, 94, 95, 119, 120, 140, 143, 158})

_XID = re.compile(
    r"NVRM: Xid \(PCI:(?P<domain>[0-9a-fA-F]{4,8}):(?P<bus>[0-9a-fA-F]{2}):(?P<dev>[0-9a-fA-F]{2})"
    r"(?:\.(?P<fn>[0-7]))?(?: GPU-I:(?P<gi>\d{1,4}))?(?: GPU-CI:(?P<ci>\d{1,4}))?\): (?P<xid>\d{1,5}),\s*(?P<rest>.*)"
)
# After the code: "pid=1234, name=python3, <text>", "pid=7194, <text>" (no name=, MIG-attributed
# lines), "pid='<unknown>', name=<unknown>, <text>", or the text alone (older drivers).
_PID_NAME = re.compile(r"pid=(?P<pid>'?<unknown>'?|\d{1,10}),\s*(?:name=(?P<name>[^,]*),\s*)?(?P<text>.*)")
# "GPU has fallen off the bus" printed without an Xid: "NVRM: GPU 0000:01:00.0: GPU has fallen off the
# bus." (current drivers), "NVRM: GPU at 0000:01:00.0 has fallen off the bus." (older ones), and
# "NVRM: The NVIDIA GPU 0000:b3:00.0 / (PCI ID: 10de:26b5) installed in this system has / fallen off
# the bus and is not responding to commands." (three kernel records, or one with escaped newlines).
_GPU_NAMED = re.compile(r"NVRM: (?:The NVIDIA )?GPU (?:at )?(?:PCI:)?(?P<bus>[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:"
                        r"[0-9a-fA-F]{2}(?:\.[0-7])?)\b")
_FALLEN = re.compile(r"fallen off the bus", re.I)
# A "The NVIDIA GPU <bus>" record is followed by its "fallen off the bus" record within this many records.
FALLEN_SPAN = 4

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
    # /dev/kmsg escapes a newline inside one message as "\x0a" (Documentation/ABI/testing/dev-kmsg).
    message = message.replace("\\x0a", " ")
    return seq, usec, message


def nvidia_bus_id(domain, bus, dev, fn=None):
    """PCI address parts (hex text) in nvidia-smi's form ``00000000:3B:00.0``."""
    return "%08X:%s:%s.%s" % (int(domain, 16), bus.upper(), dev.upper(), fn or "0")


def parse_xid(message):
    """An ``NVRM: Xid`` message to an event dict, else None.

    Returns ``{"pci.bus_id", "xid", "name", "pid", "process_name", "gpu_instance_id",
    "compute_instance_id", "message"}``; ``pci.bus_id`` is in nvidia-smi's form
    (``00000000:3B:00.0``); ``pid``/``process_name`` None when the driver did not print them (or
    printed ``<unknown>``); ``gpu_instance_id``/``compute_instance_id`` the MIG instance the driver
    tagged the line with (``Xid (PCI:0000:01:00 GPU-I:05 GPU-CI:02): 94``), else None.
    """
    match = _XID.search(message)
    if not match:
        return None
    bus_id = nvidia_bus_id(match.group("domain"), match.group("bus"), match.group("dev"), match.group("fn"))
    xid = int(match.group("xid"))
    pid = name = None
    detail = match.group("rest")
    extra = _PID_NAME.match(detail)
    if extra:
        pid_text = extra.group("pid").strip("'\"")
        pid = int(pid_text) if pid_text.isdigit() else None
        name_text = (extra.group("name") or "").strip().strip("'\"")
        name = None if name_text in ("", "<unknown>") else name_text[:256]
    gi, ci = match.group("gi"), match.group("ci")
    return {"pci.bus_id": bus_id, "xid": xid, "name": XID_NAMES.get(xid), "pid": pid, "process_name": name,
            "gpu_instance_id": int(gi) if gi is not None else None,
            "compute_instance_id": int(ci) if ci is not None else None,
            "message": message.strip()[:1024]}


def fallen_off_bus(message):
    """The bus id (nvidia-smi form) of an ``NVRM: GPU ...`` message that says the GPU fell off the
    bus without an Xid, else None (see :data:`_GPU_NAMED`)."""
    match = _GPU_NAMED.search(message)
    if not match or not _FALLEN.search(message):
        return None
    return _bus_of(match.group("bus"))


def _bus_of(text):
    key = bus_key(text)
    return None if key is None else "%08X:%02X:%02X.%d" % key


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
        self._lost = {}  # bus id (nvidia-smi form) -> {"pci.bus_id", "message"}: fell off the bus
        self._named = None  # (bus id, seq) of the last "NVRM: The NVIDIA GPU <bus>" record

    def lost_gpus(self):
        """GPUs the kernel log said fell off the bus (Xid 79, or the message without an Xid), as
        ``[{"pci.bus_id", "message"}]`` like ``gpu_status.lost``; kept until :meth:`forget`."""
        return list(self._lost.values())

    def forget(self, bus_id):
        """Drop ``bus_id`` from :meth:`lost_gpus` (the GPU answers again, e.g. after a reset)."""
        key = bus_key(bus_id)
        for bus in [b for b in self._lost if bus_key(b) == key]:
            del self._lost[bus]

    def _mark_lost(self, bus_id, message):
        if bus_id and len(self._lost) < 64:
            self._lost[bus_id] = {"pci.bus_id": bus_id, "message": message.strip()[:1024]}

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

    def _fallen(self, seq, message, old):
        """Notice "GPU has fallen off the bus" printed without an Xid (one record or three)."""
        bus = fallen_off_bus(message)
        if bus is None:
            match = _GPU_NAMED.search(message)
            if match and "NVRM: The NVIDIA GPU" in message:
                self._named = (_bus_of(match.group("bus")), seq)
                return
            if self._named is not None and _FALLEN.search(message) and seq - self._named[1] <= FALLEN_SPAN:
                bus = self._named[0]
        if bus is not None:
            self._named = None
            if not old:
                self._mark_lost(bus, message)

    def collect(self, now=None):
        """Read what is new. Returns ``{"kmsg_state": str, "xid_events": [event, ...]}``.

        ``kmsg_state``: ``ok``, ``not_found`` (no such file), ``permission_denied`` (needs root
        or CAP_SYSLOG; ``kernel.dmesg_restrict``), ``error`` (another OS error). An event is
        :func:`parse_xid` output plus ``seq``, ``usec`` and ``time`` (epoch s, None without
        ``boot_time``). GPUs that fell off the bus (Xid 79, or the driver's message without an Xid)
        are remembered for :meth:`lost_gpus`.
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
            if "NVRM:" not in message:
                continue
            event_time = self.boot_time + usec / 1e6 if self.boot_time is not None else None
            old = self._first and event_time is not None and event_time < now - self.history_s
            if "NVRM: Xid" not in message:
                self._fallen(seq, message, old)
                continue
            event = parse_xid(message)
            if event is None or old:
                continue
            if event["xid"] == 79:
                self._mark_lost(event["pci.bus_id"], message)
            event.update(seq=seq, usec=usec, time=event_time)
            events.append(event)
        self._first = False
        return {"kmsg_state": self.state, "xid_events": events[-MAX_EVENTS:]}
