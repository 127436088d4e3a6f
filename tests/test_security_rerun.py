"""Smoke test of ``scripts/security_rerun.py`` (issue 25: the 227e0d8 review's approach re-run
live; docs/security.md records a full run): the harness starts its own hub, creates its accounts
through /admin invites and /register, runs one area and stops everything it started."""

import os
import sys

from conftest import ROOT, free_port


def test_issue25_security_rerun_metrics_area_holds_against_a_real_hub(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import security_rerun

    results = security_rerun.Results()
    run = security_rerun.Run(str(tmp_path), free_port(), results)
    try:
        security_rerun.area_metrics(run)
        hub = run.main
        assert set(hub.users) == {"viewer1", "viewer2", "viewerall", "analyst1", "admin2"}
    finally:
        run.cleanup()
    assert hub.proc.poll() is not None  # stopped
    assert results.tried["metrics"] == 26 and results.failures == [], results.failures
