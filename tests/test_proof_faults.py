"""The proof suite's quick profile, second half: disk full, bad collectors and API fuzzing
against the real hub process (the first half is in test_proof.py; two files run on two
workers of the parallel suite)."""

import pytest
from test_proof import run_proof

pytestmark = pytest.mark.slow

FAULT_SCENARIOS = ["disk_full", "bad_collectors", "fuzz"]


def test_quick_profile_disk_full_bad_collectors_fuzz(tmp_path):
    results = run_proof(tmp_path, FAULT_SCENARIOS)
    assert results["disk_full"]["answers_503"] > 0
    assert results["bad_collectors"]["ok"] and results["fuzz"]["ok"]
