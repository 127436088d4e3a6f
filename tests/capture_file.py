"""Reading the real nvidia-smi captures in ``tests/fixtures/captures/`` (see SOURCE.md there).

A capture file is a sequence of sections, each opened by a banner::

    ################################################################################
    # load :: query-gpu (csv, what the exporter parses)
    # $ nvidia-smi --query-gpu=timestamp,driver_version,... --format=csv
    ################################################################################
    <raw output>

Used by the fake ``nvidia-smi`` and by the parser tests. Standard library only.
"""

import os
import re

CAPTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "captures")
BANNER = "#" * 80


def capture_path(name):
    """Path of a capture by file name or by a unique substring of it (``"h100-80gb"``)."""
    if os.path.exists(name):
        return name
    matches = [f for f in sorted(os.listdir(CAPTURE_DIR)) if name in f and f.endswith(".txt")]
    if len(matches) != 1:
        raise FileNotFoundError(f"no unique capture matching {name!r}: {matches}")
    return os.path.join(CAPTURE_DIR, matches[0])


def all_captures():
    """File names of every capture."""
    return sorted(f for f in os.listdir(CAPTURE_DIR) if f.endswith(".txt"))


class Capture:
    """Sections of one capture file, keyed by ``"<state> :: <what>"``."""

    def __init__(self, path):
        self.path = capture_path(path)
        with open(self.path, "rb") as fp:
            text = fp.read().decode("utf-8", errors="replace")
        self.sections = {}
        parts = text.split(BANNER + "\n")
        # parts alternate: header block ("# a :: b\n# $ cmd\n") and body.
        for i in range(1, len(parts) - 1, 2):
            header, body = parts[i], parts[i + 1]
            match = re.match(r"# (.+?)\n", header)
            if match:
                self.sections[match.group(1).strip()] = body.rstrip("\n")

    def section(self, state, prefix):
        """Body of the first section ``"<state> :: <prefix>..."``."""
        for key, body in self.sections.items():
            if key.startswith(f"{state} :: {prefix}"):
                return body
        raise KeyError(f"{self.path}: no section {state} :: {prefix}")

    def query_gpu(self, state):
        """Rows of the full ``--query-gpu`` section: list of ``{field: (text, unit)}``.

        ``text`` is the cell as printed with units (``"81559 MiB"``); ``unit`` comes from
        the header (``memory.total [MiB]`` → ``"MiB"``) or is None.
        """
        lines = [ln for ln in self.section(state, "query-gpu").splitlines() if ln.strip()]
        header = [h.strip() for h in lines[0].split(", ")]
        fields = []
        for h in header:
            m = re.match(r"(.+?) \[(.+)\]$", h)
            fields.append((m.group(1), m.group(2)) if m else (h, None))
        rows = []
        for line in lines[1:]:
            cells = line.split(", ")
            assert len(cells) == len(fields), f"{self.path}: {len(cells)} cells for {len(fields)} fields"
            rows.append({name: (cell.strip(), unit) for (name, unit), cell in zip(fields, cells)})
        return rows

    def compute_apps(self, state):
        """Rows of ``--query-compute-apps`` as dicts (process_name may hold ', ')."""
        body = self.section(state, "query-compute-apps")
        rows = []
        for line in body.splitlines():
            if not line.strip() or line.startswith("timestamp,"):
                continue
            # timestamp, gpu_name, gpu_bus_id, gpu_serial, gpu_uuid, pid, process_name, used_gpu_memory
            head = line.split(", ", 6)
            name, _, mem = head[6].rpartition(", ")
            rows.append(
                {
                    "gpu_name": head[1], "gpu_bus_id": head[2], "gpu_serial": head[3],
                    "gpu_uuid": head[4], "pid": head[5], "process_name": name,
                    "used_gpu_memory": mem,
                }
            )
        return rows

    def help_query_gpu(self):
        """Text of ``nvidia-smi --help-query-gpu``."""
        return self.section("capabilities", "help-query-gpu")

    def aliases(self):
        """Every query name (and alias) -> the canonical name used in the csv header.

        From ``--help-query-gpu`` lines such as ``"clocks.current.sm" or "clocks.sm"``.
        """
        table = {}
        for line in self.help_query_gpu().splitlines():
            if line.startswith('"'):
                names = re.findall(r'"([^"]+)"', line)
                for name in names:
                    table[name] = names[0]
        return table

    def version(self):
        """Text of ``nvidia-smi --version``."""
        return self.section("capabilities", "version")
