"""A process target for tests/test_workers.py: open auth.db as a hub worker does at start."""


def open_accounts(path, barrier, results):
    """Wait for ``barrier``, then ``Accounts(path)``; put "ok" or the error's repr on ``results``."""
    from server_monitor.auth.accounts import Accounts

    barrier.wait()
    try:
        Accounts(path)
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 (reported to the test)
        results.put(repr(exc))
