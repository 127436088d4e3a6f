"""Issue 13's mixed use, quick variant (``python -m bench prove --profile quick --only mixed``): agents
reporting in real time, viewers doing the dashboard's refresh and an analyst looping a heavy
query, at once, on the real hub with two worker processes. Every report is stored exactly once,
nothing answers an error. The goal-size run (``--profile mixed``) is run by hand; its figures
are in docs/performance.md."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_mixed_use_quick(tmp_path):
    workers = 2
    out = tmp_path / "proof.json"
    result = subprocess.run([sys.executable, "-m", "bench", "prove", "--profile", "quick",
                             "--only", "mixed", "--workers", str(workers), "--json", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.exists(), result.stdout + result.stderr
    mixed = json.loads(out.read_text())["results"]["mixed"]
    assert mixed["ok"], result.stdout[-5000:]
    assert mixed["reports"] == 600 and mixed["lost"] == 0 and mixed["duplicates"] == 0
    assert mixed["ingest_errors"] == 0 and mixed["dashboard_errors"] == 0 and mixed["analyst_errors"] == 0
    assert mixed["dashboard_refreshes"] > 0 and mixed["analyst_requests"] > 0
    assert mixed["hub_workers"] == workers and mixed["integrity"] == "ok"
    assert result.returncode == 0
