"""The proof suite (python -m bench prove), quick profile: load, hub outage, crash, disk full,
bad collectors and API fuzzing against the real hub process. The full profile is run by
hand; its figures are in docs/performance.md and docs/reliability.md.

The six scenarios run as two ``python -m bench prove --only`` calls in two test files (this one and
``test_proof_faults.py``), so the parallel suite runs them on two workers at once."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def run_proof(tmp_path, names):
    """``python -m bench prove --profile quick --only <names>``; returns its results, asserting that
    exactly ``names`` ran and none failed, and that it exited 0."""
    out = tmp_path / "proof.json"
    result = subprocess.run([sys.executable, "-m", "bench", "prove", "--profile", "quick",
                             "--only", ",".join(names), "--json", str(out)], capture_output=True, text=True, timeout=1800,
                            cwd=ROOT)
    assert out.exists(), result.stdout + result.stderr
    results = json.loads(out.read_text())["results"]
    assert set(results) == set(names)
    failed = {name: r["error"] for name, r in results.items() if not r["ok"]}
    assert failed == {}, result.stdout[-5000:]
    assert result.returncode == 0
    return results


def test_quick_profile_load_outage_crash(tmp_path):
    results = run_proof(tmp_path, ["load", "outage", "crash"])
    assert results["load"]["errors"] == 0 and results["outage"]["missing"] == 0
    assert results["crash"]["acked_lost"] == 0


def test_quick_profile_runs_every_scenario():
    """The two test files together cover every scenario of the quick profile."""
    from test_proof_faults import FAULT_SCENARIOS

    sys.path.insert(0, ROOT)
    try:
        from bench import prove
    finally:
        sys.path.pop(0)
    assert sorted(["load", "outage", "crash"] + FAULT_SCENARIOS) == sorted(n for n in prove.SCENARIOS if n != "mixed")
