"""The original JSON endpoints (/api/servers...) on the session login: JSON errors only."""

import pytest
from reports import sample_report
from test_hub_datasette import Client, ingest


@pytest.fixture
def admin(datasette, hub_config):
    client = Client(datasette)
    assert client.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    for name in ("alpha", "beta"):
        assert ingest(client, sample_report(name, gpus=2, processes=1), hub_config.get("agent.token")).status_code == 201
    return client


def test_servers_with_gpus_processes_and_disks(admin):
    response = admin.get("/api/servers")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    servers = response.json()
    assert [s["name"] for s in servers] == ["alpha", "beta"]
    gpu = servers[0]["gpus"][0]
    assert gpu["memory_total_mib"] == 81559 and gpu["processes"][0]["user"] == "user0"
    assert {d["mountpoint"] for d in servers[0]["disks"]} == {"/", "/data1"}
    one = admin.get(f"/api/servers/{servers[1]['server_id']}").json()
    assert one["name"] == "beta"


def test_history(admin):
    server_id = admin.get("/api/servers").json()[0]["server_id"]
    body = admin.get(f"/api/servers/{server_id}/history?hours=24").json()
    assert body["hours"] == 24 and len(body["host"]) == 1 and body["host"][0]["cpu_percent"] == 42.5
    assert {g["gpu_index"] for g in body["gpus"]} == {0, 1}
    assert admin.get(f"/api/servers/{server_id}/history?hours=abc").status_code == 400
    assert admin.get(f"/api/servers/{server_id}/history?hours=99999").status_code == 400


def test_delete_is_admin_only_and_removes_everything(admin, hub_config):
    import sqlite3

    server_id = admin.get("/api/servers").json()[0]["server_id"]
    response = admin.request("DELETE", f"/api/servers/{server_id}")
    assert response.status_code == 200 and response.json() == {"ok": True, "deleted": server_id}
    assert [s["name"] for s in admin.get("/api/servers").json()] == ["beta"]
    conn = sqlite3.connect(hub_config.db_path)
    for table in ("host_samples", "disk_samples", "gpu_processes", "gpus"):
        column = "server_id"
        assert conn.execute(f"select count(*) from {table} where {column} = ?", (server_id,)).fetchone() == (0,), table
    assert conn.execute("select count(*) from gpu_samples").fetchone() == (2,)  # beta's two GPUs remain
    assert admin.request("DELETE", f"/api/servers/{server_id}").status_code == 404


def test_errors_are_json(admin, client):
    for path, status in [("/api/servers/999999", 404), ("/api/nope", 404), ("/api/servers/1/history/x", 404)]:
        response = admin.get(path)
        assert response.status_code == status and response.json()["ok"] is False, path
    assert admin.post("/api/servers", json={}).status_code == 405
    # A form body (what a cross-site form could send) is refused before any handler runs.
    refused = admin.post("/api/servers", data={"x": "1"})
    assert refused.status_code == 415 and refused.json()["ok"] is False
    anonymous = client
    for path in ("/api/servers", "/api/servers/1", "/api/servers/1/history"):
        response = anonymous.get(path)
        assert response.status_code == 401 and response.json()["error"] == "login required"
    assert anonymous.request("DELETE", "/api/servers/1").status_code == 401


@pytest.fixture
def client(datasette):
    return Client(datasette)


def test_usage_by_user_now(admin):
    rows = admin.get("/monitor/usage_by_user.json?_shape=array").json()
    assert rows == [{"user": "user0", "servers": 2, "gpus": 4, "processes": 4, "used_gpu_memory_mib": 4096,
                     "server_names": "alpha,beta", "containers": "lab-0"}]
