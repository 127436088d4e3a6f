"""Getting every report to the hub exactly once, in order, across outages.

A new report is sent at once when nothing is waiting; otherwise it joins the spool behind
the older ones, so the hub always receives a host's reports in sample order. When the hub
is unreachable or answers 5xx/429, the report is spooled and the spool is replayed later
in batches (``{"reports": [...]}``), with exponential backoff and jitter between attempts.
The hub stores each report id once, so a batch resent after a lost answer is harmless.
A report the hub rejects as invalid (4xx) is dropped, counted and logged loudly; a
rejected token (401/403) keeps the spool and backs off to the maximum.
"""

import json
import logging
import random
import time

log = logging.getLogger("server_monitor.agent.delivery")

BATCH_REPORTS = 200
BATCH_BYTES = 512 * 1024  # uncompressed JSON per batch, well under the hub's 1 MiB limit


def describe_result(result):
    """``HTTP 503: <the hub's error text>`` or ``no answer: <reason>`` for a failed send."""
    if result.status is None:
        return f"no answer: {result.body}"
    body = result.body
    if isinstance(body, dict) and "error" in body:
        body = body["error"]
    return f"HTTP {result.status}: {body}"


class Delivery:
    """Sends reports through ``transport`` (a ``Transport``), spooling to ``spool``.

    ``retry_base_s`` / ``retry_max_s``: backoff after the first failure and its cap.
    ``clock``: monotonic time source (tests pass their own). ``rng``: jitter source.
    """

    def __init__(self, transport, spool, retry_base_s=5.0, retry_max_s=300.0, clock=time.monotonic, rng=None):
        self.transport = transport
        self.spool = spool
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.clock = clock
        self.rng = rng or random.Random()
        self.failures = 0
        self.next_attempt = 0.0
        self.batch_reports = BATCH_REPORTS

    # -- scheduling -------------------------------------------------------------------
    def due(self):
        """True when spooled reports wait and the backoff has passed."""
        return self.clock() >= self.next_attempt and len(self.spool) > 0

    def _failed(self, longest=False):
        self.failures += 1
        delay = self.retry_max_s if longest else min(self.retry_max_s, self.retry_base_s * 2 ** (self.failures - 1))
        delay *= self.rng.uniform(0.5, 1.0)  # jitter: agents do not return in lockstep
        self.next_attempt = self.clock() + delay
        return delay

    def _succeeded(self):
        self.failures = 0
        self.next_attempt = 0.0

    # -- sending ----------------------------------------------------------------------
    def submit(self, report):
        """Deliver ``report`` now, or spool it. Returns ``delivered``, ``spooled`` or ``rejected``."""
        outcome = self._submit(report)
        log.debug("report %s %s", report.get("report_id"), outcome)
        return outcome

    def _submit(self, report):
        if len(self.spool) == 0 and self.clock() >= self.next_attempt:
            report["sent_at"] = time.time()
            result = self.transport.send(report)
            if result.outcome == "delivered":
                self._succeeded()
                return "delivered"
            if result.outcome == "rejected" and result.status not in (401, 403):
                self._reject([report], result)
                return "rejected"
            self.spool.append(report)
            self._note_failure(result)
            return "spooled"
        self.spool.append(report)
        if self.clock() >= self.next_attempt:
            self.flush()
        return "spooled"

    def flush(self, max_batches=50):
        """Replay spooled reports oldest first until empty, a failure, or ``max_batches``.

        Returns the number of reports the hub acknowledged.
        """
        acknowledged = 0
        for _ in range(max_batches):
            batch = self._next_batch()
            if not batch:
                break
            paths = [path for path, _ in batch]
            reports = [report for _, report in batch]
            now = time.time()
            for report in reports:
                report["sent_at"] = now
            result = self.transport.send({"reports": reports})
            if result.outcome == "delivered" and result.status == 207 and isinstance(result.body, dict):
                acknowledged += self._apply_results(paths, reports, result.body.get("results") or [])
                self._succeeded()
                continue
            if result.outcome == "rejected" and result.status == 413 and len(batch) > 1:
                self.batch_reports = max(1, len(batch) // 2)
                continue
            if result.outcome == "rejected" and result.status not in (401, 403):
                self._reject(reports, result)
                self.spool.remove(paths)
                continue
            self._note_failure(result)
            break
        return acknowledged

    def _next_batch(self):
        batch, size = [], 0
        for path, _ in self.spool.files():
            report = self.spool.load(path)
            if report is None:
                continue
            length = len(json.dumps(report, separators=(",", ":")))
            if batch and (len(batch) >= self.batch_reports or size + length > BATCH_BYTES):
                break
            batch.append((path, report))
            size += length
        return batch

    def _apply_results(self, paths, reports, results):
        acknowledged = 0
        done = []
        for path, report, result in zip(paths, reports, results):
            status = result.get("status") if isinstance(result, dict) else None
            if status in (200, 201):
                done.append(path)
                acknowledged += 1
            elif isinstance(status, int) and 400 <= status < 500:
                log.error("hub rejected spooled report %s: %s", report.get("report_id"), result.get("error"))
                self.spool.count("rejected")
                done.append(path)
        self.spool.remove(done)
        return acknowledged

    def _reject(self, reports, result):
        for report in reports:
            log.error("hub rejected report %s with HTTP %s: %s (not retried)",
                      report.get("report_id"), result.status, result.body)
        self.spool.count("rejected", len(reports))

    def _note_failure(self, result):
        longest = result.outcome == "rejected" and result.status in (401, 403)
        delay = self._failed(longest=longest)
        if longest:
            log.error("hub refused the agent token (HTTP %s); keeping %d report(s), retrying in %.0fs",
                      result.status, len(self.spool), delay)
        else:
            log.warning("hub unavailable (%s); %d report(s) spooled, retrying in %.0fs",
                        describe_result(result), len(self.spool), delay)
