"""XID errors from the kernel log: the /dev/kmsg record format, incremental reads, named states."""

import os
import pwd
import shutil
import subprocess
import sys
import time

import pytest

from monitor_agent import kmsg

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "kmsg", "xid.kmsg")
BOOT = 1_790_000_000


def test_fixture_gives_the_xid_events_with_bus_ids_and_names(tmp_path):
    path = tmp_path / "kmsg"
    shutil.copy(FIXTURE, path)
    reader = kmsg.KmsgReader(str(path), boot_time=BOOT, history_s=10**9)
    found = reader.collect(now=BOOT + 10_000)
    assert found["kmsg_state"] == "ok"
    got = [(e["seq"], e["pci.bus_id"], e["xid"], e["name"], e["pid"], e["process_name"]) for e in found["xid_events"]]
    assert got == [
        (1004, "00000000:18:00.0", 13, "Graphics Engine Exception", None, None),
        (1005, "00000000:28:00.0", 31, "GPU memory page fault", 20311, "python3"),
        (1006, "00000000:28:00.0", 48, "Double Bit ECC Error", 20311, "python3"),
        (1008, "00000000:38:00.0", 79, "GPU has fallen off the bus", None, None),
        (1010, "00000000:18:00.0", 999, None, 4242, "nvidia-smi"),
    ]
    assert found["xid_events"][3]["time"] == BOOT + 9000
    assert found["xid_events"][3]["message"] == ("NVRM: Xid (PCI:0000:38:00): 79, pid='<unknown>', name=<unknown>, "
                                                 "GPU has fallen off the bus.")
    # Nothing new: nothing again. A new record: only that one.
    assert reader.collect(now=BOOT + 10_000)["xid_events"] == []
    with open(path, "a") as fp:
        fp.write("4,1011,9200000000,-;NVRM: Xid (PCI:0000:38:00): 94, pid=77, name=train, Contained ECC error.\n")
    again = reader.collect(now=BOOT + 10_000)["xid_events"]
    assert [(e["seq"], e["xid"], e["name"]) for e in again] == [(1011, 94, "Contained ECC error")]


def test_first_read_skips_old_history(tmp_path):
    reader = kmsg.KmsgReader(FIXTURE, boot_time=BOOT, history_s=3600)
    # At boot + 10900 s only records of the last hour count: Xid 79 (9000 s) and 999 (9100 s);
    # Xid 13, 31 (3600 s) and 48 (7200 s) are older.
    found = reader.collect(now=BOOT + 10_900)
    assert [e["xid"] for e in found["xid_events"]] == [79, 999]


def test_missing_kernel_log_is_a_named_state(tmp_path):
    reader = kmsg.KmsgReader(str(tmp_path / "nowhere"))
    assert reader.collect() == {"kmsg_state": "not_found", "xid_events": []}


def test_unreadable_kernel_log_is_permission_denied(tmp_path):
    path = tmp_path / "kmsg"
    shutil.copy(FIXTURE, path)
    os.chmod(path, 0o600)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from monitor_agent import kmsg;"
            " print(kmsg.KmsgReader(sys.argv[2]).collect()['kmsg_state'])")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.geteuid() == 0:
        # Root reads any file: read it as nobody instead, as a real unprivileged agent would.
        nobody = pwd.getpwnam("nobody").pw_uid
        os.chmod(tmp_path, 0o755)
        python = shutil.which("python3", path="/usr/bin:/usr/local/bin") or sys.executable
        run = subprocess.run([python, "-c", code, root, str(path)], capture_output=True, text=True, user=nobody)
    else:
        os.chmod(path, 0)
        run = subprocess.run([sys.executable, "-c", code, root, str(path)], capture_output=True, text=True)
    assert run.stdout.strip() == "permission_denied", run.stderr


@pytest.mark.skipif(not os.access("/dev/kmsg", os.R_OK), reason="/dev/kmsg not readable here")
def test_real_dev_kmsg_is_read_without_blocking():
    reader = kmsg.KmsgReader("/dev/kmsg", boot_time=time.time() - 3600)
    start = time.monotonic()
    first = reader.collect()
    second = reader.collect()
    assert first["kmsg_state"] == "ok" and second["kmsg_state"] == "ok"
    assert time.monotonic() - start < 2.0
    reader.close()


@pytest.mark.parametrize("text,expected", [
    ("00000000:3B:00.0", (0, 0x3B, 0, 0)), ("0000:3b:00.0", (0, 0x3B, 0, 0)), ("0000:3b:00", (0, 0x3B, 0, 0)),
    ("0001:17:02.1", (1, 0x17, 2, 1)), ("GPU-abc", None), (None, None),
])
def test_bus_ids_compare_across_spellings(text, expected):
    assert kmsg.bus_key(text) == expected


def test_hub_alerts_the_same_critical_codes():
    from server_monitor.jobs import alerts

    assert alerts.CRITICAL_XIDS == kmsg.CRITICAL_XIDS
    # The canned queries' critical column lists the same codes (the history page marks them).
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("server_xids.sql", "xid_events.sql"):
        text = open(os.path.join(root, "canned_queries", name)).read()
        listed = re.search(r"e\.xid in \(([0-9, ]+)\) as critical", text).group(1)
        assert {int(code) for code in listed.split(",")} == kmsg.CRITICAL_XIDS, name
    assert {48, 63, 64, 74, 79, 94, 95, 119, 120} <= kmsg.CRITICAL_XIDS
    assert all(code in kmsg.XID_NAMES for code in kmsg.CRITICAL_XIDS)


def test_report_carries_xid_events_attributed_to_its_gpus(tmp_path, monkeypatch):
    from conftest import FAKE_NVSMI

    from monitor_agent.collect import ReportBuilder
    from monitor_agent.config import AgentConfigError, check
    from server_monitor.storage.contract import validate_report

    monkeypatch.setenv("FAKE_NVSMI_GPUS", "3")
    base = {"server_url": "http://127.0.0.1:9", "token": "x", "nvidia_smi": FAKE_NVSMI, "drm": False,
            "spool_dir": str(tmp_path / "spool"),
            **{k: 30 for k in ("interval", "gpu_timeout", "spool_max_mb", "spool_max_age_h", "retry_base_s",
                               "retry_max_s", "inventory_interval", "probe_interval")}}
    builder = ReportBuilder(check(dict(base, kmsg_path=FIXTURE)))
    builder.kmsg.history_s = 10**10  # the fixture's records are "old" against this machine's boot time
    report = validate_report(builder.build())
    assert report["kmsg_state"] == "ok"
    uuids = {g["pci.bus_id"]: g["uuid"] for g in report["gpus"]}
    got = [(e["xid"], e["gpu_uuid"]) for e in report["xid_events"]]
    assert got == [(13, uuids["00000000:18:00.0"]), (31, uuids["00000000:28:00.0"]), (48, uuids["00000000:28:00.0"]),
                   (79, uuids["00000000:38:00.0"]), (999, uuids["00000000:18:00.0"])]
    missing = validate_report(ReportBuilder(check(dict(base, kmsg_path=str(tmp_path / "none")))).build())
    assert missing["kmsg_state"] == "not_found" and missing["xid_events"] == []
    off = validate_report(ReportBuilder(check(dict(base, kmsg_path=None))).build())
    assert off["kmsg_state"] == "disabled"
    with pytest.raises(AgentConfigError, match="^kmsg_path must be an absolute path"):
        check(dict(base, kmsg_path="kmsg"))


# --- issue 22 item 4: XID lines as drivers print them (real lines: fixtures/kmsg/real/, SOURCE.md) -----

REAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "kmsg", "real")


def _real(name):
    with open(os.path.join(REAL, name)) as fp:
        return [line.rstrip("\n") for line in fp if line.strip()]


def _as_kmsg(path, messages, first_seq=5000, usec=1_000_000):
    """Wrap kernel messages into /dev/kmsg records (prio 4, consecutive seq) in a regular file."""
    with open(path, "w") as fp:
        for n, message in enumerate(messages):
            fp.write(f"4,{first_seq + n},{usec + n},-;{message}\n")
    return str(path)


def test_item4_xid_mig_tagged_and_pid_without_name():
    """NVIDIA's GA100 error-containment lines: the MIG-tagged form and pid= without name=."""
    mig, plain, uncontained = (kmsg.parse_xid(line) for line in _real("nvidia-ga100-error-containment.txt"))
    assert (mig["pci.bus_id"], mig["xid"], mig["pid"], mig["process_name"], mig["gpu_instance_id"],
            mig["compute_instance_id"]) == ("00000000:01:00.0", 94, 7194, None, 5, None)
    assert mig["name"] == "Contained ECC error"
    assert (plain["xid"], plain["pid"], plain["process_name"], plain["gpu_instance_id"]) == (94, 7062, None, None)
    assert (uncontained["xid"], uncontained["pid"], uncontained["name"]) == (95, 7062, "Uncontained ECC error")
    both = kmsg.parse_xid("NVRM: Xid (PCI:0000:3b:00 GPU-I:01 GPU-CI:02): 13, pid=9, name=a, Graphics Exception")
    assert (both["pci.bus_id"], both["gpu_instance_id"], both["compute_instance_id"], both["pid"],
            both["process_name"]) == ("00000000:3B:00.0", 1, 2, 9, "a")


def test_item4_fallen_off_the_bus_without_xid_is_a_lost_gpu(tmp_path):
    """Newer drivers print "fallen off the bus" over three records with no Xid (NVSentinel#155), older
    ones "GPU at <bus> has fallen off the bus." (Bumblebee#554): the reader names those GPUs lost."""
    records = _real("nvsentinel-155-fallen-without-xid.txt")[:4] + _real("bumblebee-554-fallen-old-driver.txt")
    reader = kmsg.KmsgReader(_as_kmsg(tmp_path / "kmsg", records), boot_time=BOOT, history_s=10**9)
    found = reader.collect(now=BOOT + 100)
    assert found["xid_events"] == []  # no Xid was printed
    assert [g["pci.bus_id"] for g in reader.lost_gpus()] == ["00000000:B3:00.0", "00000000:01:00.0"]
    assert "fallen off the bus" in reader.lost_gpus()[0]["message"]
    # One record whose newlines /dev/kmsg escaped as \x0a reads the same.
    one = kmsg.KmsgReader(_as_kmsg(tmp_path / "one", ["\\x0a".join(records[:3])]), boot_time=BOOT, history_s=10**9)
    one.collect(now=BOOT + 100)
    assert [g["pci.bus_id"] for g in one.lost_gpus()] == ["00000000:B3:00.0"]
    reader.forget("0000:b3:00.0")
    assert [g["pci.bus_id"] for g in reader.lost_gpus()] == ["00000000:01:00.0"]


def test_item4_report_names_the_fallen_gpu_lost(tmp_path, monkeypatch):
    """The report says so the way nvidia-smi's own lost GPUs are reported: gpu_status.lost, state gpu_lost.
    (The real three-record message, its bus id replaced by the fake nvidia-smi's GPU 2.)"""
    from conftest import FAKE_NVSMI

    from monitor_agent.collect import ReportBuilder
    from monitor_agent.config import check
    from server_monitor.storage.contract import validate_report

    monkeypatch.setenv("FAKE_NVSMI_GPUS", "3")
    records = [line.replace("0000:b3:00.0", "0000:38:00.0") for line in _real("nvsentinel-155-fallen-without-xid.txt")[:3]]
    base = {"server_url": "http://127.0.0.1:9", "token": "x", "nvidia_smi": FAKE_NVSMI, "drm": False,
            "spool_dir": str(tmp_path / "spool"), "kmsg_path": _as_kmsg(tmp_path / "kmsg", records),
            **{k: 30 for k in ("interval", "gpu_timeout", "spool_max_mb", "spool_max_age_h", "retry_base_s",
                               "retry_max_s", "inventory_interval", "probe_interval")}}
    builder = ReportBuilder(check(base))
    builder.kmsg.history_s = 10**10
    report = validate_report(builder.build())
    assert report["gpu_status"]["state"] == "gpu_lost"
    assert [g["pci.bus_id"] for g in report["gpu_status"]["lost"]] == ["00000000:38:00.0"]
    assert "fallen off the bus" in report["gpu_status"]["message"]
    # Still lost on the next report (the kernel says it once); a healthy row two reports later clears it.
    assert validate_report(builder.build())["gpu_status"]["state"] == "gpu_lost"
    assert validate_report(builder.build())["gpu_status"]["state"] == "ok"


def test_item4_newer_codes_named_from_the_catalog_and_critical_list():
    names = kmsg.XID_NAMES
    assert (names[119], names[120], names[140], names[143], names[154], names[158]) == (
        "GSP RPC Timeout", "GSP Error", "Unrecovered ECC Error", "GPU Initialization Error",
        "GPU Recovery Action Changed", "GPU Fatal Timeout")
    assert all(names[code].startswith("NVLink: ") for code in range(144, 151))
    assert {143, 158} <= kmsg.CRITICAL_XIDS and not {144, 145, 149, 154} & kmsg.CRITICAL_XIDS
    from server_monitor.jobs import alerts

    assert alerts.CRITICAL_XIDS == kmsg.CRITICAL_XIDS
    nvlink5 = [kmsg.parse_xid(line) for line in _real("gpud-1160-1174-nvlink5.txt")]
    assert [(e["pci.bus_id"], e["xid"], e["name"], e["pid"]) for e in nvlink5] == [
        ("00000019:01:00.0", 149, "NVLink: NETIR Error", None), ("00000018:01:00.0", 145, "NVLink: RLW Error", None),
        ("00000000:01:00.0", 144, "NVLink: SAW Error", None)]
