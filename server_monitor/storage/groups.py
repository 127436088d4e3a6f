"""Host groups (issue 24 item 1): which groups each server belongs to, and from where.

A group is a short name (cluster, rack, Slurm partition, project) matching
:data:`GROUP_PATTERN`. A server's groups are the **union** of three sources, one row each in
``server_groups (server_id, grp, source)`` (schema migration 24):

* ``agent``: the ``groups:`` list of the host's ``agent_config.yaml``, sent in every report
  (``groups`` in the report contract). Each report replaces the host's ``agent`` rows; a
  report without the field (an older agent) leaves them as they are.
* ``slurm``: the node's Slurm partitions (``scontrol show node``'s ``Partitions=``), sent as
  ``slurm_partitions`` where the agent reads Slurm. A report without them (no Slurm, or the
  read failed) leaves the rows as they are.
* ``admin``: set by admins in ``/admin`` (bulk add/remove of one group on many servers).
  Admin rows never touch the other sources' rows, and reports never touch admin rows.

No source overrides another: a server is in a group when any source puts it there. To take a
server out of a group that its agent or Slurm reports, change it at that source (the agent's
config, the Slurm partition); the admin can only add or remove the ``admin`` membership.
Names are case-sensitive (Slurm partition names are).
"""

import re

GROUP_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
GROUP_RE = re.compile(GROUP_PATTERN)
SOURCES = ("agent", "slurm", "admin")
# Groups one source may give one server (the report contract's bound too).
MAX_GROUPS = 32


class GroupError(ValueError):
    """A group name or list that breaks the rules above; ``str()`` is shown to the user."""


def check_name(name):
    """``name`` stripped, or :class:`GroupError` unless it matches :data:`GROUP_PATTERN`."""
    if not isinstance(name, str) or not GROUP_RE.fullmatch(name.strip()):
        shown = name if isinstance(name, str) and len(name) <= 80 else "(too long)"
        raise GroupError(f"Group names are 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
                         f"digit; {shown!r} is not one.")
    return name.strip()


def parse_list(text):
    """Group names from user text (commas and/or spaces between names): a sorted list without
    duplicates. Raises :class:`GroupError` for a bad name or more than :data:`MAX_GROUPS`."""
    names = sorted({check_name(part) for part in re.split(r"[\s,]+", text or "") if part})
    if len(names) > MAX_GROUPS:
        raise GroupError(f"At most {MAX_GROUPS} groups.")
    return names


def sync_reported(conn, server_id, source, names):
    """Make ``server_id``'s rows of ``source`` (``agent`` or ``slurm``) exactly ``names``.

    ``names``: the report's validated list (the contract checked each name); ``None`` leaves
    the rows alone. Reads the current rows first and writes only when they differ, so an
    unchanged report costs one indexed read. Runs inside the caller's transaction.
    """
    if names is None:
        return False
    want = set(names)
    have = {row[0] for row in conn.execute(
        "SELECT grp FROM server_groups WHERE server_id = ? AND source = ?", (server_id, source))}
    if want == have:
        return False
    for name in have - want:
        conn.execute("DELETE FROM server_groups WHERE server_id = ? AND grp = ? AND source = ?",
                     (server_id, name, source))
    conn.executemany("INSERT OR IGNORE INTO server_groups (server_id, grp, source) VALUES (?, ?, ?)",
                     [(server_id, name, source) for name in sorted(want - have)])
    return True


def set_admin(conn, server_ids, group, add=True):
    """Add (or with ``add=False`` remove) the ``admin`` membership of ``group`` for every id in
    ``server_ids`` (ids of servers that do not exist are skipped). Returns how many rows changed.
    Raises :class:`GroupError` for a bad name. Runs in the caller's transaction (or autocommit)."""
    group = check_name(group)
    ids = sorted({int(i) for i in server_ids})
    changed = 0
    for server_id in ids:
        if add:
            cur = conn.execute("INSERT OR IGNORE INTO server_groups (server_id, grp, source)"
                               " SELECT id, ?, 'admin' FROM servers WHERE id = ?", (group, server_id))
        else:
            cur = conn.execute("DELETE FROM server_groups WHERE server_id = ? AND grp = ? AND source = 'admin'",
                               (server_id, group))
        changed += cur.rowcount
    return changed


def members(conn, groups):
    """Sorted ids of the servers in any of ``groups`` (any source). ``[]`` for no groups."""
    groups = list(groups or ())
    if not groups:
        return []
    marks = ",".join("?" * len(groups))
    return [row[0] for row in conn.execute(
        f"SELECT DISTINCT server_id FROM server_groups WHERE grp IN ({marks}) ORDER BY server_id", groups)]


def summary(conn):
    """``[{"group", "servers", "sources"}]``: every group with its member count and the sources
    that put servers in it (``"agent,admin"``), by name."""
    rows = conn.execute("SELECT grp, count(DISTINCT server_id), group_concat(DISTINCT source)"
                        " FROM server_groups GROUP BY grp ORDER BY grp")
    return [{"group": g, "servers": n, "sources": s} for g, n, s in rows]


__all__ = ["GROUP_PATTERN", "SOURCES", "MAX_GROUPS", "GroupError", "check_name", "parse_list", "sync_reported",
           "set_admin", "members", "summary"]
