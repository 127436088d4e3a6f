"""Choosing a set of free GPUs by topology (``nvidia-smi topo -m`` as stored in ``gpu_links``).

``choose(candidates, links, want)`` prefers, in order: a set on one NUMA node, joined by NVLink
(more bonded links better), with the weakest link between any two of its GPUs as strong as
possible, then the most free memory. It is registered as the SQL function ``gpu_set`` on
Datasette's connections (``plugins/sm_topology.py``) for the ``free_gpus`` canned query.
"""

import itertools
import json
import math
import re
import time

# nvidia-smi topo -m connection names, weakest first (NV# ranks above all, by its # of links).
PCIE_RANK = {"SYS": 1, "SOC": 1, "NODE": 2, "PHB": 3, "PXB": 4, "PIX": 5}
# A NUMA node set as nvidia-smi's "NUMA Affinity" column prints it: "0", "0-1", "0,8,252-255".
_NUMA_SET = re.compile(r"\d{1,4}(?:[-,]\d{1,4}){0,63}")
# A CPU list as the "CPU Affinity" column prints it: "0-31,64-95".
_CPU_SET = re.compile(r"\d{1,5}(?:[-,]\d{1,5}){0,255}")
# Try every set when there are at most this many (C(16, 8) = 12,870 is 0.4 s: too many), else greedy.
EXHAUSTIVE_MAX_SETS = 2000
# Bounds of gpu_set() (security review N1): it runs inside SQLite, where the query time limit
# (SQLite's progress handler) cannot interrupt it, so it bounds its own work. More candidates
# than a report may carry GPUs (the contract's 64) are refused (NULL); ``want`` is read as 1..16;
# one call searches for at most CHOOSE_DEADLINE_S, then keeps the best set found so far (or the
# GPUs with the most free memory). A query therefore overruns its time limit by at most one call.
MAX_CANDIDATES = 64
MAX_WANT = 16
CHOOSE_DEADLINE_S = 0.1
# JSON arguments longer than this are refused before parsing (64 candidates take about 12 KiB,
# all 2,016 links of 64 GPUs about 40 KiB).
MAX_CANDIDATES_JSON = 64 * 1024
MAX_LINKS_JSON = 256 * 1024


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


def choose(candidates, links, want, deadline_s=CHOOSE_DEADLINE_S):
    """The best ``want`` GPUs among ``candidates``.

    ``candidates``: dicts ``{"i": index, "numa": NUMA node text or None, "free": MiB, "uuid", "name"}``.
    ``links``: ``{(a, b): "NV4" | "PIX" | ...}`` with ``a < b``. Returns None when fewer than
    ``want`` candidates, else ``{"devices": "7,2", "uuids", "min_free", "models", "link", "numa"}``:
    devices by most free memory first; ``link`` the weakest connection inside the set (None for
    one GPU or unknown topology); ``numa`` the common NUMA node, else None.

    Every set is tried when there are at most :data:`EXHAUSTIVE_MAX_SETS`, else a greedy search
    (O(n²·want)). Searching stops after ``deadline_s`` seconds (N1): the best set found by then is
    kept, or, when none was complete, the ``want`` GPUs with the most free memory.
    """
    want = max(1, int(want or 1))
    if len(candidates) < want:
        return None
    deadline = time.monotonic() + deadline_s
    pool = sorted(candidates, key=lambda c: (-(c["free"] or 0), c["i"]))
    if math.comb(len(pool), want) > EXHAUSTIVE_MAX_SETS:
        best = _greedy(pool, links, want, deadline)
    else:
        best, best_score = None, None
        for combo in itertools.combinations(pool, want):
            score = _score(combo, links)
            if best_score is None or score > best_score:
                best, best_score = combo, score
            if time.monotonic() > deadline:
                break
    best = sorted(best or pool[:want], key=lambda c: (-(c["free"] or 0), c["i"]))
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


def _greedy(pool, links, want, deadline):
    """Seed with each GPU, add the GPU with the strongest weakest link to the set so far; keep the best.

    Incremental: for every GPU not yet chosen it keeps its weakest link and its NVLink count to
    the set so far, so one step costs O(n) instead of scoring every pair again (the same choice
    as ranking ``_score(chosen + [c])``, in O(n²·want) for the whole search instead of O(n²·want³)).
    Returns the best complete set found before ``deadline`` (``time.monotonic()``), or None.
    """
    ranks = {pair: link_rank(link) for pair, link in links.items()}
    numa_of = {id(c): numa_node(c.get("numa")) for c in pool}
    best, best_score = None, None
    for seed in pool:
        if best is not None and time.monotonic() > deadline:
            break
        chosen = [seed]
        numas = {numa_of[id(seed)]}
        weakest = None  # weakest link rank inside chosen (None: a single GPU, no pair yet)
        nvlinked = 0
        min_free = seed["free"] or 0
        sum_free = min_free
        rest = {}
        for c in pool:
            if c is not seed:
                r = ranks.get((min(c["i"], seed["i"]), max(c["i"], seed["i"])), 0)
                rest[id(c)] = [c, r, 1 if r >= 100 else 0]
        while len(chosen) < want:
            top, top_key = None, None
            for entry in rest.values():
                c, c_weakest, c_nvl = entry
                new_numas = numas | {numa_of[id(c)]}
                key = (len(new_numas) == 1 and None not in new_numas,
                       c_weakest if weakest is None else min(weakest, c_weakest),
                       nvlinked + c_nvl, min(min_free, c["free"] or 0), sum_free + (c["free"] or 0), -c["i"])
                if top_key is None or key > top_key:
                    top, top_key = entry, key
            c = top[0]
            chosen.append(c)
            del rest[id(c)]
            numas.add(numa_of[id(c)])
            weakest = top[1] if weakest is None else min(weakest, top[1])
            nvlinked += top[2]
            min_free = min(min_free, c["free"] or 0)
            sum_free += c["free"] or 0
            for entry in rest.values():
                r = ranks.get((min(c["i"], entry[0]["i"]), max(c["i"], entry[0]["i"])), 0)
                entry[1] = min(entry[1], r)
                entry[2] += 1 if r >= 100 else 0
        score = _score(chosen, links)
        if best_score is None or score > best_score:
            best, best_score = chosen, score
    return best


def gpu_set_sql(candidates_json, links_json, want):
    """SQL function ``gpu_set(candidates json array, links json array [[a, b, link], ...], want)``.

    Returns the JSON text of :func:`choose`'s answer, or NULL. Bad JSON gives NULL (never an error).
    Bounded (N1): more than :data:`MAX_CANDIDATES` candidates or JSON longer than
    :data:`MAX_CANDIDATES_JSON` / :data:`MAX_LINKS_JSON` characters give NULL; ``want`` is
    clamped to 1..:data:`MAX_WANT`; one call searches for at most :data:`CHOOSE_DEADLINE_S`.
    """
    try:
        if len(candidates_json or "") > MAX_CANDIDATES_JSON or len(links_json or "") > MAX_LINKS_JSON:
            return None
        want = min(MAX_WANT, max(1, int(want or 1)))
        candidates = [c for c in json.loads(candidates_json or "[]") if isinstance(c, dict) and "i" in c]
        if len(candidates) > MAX_CANDIDATES:
            return None
        for c in candidates:
            c["i"] = int(c["i"])
            c["free"] = c.get("free") if isinstance(c.get("free"), (int, float)) else 0
        links = {}
        for item in json.loads(links_json or "[]"):
            if isinstance(item, list) and len(item) == 3 and item[0] is not None and item[1] is not None:
                a, b = int(item[0]), int(item[1])
                links[(min(a, b), max(a, b))] = item[2] if isinstance(item[2], str) else None
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None
    answer = choose(candidates, links, want)
    return None if answer is None else json.dumps(answer)


def register(conn):
    """Register ``gpu_set`` on a ``sqlite3`` connection. Not marked deterministic: with its
    search deadline, a busy machine may answer a different (still valid) set."""
    conn.create_function("gpu_set", 3, gpu_set_sql)
