"""Choosing a set of free GPUs by topology (``nvidia-smi topo -m`` as stored in ``gpu_links``).

``choose(candidates, links, want)`` prefers, in order: a set on one NUMA node, joined by NVLink
(more bonded links better), with the weakest link between any two of its GPUs as strong as
possible, then the most free memory. It is registered as the SQL function ``gpu_set`` on
Datasette's connections (``plugins/sm_topology.py``) for the ``free_gpus`` canned query.
"""

import itertools
import json
import re

# nvidia-smi topo -m connection names, weakest first (NV# ranks above all, by its # of links).
PCIE_RANK = {"SYS": 1, "SOC": 1, "NODE": 2, "PHB": 3, "PXB": 4, "PIX": 5}
# A NUMA node set as nvidia-smi's "NUMA Affinity" column prints it: "0", "0-1", "0,8,252-255".
_NUMA_SET = re.compile(r"\d{1,4}(?:[-,]\d{1,4}){0,63}")
# A CPU list as the "CPU Affinity" column prints it: "0-31,64-95".
_CPU_SET = re.compile(r"\d{1,5}(?:[-,]\d{1,5}){0,255}")
# Beyond this many candidates on one host, pick greedily instead of trying every set.
EXHAUSTIVE_MAX = 16


def numa_node(text):
    """``text`` when it is a NUMA node set (``0``, ``0-1``), else None.

    Agents before issue 22 read the NUMA column of ``topo -m`` on InfiniBand nodes (``mlx5_*``
    NIC columns) from a link column and sent ``SYS`` / ``NODE``; a link word is never a NUMA node.
    """
    if not isinstance(text, str):
        return None
    text = text.strip()
    return text if _NUMA_SET.fullmatch(text) else None


def cpu_list(text):
    """``text`` when it is a CPU list (``0-31,64-95``), else None (a link word from an old agent)."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    return text if _CPU_SET.fullmatch(text) else None


def link_rank(link):
    """Strength of one connection name: ``NV<n>`` → 100 + n, PCIe kinds 1..5, unknown 0."""
    if not link:
        return 0
    match = re.fullmatch(r"NV(\d+)", link)
    if match:
        return 100 + int(match.group(1))
    return PCIE_RANK.get(link, 0)


def _score(combo, links):
    numas = {numa_node(c.get("numa")) for c in combo}
    same_numa = len(numas) == 1 and None not in numas
    ranks = [link_rank(links.get((min(a["i"], b["i"]), max(a["i"], b["i"]))))
             for a, b in itertools.combinations(combo, 2)]
    weakest = min(ranks) if ranks else 0
    nvlinked = sum(1 for r in ranks if r >= 100)
    return (same_numa, weakest, nvlinked, min(c["free"] or 0 for c in combo), sum(c["free"] or 0 for c in combo),
            [-c["i"] for c in combo])


def choose(candidates, links, want):
    """The best ``want`` GPUs among ``candidates``.

    ``candidates``: dicts ``{"i": index, "numa": NUMA node text or None, "free": MiB, "uuid", "name"}``.
    ``links``: ``{(a, b): "NV4" | "PIX" | ...}`` with ``a < b``. Returns None when fewer than
    ``want`` candidates, else ``{"devices": "7,2", "uuids", "min_free", "models", "link", "numa"}``:
    devices by most free memory first; ``link`` the weakest connection inside the set (None for
    one GPU or unknown topology); ``numa`` the common NUMA node, else None.
    """
    want = max(1, int(want or 1))
    if len(candidates) < want:
        return None
    pool = sorted(candidates, key=lambda c: (-(c["free"] or 0), c["i"]))
    if len(pool) > EXHAUSTIVE_MAX:
        best = _greedy(pool, links, want)
    else:
        best = max(itertools.combinations(pool, want), key=lambda combo: _score(combo, links))
    best = sorted(best, key=lambda c: (-(c["free"] or 0), c["i"]))
    pairs = [links.get((min(a["i"], b["i"]), max(a["i"], b["i"]))) for a, b in itertools.combinations(best, 2)]
    known = [p for p in pairs if p]
    weakest = min(known, key=link_rank) if known and len(known) == len(pairs) else None
    numas = {numa_node(c.get("numa")) for c in best}
    return {
        "devices": ",".join(str(c["i"]) for c in best),
        "uuids": ",".join(str(c.get("uuid")) for c in best),
        "min_free": min(c["free"] or 0 for c in best),
        "models": ",".join(sorted({c.get("name") or "" for c in best})),
        "link": weakest,
        "numa": numas.pop() if len(numas) == 1 else None,
    }


def _greedy(pool, links, want):
    """Seed with each GPU, add the GPU with the strongest weakest link to the set so far; keep the best."""
    best = None
    for seed in pool:
        chosen = [seed]
        rest = [c for c in pool if c is not seed]
        while len(chosen) < want:
            nxt = max(rest, key=lambda c: _score(chosen + [c], links))
            chosen.append(nxt)
            rest.remove(nxt)
        if best is None or _score(chosen, links) > _score(best, links):
            best = chosen
    return best


def gpu_set_sql(candidates_json, links_json, want):
    """SQL function ``gpu_set(candidates json array, links json array [[a, b, link], ...], want)``.

    Returns the JSON text of :func:`choose`'s answer, or NULL. Bad JSON gives NULL (never an error).
    """
    try:
        candidates = [c for c in json.loads(candidates_json or "[]") if isinstance(c, dict) and "i" in c]
        links = {}
        for item in json.loads(links_json or "[]"):
            if isinstance(item, list) and len(item) == 3 and item[0] is not None and item[1] is not None:
                a, b = int(item[0]), int(item[1])
                links[(min(a, b), max(a, b))] = item[2]
    except (ValueError, TypeError):
        return None
    answer = choose(candidates, links, want)
    return None if answer is None else json.dumps(answer)


def register(conn):
    """Register ``gpu_set`` on a ``sqlite3`` connection (deterministic)."""
    conn.create_function("gpu_set", 3, gpu_set_sql, deterministic=True)
