"""amd-smi (optional) for ECC/RAS counts and XGMI link state, on fixtures written from AMD's
documented JSON output (tests/fixtures/amdsmi/SOURCE.md)."""

import os
import stat

from conftest import ROOT

from monitor_agent.amdsmi import AmdSmi, parse_ecc, parse_link_status

FIX = os.path.join(ROOT, "tests", "fixtures", "amdsmi")


def read(name):
    with open(os.path.join(FIX, name), encoding="utf-8") as fp:
        return fp.read()


def test_parse_ecc_rocm7_and_rocm6_shapes():
    ecc = parse_ecc(read("metric_ecc_rocm7.json"))
    assert len(ecc) == 8
    assert ecc[("index", 6)] == {"uncorrectable": 2, "correctable": 0}
    assert ecc[("index", 4)] == {"uncorrectable": 0, "correctable": 12}
    old = parse_ecc(read("metric_ecc_rocm6.json"))
    assert old[("index", 0)] == {"uncorrectable": 0, "correctable": 0}
    assert old[("index", 1)] == {"uncorrectable": None, "correctable": None}  # "N/A"
    assert parse_ecc("amd-smi: command not found") == {}


def test_parse_link_status_counts_links_down_by_bus_id():
    links = parse_link_status(read("xgmi_link_status.json"))
    assert links[("bdf", "0000:65:00.0")] == 1 and links[("bdf", "0000:a6:00.0")] == 1
    assert links[("bdf", "0000:05:00.0")] == 0  # X (the link to itself) is not down
    assert parse_link_status("[1, 2") == {}


def fake_amd_smi(tmp_path, log):
    script = tmp_path / "amd-smi"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        f'case "$1" in metric) cat {FIX}/metric_ecc_rocm7.json ;; xgmi) cat {FIX}/xgmi_link_status.json ;; esac\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_values_land_on_amd_gpus_at_a_low_cadence(tmp_path):
    log = tmp_path / "calls.log"
    now = [1000.0]
    smi = AmdSmi(fake_amd_smi(tmp_path, log), interval=60, timeout=5, clock=lambda: now[0])
    gpus = [{"vendor": "amd", "index": i, "pci.bus_id": b} for i, b in
            enumerate(["0000:05:00.0", "0000:26:00.0", "0000:46:00.0", "0000:65:00.0",
                       "0000:85:00.0", "0000:a6:00.0", "0000:c6:00.0", "0000:e5:00.0"])]
    nvidia = {"vendor": "nvidia", "index": 0, "pci.bus_id": "00000000:17:00.0"}
    smi.apply(gpus + [nvidia])
    assert [g["ecc.errors.uncorrected.volatile.total"] for g in gpus] == [0, 0, 0, 0, 0, 0, 2, 0]
    assert [g["xgmi.links_down"] for g in gpus] == [0, 0, 0, 1, 0, 1, 0, 0]
    assert "xgmi.links_down" not in nvidia
    assert log.read_text().splitlines() == ["metric --ecc --json", "xgmi --link-status --json"]
    now[0] += 30
    smi.apply(gpus)  # within the interval: values reused, nothing started
    assert len(log.read_text().splitlines()) == 2 and gpus[6]["ecc.errors.uncorrected.volatile.total"] == 2
    now[0] += 31
    smi.apply(gpus)
    assert len(log.read_text().splitlines()) == 4


def test_absent_amd_smi_or_no_amd_gpu_starts_nothing(tmp_path):
    missing = AmdSmi(str(tmp_path / "nowhere" / "amd-smi"))
    gpus = [{"vendor": "amd", "index": 0, "pci.bus_id": "0000:05:00.0"}]
    missing.apply(gpus)
    assert missing.calls == 0 and "xgmi.links_down" not in gpus[0]
    log = tmp_path / "calls.log"
    present = AmdSmi(fake_amd_smi(tmp_path, log))
    present.apply([{"vendor": "nvidia", "index": 0}])
    assert present.calls == 0 and not log.exists()
