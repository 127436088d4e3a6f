"""Pure parsing of ``/proc/<pid>/cgroup`` into the container or job a process runs in.

Handles cgroup v1 (one line per hierarchy) and v2 (``0::/path``) for LXC/Incus (with
projects), Docker, Podman, containerd/Kubernetes (pod UID), Slurm jobs and systemd user
slices. Docker, Podman and Kubernetes give ids here; names are resolved elsewhere.
"""

import re

_HEX = r"[0-9a-f]{64}"

# (kind, regex) checked in order on every cgroup path; the first match wins. Order
# matters: a Kubernetes pod runs under containerd and a Slurm step under system.slice.
_PATTERNS = (
    ("kubernetes", re.compile(
        r"kubepods[^/]*(?:/|\.slice/).*?pod([0-9a-f_-]{36})(?:\.slice)?/(?:cri-containerd-|crio-|docker-)?(" + _HEX + r")?")),
    ("slurm", re.compile(r"(?:slurmstepd\.scope|/slurm)/(?:uid_\d+/)?job_(\d+)")),
    ("incus", re.compile(r"(?:^|/)incus\.payload[./]([^/]+)")),
    ("lxc", re.compile(r"(?:^|/)lxc\.payload[./]([^/]+)")),
    ("incus", re.compile(r"machine\.slice/incus-([^/]+?)\.scope")),
    ("lxc", re.compile(r"^/lxc/([^/]+)")),
    ("docker", re.compile(r"(?:/docker/|docker-)(" + _HEX + r")")),
    ("podman", re.compile(r"libpod-(?:conmon-)?(" + _HEX + r")")),
    ("containerd", re.compile(r"cri-containerd-(" + _HEX + r")")),
    ("user-slice", re.compile(r"user\.slice/user-(\d+)\.slice")),
)


def cgroup_paths(text):
    """The cgroup paths in a ``/proc/<pid>/cgroup`` file, v2 first, without duplicates."""
    paths = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, _, path = parts
        if path and path not in paths:
            if hierarchy == "0":
                paths.insert(0, path)
            else:
                paths.append(path)
    return paths


def _unescape(name):
    # systemd escapes '-' and other bytes in unit names as \xNN.
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name)


def parse_cgroup(text):
    """Container or job of a process from its cgroup file.

    Returns ``(kind, name)``: ``kind`` one of ``kubernetes``, ``slurm``, ``incus``,
    ``lxc``, ``docker``, ``podman``, ``containerd``, ``user-slice``, or ``(None, None)``
    for a plain host process. ``name``: the LXC/Incus container name (Incus projects as
    ``project_name``), ``job <id>`` for Slurm, ``pod <uid>`` (+ short container id) for
    Kubernetes, the 12-character id for Docker/Podman/containerd, ``user-<uid>`` for a
    user slice.
    """
    for path in cgroup_paths(text):
        for kind, pattern in _PATTERNS:
            match = pattern.search(path)
            if not match:
                continue
            if kind == "kubernetes":
                pod = match.group(1).replace("_", "-")
                container = match.group(2)
                return kind, f"pod {pod}" + (f" / {container[:12]}" if container else "")
            if kind == "slurm":
                return kind, f"job {match.group(1)}"
            if kind == "user-slice":
                return kind, f"user-{match.group(1)}"
            if kind in ("docker", "podman", "containerd"):
                return kind, match.group(1)[:12]
            return kind, _unescape(match.group(1))
    return None, None


def full_container_id(text):
    """The 64-hex container id in a cgroup file (Docker/Podman/containerd), or None."""
    match = re.search(_HEX, text)
    return match.group(0) if match else None
