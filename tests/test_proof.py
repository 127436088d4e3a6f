"""The proof suite (scripts/prove.py), quick profile: load, hub outage, crash, disk full,
bad collectors and API fuzzing against the real hub process. The full profile is run by
hand; its figures are in docs/performance.md and docs/reliability.md."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_quick_profile(tmp_path):
    out = tmp_path / "proof.json"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "prove.py"), "--profile", "quick",
                             "--json", str(out)], capture_output=True, text=True, timeout=1800)
    assert out.exists(), result.stdout + result.stderr
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"load", "outage", "crash", "disk_full", "bad_collectors", "fuzz"}
    failed = {name: r["error"] for name, r in results.items() if not r["ok"]}
    assert failed == {}, result.stdout[-5000:]
    assert results["load"]["errors"] == 0 and results["outage"]["missing"] == 0
    assert results["crash"]["acked_lost"] == 0 and results["disk_full"]["answers_503"] > 0
    assert result.returncode == 0
