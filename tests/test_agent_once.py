"""What the real agent process prints: ``--once`` outcomes and quiet retry logs (newcomer L5, L10)."""

import os
import signal
import subprocess
import sys
import time

from conftest import FAKE_NVSMI, ROOT, free_port


def _config(tmp_path, url, token):
    path = tmp_path / "agent.yaml"
    path.write_text(f"server_url: {url}\ntoken: {token}\ninterval: 1\nnvidia_smi: {FAKE_NVSMI}\n"
                    f"spool_dir: {tmp_path / 'spool'}\nretry_base_s: 0.5\nretry_max_s: 1\n")
    return path


def _agent(config, *args, timeout=60):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "agent.py"), "-c", str(config), *args],
                            capture_output=True, text=True, timeout=timeout, env=dict(os.environ, FAKE_NVSMI_GPUS="1"))
    return result.returncode, result.stdout, result.stderr


def test_once_says_stored_or_spooled_in_one_line(ingest_server, tmp_path):
    """L5: ``--once`` used to print nothing on success and, with the hub unreachable, urllib3's
    MaxRetryError text, without keeping the report. Now: one line saying the report was stored,
    or that it was kept in the spool (and where); the next ``--once`` sends the kept one too."""
    import sqlite3

    token = ingest_server.config.get("agent.token")
    up = _config(tmp_path, ingest_server.base_url, token)
    rc, out, err = _agent(up, "--once")
    assert rc == 0 and out.startswith("stored report ") and err == "", err
    assert not (tmp_path / "spool").exists()  # a stored report creates no spool directory

    down = _config(tmp_path, f"http://127.0.0.1:{free_port()}", token)
    rc, out, err = _agent(down, "--once")
    assert rc == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "not stored (no answer: " in lines[0] and "Connection refused" in lines[0], err
    assert f"kept in the spool {tmp_path / 'spool'} (1 waiting)" in lines[0], err
    assert "MaxRetryError" not in err and "Retrying" not in err and "HTTPConnection object" not in err
    assert len(list((tmp_path / "spool").glob("*.json.gz"))) == 1

    up = _config(tmp_path, ingest_server.base_url, token)
    rc, out, err = _agent(up, "--once")
    assert rc == 0, err
    first, second = out.strip().splitlines()
    assert first.startswith("stored report ") and first.endswith(f" at {ingest_server.base_url}"), out
    assert second == f"sent 1 report(s) spooled earlier; 0 still waiting in {tmp_path / 'spool'}", out
    stored = {r for (r,) in sqlite3.connect(ingest_server.config.db_path).execute("SELECT report_id FROM host_samples")}
    assert len(stored) == 3 and first.split()[2] in stored

    bad = _config(tmp_path, ingest_server.base_url, "wrong-token-of-enough-length")
    rc, out, err = _agent(bad, "--once")
    assert rc == 1 and "not stored (hub rejected the agent token, HTTP 401: invalid agent token); kept in the spool" in err, err


def test_unreachable_hub_is_one_quiet_line_per_attempt(tmp_path):
    """L5: every failed post used to log urllib3's "Retrying (Retry(total=0, ...))" WARNING before the
    agent's own line, which read "hub unavailable (no answer )" with a stray space."""
    config = _config(tmp_path, f"http://127.0.0.1:{free_port()}", "x" * 32)
    log = open(tmp_path / "agent.log", "wb")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "agent.py"), "-c", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, FAKE_NVSMI_GPUS="1"))
    try:
        deadline = time.time() + 30
        while time.time() < deadline and (tmp_path / "agent.log").read_text().count("hub unavailable") < 2:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        log.close()
    text = (tmp_path / "agent.log").read_text()
    assert f"(spool: {tmp_path / 'spool'}, 0 waiting)" in text  # L10: where the reports wait is said at start
    assert text.count("hub unavailable (no answer: ") >= 2, text
    assert "Retrying" not in text and "no answer )" not in text and "MaxRetryError" not in text, text


def test_run_loop_freezes_startup_objects_after_the_first_report():
    """After its first report the run loop moves the objects alive then (modules, collectors,
    caches) out of the collector's reach, so a later full collection walks only new objects."""
    import gc
    import threading

    sys.path.insert(0, ROOT)
    import agent

    stop = threading.Event()
    frozen_at_submit = []

    class Builder:
        def build(self):
            return {"n": len(frozen_at_submit)}

    class Delivery:
        spool = []
        next_attempt = 0

        def submit(self, report):
            frozen_at_submit.append(gc.get_freeze_count())
            if len(frozen_at_submit) == 2:
                stop.set()

        def due(self):
            return False

    gc.unfreeze()
    try:
        agent.run_forever(Builder(), Delivery(), 0.01, stop)
        assert frozen_at_submit[0] == 0  # the first report is built before anything is frozen
        assert frozen_at_submit[1] > 1000  # frozen right after it (the interpreter's modules at least)
    finally:
        gc.unfreeze()
