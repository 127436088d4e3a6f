#!/usr/bin/env python3
"""A fake ``nvidia-smi`` that answers from a real capture (tests/fixtures/captures/).

Point the agent's ``nvidia_smi`` setting at this file. It answers the queries the agent
makes (``--query-gpu=<any fields>``, ``--query-compute-apps=...``, ``--format=csv[,noheader][,nounits]``,
``--help-query-gpu``, ``--version``, ``-L``, plain ``nvidia-smi``) with the capture's values, for N GPUs.
Configured by environment variables:

``FAKE_NVSMI_CAPTURE``  capture file name or unique substring (default ``h100-80gb``)
``FAKE_NVSMI_STATE``    ``idle``, ``load`` (default) or ``cycle`` (alternates over time per GPU)
``FAKE_NVSMI_GPUS``     number of GPUs (rows repeated with other index, bus id, UUID; default 1)
``FAKE_NVSMI_SEED``     text mixed into the UUIDs so fake hosts differ (default ``fake``)
``FAKE_NVSMI_PROCS``    compute processes per loaded GPU (default: as in the capture)
``FAKE_NVSMI_PID``      ``capture`` (default) or ``parent``: report the caller's PID (real
                        /proc data for attribution tests) or an integer PID
``FAKE_NVSMI_DROP``     comma-separated fields this "driver" does not know
``FAKE_NVSMI_MODE``     ``ok`` (default), ``driver_mismatch``, ``no_devices``,
                        ``driver_not_loaded``, ``no_permission``, ``lost:<index>``,
                        ``is_lost:<index>``, ``lost_nospace:<index>`` (no space after
                        "GPU"), ``reset:<index>`` ([GPU requires reset] cells), ``hang`` (sleeps forever), ``hang_hard``
                        (ignores SIGTERM, a child holds stdout open), ``slow:<seconds>``,
                        ``garbage`` (non-UTF-8 bytes and a comma in a process name),
                        ``sentinels`` (every sentinel spelling in the GPU fields)
``FAKE_NVSMI_PROCNAME`` process path printed for each GPU's first compute process (any text,
                        e.g. with U+200B: security review N2)
``FAKE_NVSMI_LOG``      append one line per invocation (argv) to this file
``FAKE_NVSMI_TOPO``     file answered to ``topo -m`` (default: the capture's one-GPU matrix)
``FAKE_NVSMI_MIG_TABLE`` file answered to plain ``nvidia-smi`` (default: the capture's table), e.g. a
                        MIG table of tests/fixtures/mig_corpus/
``FAKE_NVSMI_MIG_LIST``  file answered to ``-L``: its ``MIG`` lines under the GPU of the same index
                        (the GPU lines get the fake's UUIDs, so the agent can join them)
``FAKE_NVSMI_PIDS``     comma-separated PIDs of each loaded GPU's compute processes (one process each)
"""

import hashlib
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_file import Capture  # noqa: E402

SENTINEL_SPELLINGS = [
    "[N/A]", "N/A", "[Not Supported]", "[Unknown Error]",
    "[Requested functionality has been deprecated]", "ERR!", "[Insufficient Permissions]",
]


def env(name, default=None):
    return os.environ.get(name, default)


def out(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def fail(message, code):
    out(message + "\n")
    sys.exit(code)


def fake_uuid(seed, index):
    digest = hashlib.sha1(f"{seed}:{index}".encode()).hexdigest()
    return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def bus_id(index):
    return f"00000000:{0x18 + index * 0x10:02X}:00.0"


def gpu_state(index):
    state = env("FAKE_NVSMI_STATE", "load")
    if state != "cycle":
        return state
    return "load" if (int(time.time() // 60) + index) % 3 else "idle"


def gpu_rows(cap, count, seed):
    """One dict per fake GPU: field -> (text, unit), with identity fields rewritten."""
    rows = []
    for i in range(count):
        row = dict(cap.query_gpu(gpu_state(i))[0])
        for field in ("uuid", "gpu_uuid"):
            row[field] = (fake_uuid(seed, i), None)
        row["index"] = (str(i), None)
        row["pci.bus_id"] = (bus_id(i), None)
        row["count"] = (str(count), None)
        rows.append(row)
    return rows


def render(value, unit, nounits):
    text, _ = value if isinstance(value, tuple) else (value, None)
    if nounits and unit and text.endswith(" " + unit):
        return text[: -len(unit) - 1]
    return text


def query_gpu(cap, fields, fmt, count, seed):
    known = cap.aliases()
    dropped = set(filter(None, env("FAKE_NVSMI_DROP", "").split(",")))
    for field in fields:
        if field not in known or field in dropped:
            out(f'Field "{field}" is not a valid field to query.\n\n')
            sys.exit(2)
    nounits = "nounits" in fmt
    rows = gpu_rows(cap, count, seed)
    mode = env("FAKE_NVSMI_MODE", "ok")
    lines = []
    if "noheader" not in fmt:
        lines.append(", ".join(fields))
    exit_code = 0
    for i, row in enumerate(rows):
        if mode in (f"lost:{i}", f"is_lost:{i}", f"lost_nospace:{i}"):
            exit_code = 15
            if mode.startswith("lost_nospace"):
                # NVIDIA/nvidia-container-toolkit#69, #846: no space after "GPU".
                lines.append(f"Unable to determine the device handle for GPU{bus_id(i)[4:]}: Unknown Error")
            elif mode.startswith("lost"):
                lines.append(f"Unable to determine the device handle for GPU {bus_id(i)}: Unknown Error")
            else:
                lines.append(f"GPU {bus_id(i)}: GPU is lost. Reboot the system to recover this GPU")
            continue
        cells = []
        for j, field in enumerate(fields):
            canonical = known[field]
            text, unit = row.get(canonical, row.get(field, ("[N/A]", None)))
            if mode == "sentinels" and field not in ("index", "uuid", "pci.bus_id", "name"):
                text, unit = SENTINEL_SPELLINGS[j % len(SENTINEL_SPELLINGS)], None
            if mode == f"reset:{i}" and field not in ("index", "uuid", "pci.bus_id", "name"):
                text, unit = "[GPU requires reset]", None
            cells.append(render((text, unit), unit, nounits))
        lines.append(", ".join(cells))
    out("\n".join(lines) + "\n")
    sys.exit(exit_code)


def query_apps(cap, fields, fmt, count, seed):
    nounits = "nounits" in fmt
    base = cap.compute_apps("load")
    per_gpu = int(env("FAKE_NVSMI_PROCS", str(len(base))))
    pid_mode = env("FAKE_NVSMI_PID", "capture")
    pids = [p for p in env("FAKE_NVSMI_PIDS", "").split(",") if p]
    if pids:
        per_gpu = len(pids)
    mode = env("FAKE_NVSMI_MODE", "ok")
    lines = [] if "noheader" in fmt else [", ".join(fields)]
    for i in range(count):
        if gpu_state(i) != "load" or mode in (f"lost:{i}", f"is_lost:{i}", f"lost_nospace:{i}"):
            continue
        for k in range(per_gpu):
            app = dict(base[k % len(base)]) if base else {"pid": "1", "process_name": "python", "used_gpu_memory": "100 MiB"}
            app["gpu_uuid"] = fake_uuid(seed, i)
            app["gpu_bus_id"] = bus_id(i)
            if pids:
                app["pid"] = pids[k]
            elif pid_mode == "parent":
                app["pid"] = str(os.getppid())
            elif pid_mode.isdigit():
                app["pid"] = pid_mode
            elif k >= len(base):
                app["pid"] = str(int(app["pid"]) + 1000 * i + k)
            if mode == "garbage" and k == 0:
                app["process_name"] = "/opt/bad\udcff\udcfename, with comma/train.py"
            elif env("FAKE_NVSMI_PROCNAME") and k == 0:
                app["process_name"] = env("FAKE_NVSMI_PROCNAME")
            mem = app["used_gpu_memory"]
            if nounits and mem.endswith(" MiB"):
                mem = mem[:-4]
            app["used_gpu_memory"] = mem
            lines.append(", ".join(str(app.get(f, "[N/A]")) for f in fields))
    data = ("\n".join(lines) + "\n").encode("utf-8", errors="surrogateescape")
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def hang_hard():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork() == 0:  # the child keeps stdout open after the parent is gone
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)
        os._exit(0)
    time.sleep(3600)


def main(argv):
    if env("FAKE_NVSMI_LOG"):
        with open(env("FAKE_NVSMI_LOG"), "a") as fp:
            fp.write(" ".join(argv) + "\n")
    mode = env("FAKE_NVSMI_MODE", "ok")
    if mode == "hang":
        time.sleep(3600)
    if mode == "hang_hard":
        hang_hard()
    if mode.startswith("slow:"):
        time.sleep(float(mode.split(":", 1)[1]))
    if mode == "driver_mismatch":
        fail("Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 590.48", 18)
    if mode == "no_devices":
        fail("No devices were found", 6)
    if mode == "driver_not_loaded":
        fail("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.", 9)
    if mode == "no_permission":
        fail("Failed to initialize NVML: Insufficient Permissions", 4)

    cap = Capture(env("FAKE_NVSMI_CAPTURE", "h100-80gb"))
    count = int(env("FAKE_NVSMI_GPUS", "1"))
    seed = env("FAKE_NVSMI_SEED", "fake")
    fmt = []
    query = None
    for arg in argv[1:]:
        if arg.startswith("--format="):
            fmt = arg.split("=", 1)[1].split(",")
        elif arg.startswith("--query-gpu=") or arg.startswith("--query-compute-apps="):
            query = arg
    if "--help-query-gpu" in argv:
        out(cap.help_query_gpu() + "\n")
        return
    if "--version" in argv:
        out(cap.version() + "\n")
        return
    if "-L" in argv and env("FAKE_NVSMI_MIG_LIST"):
        # The fixture's MIG lines under the GPU line of the same index, that GPU with the fake's UUID.
        with open(env("FAKE_NVSMI_MIG_LIST")) as fp:
            listing = fp.read().splitlines()
        rows = {row["index"][0]: row for row in gpu_rows(cap, count, seed)}
        for line in listing:
            if line.startswith("GPU "):
                index = line.split(":", 1)[0][4:]
                if index not in rows:
                    continue
                row = rows[index]
                out(f"GPU {index}: {row['name'][0]} (UUID: {row['uuid'][0]})\n")
            else:
                out(line.rstrip() + "\n")
        return
    if "-L" in argv:
        # MIG device lines of the capture (MIG captures only), under every GPU.
        mig_lines = [ln for ln in cap.section("capabilities", "list (-L)").splitlines() if ln.startswith("  MIG ")]
        for row in gpu_rows(cap, count, seed):
            out(f"GPU {row['index'][0]}: {row['name'][0]} (UUID: {row['uuid'][0]})\n")
            for line in mig_lines:
                out(line.replace("MIG-0000", f"MIG-{int(row['index'][0]):04d}", 1) + "\n")
        return
    if argv[1:] == ["topo", "-m"]:
        # The capture's matrix (one GPU), or a multi-GPU fixture named by FAKE_NVSMI_TOPO.
        if env("FAKE_NVSMI_TOPO"):
            with open(env("FAKE_NVSMI_TOPO")) as fp:
                out(fp.read())
        else:
            out(cap.section("capabilities", "topo -m") + "\n")
        return
    if len(argv) == 1 and env("FAKE_NVSMI_MIG_TABLE"):
        with open(env("FAKE_NVSMI_MIG_TABLE")) as fp:
            out(fp.read())
        return
    if len(argv) == 1:
        # Plain nvidia-smi: the capture's default table (GPU 0's state).
        out(cap.section(gpu_state(0), "nvidia-smi (default table)") + "\n")
        return
    if query is None:
        fail("fake nvidia-smi: only --query-gpu, --query-compute-apps, --help-query-gpu, --version, -L", 2)
    kind, _, names = query.partition("=")
    fields = [f for f in names.split(",") if f]
    if kind == "--query-gpu":
        query_gpu(cap, fields, fmt, count, seed)
    else:
        query_apps(cap, fields, fmt, count, seed)


if __name__ == "__main__":
    main(sys.argv)
