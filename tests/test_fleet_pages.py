"""Issue 24 items 3 and 4: /admin and /free at fleet size (through Datasette, in-process).

/admin: every list one page with a search (servers, GPUs, users, tokens), the scope of an invite
or user picked by search (``/admin/scope-options``), never a checkbox per server per user.
/free (the ``free_gpus`` canned query): best hosts first (one NVLink/NUMA set, then the fewest
spare free GPUs), ``:limit``/``:offset`` pages with ``total``, sorted free indexes, and
``gpu_set()`` run for one page of hosts only.
"""

import copy
import re
import sqlite3
import time
import uuid

from reports import sample_report
from test_hub_datasette import Client, ingest

from server_monitor.core import natural, topology
from server_monitor.serving.queries import QUERIES, named_parameters
from server_monitor.storage import contract, schema
from server_monitor.storage.store import store_reports


def grow(db_path, names, gpus=1, free=True, now=None):
    """Servers named ``names`` through the ingest path (validate_report, store_reports)."""
    now = time.time() if now is None else now
    template = sample_report("template", gpus=gpus, processes=0, disks=1, sample_time=now)
    conn = schema.connect(db_path)
    batch = []
    for name in names:
        report = copy.deepcopy(template)
        report["report_id"] = str(uuid.uuid4())
        report["host"]["hostname"] = name
        report["host"]["machine_id"] = "m-" + name
        for g in report["gpus"]:
            g["uuid"] = f"GPU-{name}-{g['index']}"
            if free:
                g["utilization.gpu"], g["memory.used"] = 0, 0
        batch.append((contract.validate_report(report), now))
    store_reports(conn, batch)
    conn.close()


def free_host(client, name, gpus, busy=(), order=None, topo=None):
    """A host with ``gpus`` GPUs, those in ``busy`` running a process; GPUs listed in ``order``."""
    report = sample_report(name, gpus=gpus, processes=1)
    for g in report["gpus"]:
        g["utilization.gpu"], g["memory.used"] = 0, 0
    report["processes"] = [p for p in report["processes"] if int(p["gpu_uuid"].split("-")[-4]) in busy]
    if order is not None:
        report["gpus"] = [report["gpus"][i] for i in order]
    if topo is not None:
        report["gpu_topology"] = topo
    assert ingest(client, report, client.token).status_code == 201, name


def eight_gpu_topology(link_within, link_across="SYS", nvlink_pairs=None):
    """topo -m of an 8-GPU host: GPUs 0-3 on NUMA node 0, 4-7 on 1; ``link_within`` between GPUs of
    one node, ``link_across`` between nodes; ``nvlink_pairs`` overrides single pairs."""
    gpus = [{"index": g, "cpu_affinity": "0-31" if g < 4 else "32-63", "numa_affinity": str(g // 4),
             "gpu_numa_id": None} for g in range(8)]
    links = []
    for a in range(8):
        for b in range(a + 1, 8):
            link = (nvlink_pairs or {}).get((a, b)) or (link_within if a // 4 == b // 4 else link_across)
            links.append({"a": a, "b": b, "link": link})
    return {"gpus": gpus, "links": links}


def free_rows(client, **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    response = client.get("/monitor/free_gpus.json?_shape=array&" + query)
    assert response.status_code == 200, response.text
    return response.json()


# --- item 4: /free ------------------------------------------------------------------------------

def test_item4_free_pages_with_limit_offset_and_total(admin):
    grow(admin.db, [f"node-{i:03d}" for i in range(45)], gpus=2)
    first = free_rows(admin)
    assert len(first) == 20  # a screenful by default, not every host
    assert {r["total"] for r in first} == {45}
    pages = [free_rows(admin, limit=20, offset=o) for o in (0, 20, 40)]
    assert [len(p) for p in pages] == [20, 20, 5]
    servers = [r["server"] for p in pages for r in p]
    assert sorted(servers) == [f"node-{i:03d}" for i in range(45)]  # every host once, none twice
    assert pages[0] == first  # the same order each time
    assert free_rows(admin, offset=45) == []
    assert len(free_rows(admin, limit=100000)) == 45  # limit is at most 500
    assert len(free_rows(admin, limit=0)) == 1  # ... and at least 1
    assert [r["server"] for r in free_rows(admin, count=2, model="H100", limit=3)] == ["node-000", "node-001", "node-002"]


def test_item4_free_keeps_whole_free_nodes_for_a_one_gpu_job(admin):
    """Review §2 task a: count=1 listed the emptiest nodes first, breaking up whole 8-GPU nodes."""
    free_host(admin, "whole-node", 8)
    free_host(admin, "one-left", 8, busy=range(7))
    free_host(admin, "three-left", 8, busy=range(5))
    assert [(r["server"], r["free_gpus"], r["spare"]) for r in free_rows(admin, count=1)] == [
        ("one-left", 1, 0), ("three-left", 3, 2), ("whole-node", 8, 7)]
    # A whole-node job still finds the whole node.
    assert [r["server"] for r in free_rows(admin, count=8)] == ["whole-node"]


def test_item4_free_prefers_count_gpus_on_one_nvlink_numa_set(admin):
    # Two free GPUs, but on different NUMA nodes (SYS), with the most free memory of all.
    free_host(admin, "split", 8, busy=(1, 2, 3, 5, 6, 7), topo=eight_gpu_topology("NODE"))
    # Three free GPUs: 0 and 1 on NUMA node 0 joined by an NVLink bridge (NV4), 4 on node 1.
    free_host(admin, "bridged", 8, busy=(2, 3, 5, 6, 7), topo=eight_gpu_topology("NODE", nvlink_pairs={(0, 1): "NV4"}))
    # Two free GPUs on one NUMA node, PCIe only.
    free_host(admin, "same-node", 8, busy=(0, 1, 4, 5, 6, 7), topo=eight_gpu_topology("NODE"))
    conn = sqlite3.connect(admin.db)
    conn.execute("UPDATE gpus SET memory_free_mib = memory_free_mib + 1000"
                 " WHERE server_id = (SELECT id FROM servers WHERE hostname = 'split')")
    conn.commit()
    rows = free_rows(admin, count=2)
    assert [(r["server"], r["fit"], r["cuda_visible_devices"], r["link"], r["numa_node"]) for r in rows] == [
        ("bridged", 2, "0,1", "NV4", "0"), ("same-node", 1, "2,3", "NODE", "0"), ("split", 0, "0,4", "SYS", None)]
    # NVSwitch (every pair NV18): any four free GPUs of one NUMA node are one NVLink set.
    # A whole free NUMA node beats a host with fewer spare GPUs when that one needs PCIe.
    free_host(admin, "dgx", 8, busy=(0,), topo=eight_gpu_topology("NV18", "NV18"))
    free_host(admin, "pcie-4", 8, busy=(4, 5, 6, 7), topo=eight_gpu_topology("NODE"))
    four = free_rows(admin, count=4)
    assert [(r["server"], r["fit"], r["spare"], r["cuda_visible_devices"], r["link"], r["numa_node"]) for r in four] == [
        ("dgx", 2, 3, "4,5,6,7", "NV18", "1"), ("pcie-4", 1, 0, "0,1,2,3", "NODE", "0")]


def test_item4_free_indexes_are_sorted(admin):
    """Review §4.16: "3 free: 4,7,1". A GPU that joined later (here GPU 1 swapped for a new card,
    a new UUID) has a later row; free_indexes listed the rows' order, now the indexes ascend."""
    now = time.time()
    first = sample_report("swapped", gpus=8, processes=0, sample_time=now - 60)
    assert ingest(admin, first, admin.token).status_code == 201
    report = sample_report("swapped", gpus=8, processes=1, sample_time=now)
    report["gpus"][1]["uuid"] = "GPU-new-card-0001-0000-000000000000"
    for g in report["gpus"]:
        g["utilization.gpu"], g["memory.used"] = 0, 0
    report["processes"] = [p for p in report["processes"] if p["gpu_uuid"] in
                           {g["uuid"] for g in report["gpus"] if g["index"] in (0, 2, 3, 5, 6)}]
    assert ingest(admin, report, admin.token).status_code == 201
    conn = sqlite3.connect(admin.db)
    assert conn.execute("SELECT gpu_index FROM gpus WHERE present ORDER BY id").fetchall()[-1] == (1,)
    conn.execute("UPDATE gpus SET removed_at = 1 WHERE NOT present")
    conn.commit()
    assert [(r["free_gpus"], r["free_indexes"]) for r in free_rows(admin)] == [(3, "1,4,7")]


def test_item4_free_runs_gpu_set_for_one_page_only(admin):
    """gpu_set() (Python, per host) is what made /free cost 9.5 s at 1,000 hosts; now it runs for
    the page's hosts only, whatever the size of the fleet."""
    grow(admin.db, [f"node-{i:03d}" for i in range(300)], gpus=4)
    calls = []

    def counted(*args):
        calls.append(args)
        return topology.gpu_set_sql(*args)

    conn = sqlite3.connect(admin.db)
    conn.create_function("gpu_set", 3, counted)
    natural.register(conn)  # as on every Datasette connection (plugins/sm_natural.py)
    sql = QUERIES["free_gpus"]["sql"]
    params = {k: "" for k in named_parameters(sql)}
    params.update({"_scope_all": 1, "_scope_servers": "[]", "_config_free_max_util": 10, "count": "2"})
    rows = conn.execute(sql, params).fetchall()
    assert len(rows) == 20 and len(calls) == 20
    calls.clear()
    params.update({"limit": "50", "offset": "280"})
    assert len(conn.execute(sql, params).fetchall()) == 20 and len(calls) == 20


# --- item 3: /admin -----------------------------------------------------------------------------

def _csrf(client, path="/admin"):
    return re.search(r'name="csrftoken" value="([^"]+)"', client.get(path).text).group(1)


def test_item3_admin_page_does_not_grow_with_the_fleet(admin, datasette):
    """At 1,001 servers /admin was 78,000 DOM nodes: a checkbox per server in every scope form
    (the invite form and one per user), a form per server and a row per GPU. Now the page holds
    one page of each list, whatever the fleet."""
    from datasette_auth_passwords.utils import hash_password

    from server_monitor.serving import hub

    accounts = hub.context(datasette).accounts
    for i in range(3):
        accounts.create_user(f"viewer{i}", hash_password("x" * 12, iterations=1000), "viewer", servers=[1, 2])
    grow(admin.db, [f"small-{i:03d}" for i in range(60)], gpus=2)
    small = admin.get("/admin")
    assert small.status_code == 200
    grow(admin.db, [f"large-{i:03d}" for i in range(240)], gpus=2)
    large = admin.get("/admin")
    assert len(large.text) < 1.15 * len(small.text), (len(small.text), len(large.text))
    assert 'type="checkbox" name="servers"' not in large.text  # scope by search, not by checkbox
    server_rows = re.findall(r'name="server_id" value="\d+"', large.text)
    assert len(server_rows) == 50  # one page of servers
    assert large.text.count('name="gpu_id"') == 50  # one page of GPUs
    assert "1–50 of 300" in large.text and "1–50 of 600" in large.text


def test_item3_admin_lists_search_and_page(admin):
    grow(admin.db, [f"rack{r}-node{i:02d}" for r in "ab" for i in range(60)], gpus=1)
    page = admin.get("/admin?sq=RACKB-node0#servers").text
    section = page[page.index('id="servers"'):page.index('id="identity"')]
    names = re.findall(r"<tr><td>(rackb-node\d\d)<br>", section)
    assert names == [f"rackb-node{i:02d}" for i in range(10)]
    assert "1–10 of 10" in section
    second = admin.get("/admin?sq=rackb&sp=2").text
    section = second[second.index('id="servers"'):second.index('id="identity"')]
    assert re.findall(r"<tr><td>(rack\w-node\d\d)<br>", section) == ["rackb-node50"] + [
        f"rackb-node{i}" for i in range(51, 60)]
    assert "51–60 of 60" in section and 'href="/admin?sq=rackb#servers" rel="prev"' in section
    gpus = admin.get("/admin?gq=rackA-node05").text
    assert re.findall(r"(racka-node05) · GPU 0", gpus) == ["racka-node05"]
    assert "No server matches." in admin.get("/admin?sq=nothing-like-this").text


def test_item3_admin_scope_options_find_servers_by_search(admin, datasette, hub_config):
    grow(admin.db, [f"gpu-{i:04d}" for i in range(120)], gpus=1)
    answer = admin.get("/admin/scope-options?q=GPU-01").json()
    assert answer["total"] == 20 and len(answer["options"]) == 20
    assert {o["kind"] for o in answer["options"]} == {"server"}
    assert [o["name"] for o in answer["options"]][:3] == ["gpu-0100", "gpu-0101", "gpu-0102"]
    assert admin.get("/admin/scope-options?q=gpu-0").json()["total"] == 120
    assert len(admin.get("/admin/scope-options?q=gpu-0").json()["options"]) == 20  # while typing
    assert len(admin.get("/admin/scope-options?q=gpu-0&all=1").json()["options"]) == 120  # "Add all matching"
    assert admin.get("/admin/scope-options?q=zzz").json() == {"options": [], "total": 0}
    # Only admins.
    from datasette_auth_passwords.utils import hash_password

    from server_monitor.serving import hub

    hub.context(datasette).accounts.create_user("vic", hash_password("x" * 12, iterations=1000), "analyst")
    analyst = Client(datasette)
    assert analyst.login("vic", "x" * 12).status_code == 302
    assert analyst.get("/admin/scope-options?q=gpu").status_code == 403


def test_item3_admin_scope_chosen_by_search_is_stored_and_shown(admin, datasette):
    from server_monitor.serving import hub

    grow(admin.db, [f"gpu-{i:04d}" for i in range(80)], gpus=1)
    ids = [o["id"] for o in admin.get("/admin/scope-options?q=gpu-007&all=1").json()["options"]]
    assert len(ids) == 10
    token = _csrf(admin)
    created = admin.post("/admin/invites", data={"csrftoken": token, "role": "viewer", "max_uses": "1", "hours": "24",
                                                  "scope": "some", "servers": [str(i) for i in ids]})
    assert created.status_code == 200
    accounts = hub.context(datasette).accounts
    assert accounts.invites()[0]["servers"] == sorted(ids)
    assert "10 servers: gpu-0070, gpu-0071, gpu-0072 …" in created.text
    # A user's scope: the edit form shows the chosen servers as chips; a form without the scope
    # fields (role only) keeps the scope.
    from datasette_auth_passwords.utils import hash_password

    accounts.create_user("vera", hash_password("x" * 12, iterations=1000), "viewer", servers=ids[:2])
    edit = admin.get("/admin?edit=vera").text
    form = edit[edit.index('id="user-edit"'):edit.index("</form>", edit.index('id="user-edit"'))]
    assert re.findall(r'name="servers" value="(\d+)"', form) == [str(i) for i in ids[:2]]
    assert '<span class="chip-name">gpu-0070</span>' in form
    assert admin.post("/admin/users/vera", data={"csrftoken": token, "action": "update",
                                                 "role": "viewer"}).status_code == 302
    assert accounts.user("vera")["servers"] == ids[:2]
    assert admin.post("/admin/users/vera", data={"csrftoken": token, "action": "update", "role": "viewer",
                                                 "scope": "some", "servers": [str(ids[5])]}).status_code == 302
    assert accounts.user("vera")["servers"] == [ids[5]]
    users = admin.get("/admin?uq=VER").text
    assert "1 server: gpu-0075" in users


def test_item3_admin_token_server_picked_by_id(admin, datasette):
    grow(admin.db, [f"gpu-{i:04d}" for i in range(30)], gpus=1)
    token = _csrf(admin)
    server_id = admin.get("/admin/scope-options?q=gpu-0017").json()["options"][0]["id"]
    issued = admin.post("/admin/tokens", data={"csrftoken": token, "action": "issue", "server_id": str(server_id)})
    assert issued.status_code == 200 and "Token for <strong>gpu-0017</strong>" in issued.text
    assert admin.post("/admin/tokens", data={"csrftoken": token, "action": "issue",
                                             "server_id": "999999"}).status_code == 400
    assert admin.post("/admin/tokens", data={"csrftoken": token, "action": "issue", "server_id": "x"}).status_code == 400
    listed = admin.get("/admin?tq=gpu-0017").text
    assert listed.count("<td>gpu-0017</td>") == 1


def test_item3_admin_queries_use_the_name_index(admin):
    conn = sqlite3.connect(admin.db)
    sql = QUERIES["admin_servers"]["sql"]
    params = {k: "" for k in named_parameters(sql)}
    plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
    assert "USING INDEX servers_name_key" in plan and "TEMP B-TREE" not in plan  # pages walk the index, no sort


# ---- host groups (issue 24 item 1) inside the paged /admin and /free (items 3, 4) ----------------

def _group(admin, token, group, pattern, action="add"):
    """POST /admin/groups (the "Host groups" section's bulk form): ``pattern``'s servers in ``group``."""
    response = admin.post("/admin/groups", data={"csrftoken": token, "action": action, "group": group,
                                                 "pattern": pattern})
    assert response.status_code == 302, response.text  # redirect after POST (finding F13)
    return admin.get(response.headers["location"].split("#")[0])


def test_item1_item3_scope_options_offer_host_groups_before_servers(admin):
    grow(admin.db, [f"team-{t}-{i:02d}" for t in "ab" for i in range(12)], gpus=1)
    token = _csrf(admin)
    assert "12 of 12 matching servers added to group team-a." in _group(admin, token, "team-a", "team-a-*").text
    _group(admin, token, "team-b", "team-b-*")
    answer = admin.get("/admin/scope-options?q=TEAM").json()
    assert answer["total"] == 2 + 24
    assert [(o["kind"], o["id"], o["name"]) for o in answer["options"][:2]] == [
        ("group", "team-a", "team-a"), ("group", "team-b", "team-b")]
    assert answer["options"][0]["detail"] == "host group · 12 servers now"
    assert {o["kind"] for o in answer["options"][2:]} == {"server"} and len(answer["options"]) == 20
    # One source only: the agent-token form asks for servers; an unknown kind is a 400.
    servers_only = admin.get("/admin/scope-options?q=team&kind=server").json()
    assert servers_only["total"] == 24 and {o["kind"] for o in servers_only["options"]} == {"server"}
    assert admin.get("/admin/scope-options?q=team&kind=group").json()["total"] == 2
    assert admin.get("/admin/scope-options?q=team&kind=rack").status_code == 400
    # "Add all matching" brings the groups and every matching server.
    assert len(admin.get("/admin/scope-options?q=team&all=1").json()["options"]) == 26


def test_item1_item3_invite_and_user_scoped_to_groups_by_the_picker_fields(admin, datasette):
    from datasette_auth_passwords.utils import hash_password

    from server_monitor.serving import hub

    grow(admin.db, [f"team-{t}-{i:02d}" for t in "abc" for i in range(5)], gpus=1)
    token = _csrf(admin)
    for t in "abc":
        _group(admin, token, f"team-{t}", f"team-{t}-*")
    server_c0 = admin.get("/admin/scope-options?q=team-c-00&kind=server").json()["options"][0]["id"]
    accounts = hub.context(datasette).accounts
    # Two group chips and one server chip, as static/admin.js posts them (one hidden input each).
    created = admin.post("/admin/invites", data={"csrftoken": token, "role": "viewer", "max_uses": "1", "hours": "24",
                                                  "scope": "some", "groups": ["team-b", "team-a"],
                                                  "servers": [str(server_c0)]})
    assert created.status_code == 200
    assert accounts.invites()[0]["groups"] == ["team-a", "team-b"] and accounts.invites()[0]["servers"] == [server_c0]
    assert "groups team-a, team-b + 1 server: team-c-00" in created.text
    assert admin.post("/admin/invites", data={"csrftoken": token, "role": "viewer", "scope": "some",
                                              "groups": ["team-a", "no/slash"]}).status_code == 400
    # A user: the edit form shows the groups as chips posting "groups"; a role-only form keeps them.
    accounts.create_user("gina", hash_password("x" * 12, iterations=1000), "viewer", servers=[], groups=["team-b"])
    edit = admin.get("/admin?edit=gina").text
    form = edit[edit.index('id="user-edit"'):edit.index("</form>", edit.index('id="user-edit"'))]
    assert re.findall(r'name="groups" value="([^"]+)"', form) == ["team-b"]
    assert 'data-kind="group" data-id="team-b"' in form
    assert admin.post("/admin/users/gina", data={"csrftoken": token, "action": "update",
                                                 "role": "viewer"}).status_code == 302
    assert accounts.user("gina")["groups"] == ["team-b"]
    assert admin.post("/admin/users/gina", data={"csrftoken": token, "action": "update", "role": "viewer",
                                                 "scope": "some", "groups": ["team-c"]}).status_code == 302
    assert accounts.user("gina")["groups"] == ["team-c"] and accounts.user("gina")["servers"] == []
    assert "group team-c" in admin.get("/admin?uq=gina").text
    # The viewer sees exactly the group's servers, and a server put in the group later too.
    accounts.set_password("gina", hash_password("y" * 12, iterations=1000))
    viewer = Client(datasette)
    assert viewer.login("gina", "y" * 12).status_code == 302
    seen = lambda: sorted(r["name"] for r in viewer.get("/monitor/servers.json?_shape=array").json())  # noqa: E731
    assert seen() == [f"team-c-{i:02d}" for i in range(5)]
    _group(admin, token, "team-c", "team-a-00")
    assert seen() == ["team-a-00"] + [f"team-c-{i:02d}" for i in range(5)]
    # Scope "all" clears the groups with the servers.
    assert admin.post("/admin/users/gina", data={"csrftoken": token, "action": "update", "role": "viewer",
                                                 "scope": "all", "groups": ["team-a"]}).status_code == 302
    assert accounts.user("gina")["groups"] == [] and accounts.user("gina")["servers"] is None


def test_item1_item4_free_pages_of_one_group(admin):
    grow(admin.db, [f"ga-{i:02d}" for i in range(30)] + [f"gb-{i:02d}" for i in range(10)], gpus=2)
    token = _csrf(admin)
    _group(admin, token, "cluster-a", "ga-*")
    every = free_rows(admin, limit=20)
    assert every[0]["total"] == 40
    first = free_rows(admin, group="cluster-a", limit=20)
    second = free_rows(admin, group="cluster-a", limit=20, offset=20)
    assert len(first) == 20 and len(second) == 10 and first[0]["total"] == second[0]["total"] == 30
    assert {r["server"] for r in first + second} == {f"ga-{i:02d}" for i in range(30)}
    assert all(r["visible_devices"] for r in second)  # gpu_set() ran for that page's hosts
    assert free_rows(admin, group="nobody-here") == []
    assert free_rows(admin, group="cluster-a", count=2, limit=5)[0]["total"] == 30
