"""Schema creation and migrations on real SQLite files."""

import sqlite3

import pytest
from reports import sample_report

from server_monitor.storage import schema
from server_monitor.storage.contract import validate_report
from server_monitor.storage.store import store_report


def test_fresh_database_is_current_and_wal(tmp_path):
    path = str(tmp_path / "monitor.db")
    assert schema.migrate(path) == 0
    conn = sqlite3.connect(path)
    assert conn.execute("pragma user_version").fetchone()[0] == schema.SCHEMA_VERSION
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert schema.migrate(path) == schema.SCHEMA_VERSION  # idempotent


def test_each_version_upgrades_with_data_kept(tmp_path):
    path = str(tmp_path / "monitor.db")
    conn = schema.connect(path)
    for statement in schema._statements(schema.MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("pragma user_version=1")
    # A version-1 database holding a server.
    conn.execute("insert into servers (machine_id, hostname, first_seen, last_seen, last_ts) values ('m', 'old-host', 1, 1, 1)")
    conn.close()
    assert schema.migrate(path) == 1
    conn = schema.connect(path)
    assert conn.execute("select hostname, spool_depth from servers").fetchone() == ("old-host", None)
    store_report(conn, validate_report(sample_report("new-host")), int(__import__("time").time()))
    assert conn.execute("select count(*) from servers").fetchone()[0] == 2


def test_newer_database_is_refused(tmp_path):
    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    sqlite3.connect(path).execute(f"pragma user_version={schema.SCHEMA_VERSION + 1}")
    with pytest.raises(schema.SchemaTooNew):
        schema.migrate(path)


def test_failed_migration_leaves_previous_version(tmp_path, monkeypatch):
    path = str(tmp_path / "monitor.db")
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 1)
    schema.migrate(path)
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + ["CREATE TABLE t (a);\nTHIS IS NOT SQL;"])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    with pytest.raises(sqlite3.OperationalError):
        schema.migrate(path)
    conn = sqlite3.connect(path)
    assert conn.execute("pragma user_version").fetchone()[0] == 1
    assert conn.execute("select count(*) from sqlite_master where name = 't'").fetchone()[0] == 0
