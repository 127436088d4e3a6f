"""Who owns a GPU process: user and container, read from ``/proc`` without forking.

* UID: the real UID on the ``Uid:`` line of ``/proc/<pid>/status``.
* User name: the host's passwd (``pwd``); for a UID shifted by a user namespace
  (unprivileged LXC/Incus, rootless Podman: e.g. 1001000) the name comes from the
  container's own ``/proc/<pid>/root/etc/passwd`` after mapping through
  ``/proc/<pid>/uid_map`` (readable when the agent runs as root), else the bare UID.
* Container/job: ``/proc/<pid>/cgroup`` parsed by :mod:`monitor_agent.cgroups`; Docker
  names from ``/var/lib/docker/containers/<id>/config.v2.json`` when readable.

A process that exits while we look is reported without owner rather than failing.
"""

import json
import os
import pwd

from . import cgroups


def _read(path, limit=65536):
    try:
        with open(path, "rb") as fp:
            return fp.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return None


def parse_status_uid(text):
    """Real UID from the text of ``/proc/<pid>/status``, or None."""
    for line in (text or "").splitlines():
        if line.startswith("Uid:"):
            parts = line.split()
            if len(parts) > 1 and parts[1].isdigit():
                return int(parts[1])
    return None


def parse_uid_map(text):
    """``/proc/<pid>/uid_map`` lines to ``[(inside, outside, count), ...]``."""
    ranges = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            ranges.append(tuple(int(p) for p in parts))
    return ranges


def inside_uid(host_uid, uid_map):
    """The UID a process sees inside its user namespace, or None when unmapped/identity."""
    for inside, outside, count in uid_map:
        if outside <= host_uid < outside + count and inside != outside:
            return host_uid - outside + inside
    return None


def passwd_names(text):
    """``/etc/passwd`` text to ``{uid: name}``."""
    names = {}
    for line in (text or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            names.setdefault(int(parts[2]), parts[0])
    return names


class ProcessInfo:
    """Resolves owners of PIDs; caches names for the lifetime of one collection cycle.

    ``proc_root``: the procfs mount (``/proc``; tests point it at a fixture tree).
    ``docker_root``: Docker's state directory for container names.
    """

    def __init__(self, proc_root="/proc", docker_root="/var/lib/docker"):
        self.proc_root = proc_root
        self.docker_root = docker_root
        self._host_names = {}
        self._container_passwd = {}
        self._docker_names = {}

    def new_cycle(self):
        """Forget cached names (users and containers may change between cycles)."""
        self._host_names.clear()
        self._container_passwd.clear()
        self._docker_names.clear()

    def _host_name(self, uid):
        if uid not in self._host_names:
            try:
                self._host_names[uid] = pwd.getpwuid(uid).pw_name
            except (KeyError, OverflowError):
                self._host_names[uid] = None
        return self._host_names[uid]

    def _container_user(self, pid, uid, container):
        mapped = inside_uid(uid, parse_uid_map(_read(f"{self.proc_root}/{pid}/uid_map")))
        if mapped is None:
            return None
        key = container or pid
        if key not in self._container_passwd:
            self._container_passwd[key] = passwd_names(_read(f"{self.proc_root}/{pid}/root/etc/passwd", 1 << 20))
        return self._container_passwd[key].get(mapped)

    def _docker_name(self, container_id):
        if container_id not in self._docker_names:
            name = None
            text = _read(os.path.join(self.docker_root, "containers", container_id, "config.v2.json"), 1 << 22)
            if text:
                try:
                    name = (json.loads(text).get("Name") or "").lstrip("/") or None
                except ValueError:
                    name = None
            self._docker_names[container_id] = name
        return self._docker_names[container_id]

    def owner(self, pid):
        """``{"uid", "user", "container", "container_kind"}`` for ``pid``; Nones if gone."""
        info = {"uid": None, "user": None, "container": None, "container_kind": None}
        if pid is None:
            return info
        uid = parse_status_uid(_read(f"{self.proc_root}/{pid}/status"))
        cgroup_text = _read(f"{self.proc_root}/{pid}/cgroup") or ""
        kind, container = cgroups.parse_cgroup(cgroup_text)
        if kind == "docker":
            full = cgroups.full_container_id(cgroup_text)
            container = (full and self._docker_name(full)) or container
        info.update(uid=uid, container=container, container_kind=kind)
        if uid is not None:
            user = None
            if kind not in (None, "user-slice", "slurm"):
                user = self._container_user(pid, uid, container)
            info["user"] = user or self._host_name(uid) or str(uid)
        return info
