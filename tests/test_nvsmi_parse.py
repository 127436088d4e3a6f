"""nvidia-smi parsers on every real capture (tests/fixtures/captures/), idle and load.

The CSV the agent would receive is derived here straight from each capture's full
``--query-gpu`` section (same values, ``noheader,nounits`` form), so these tests check
the parser against what real drivers printed, not against our fake.
"""

import pytest
from capture_file import Capture, all_captures

from monitor_agent import nvsmi

# Values read off the captures by hand: (capture, state) -> expected parsed fields.
EXPECTED = {
    ("rtx-2080-super__595", "idle"): {"utilization.gpu": 0, "memory.used": 214, "memory.total": 8192,
                                       "temperature.gpu": 40, "power.draw": 39.32, "power.limit": 250,
                                       "fan.speed": 38, "persistence_mode": False, "pstate": "P8"},
    ("rtx-2080-super__595", "load"): {"utilization.gpu": 8, "memory.used": 819, "power.draw": 111.5,
                                       "clocks_event_reasons.active": 0},
    ("rtx-4080", "idle"): {"memory.total": 16376, "power.limit": 320, "fan.speed": 0, "power.draw.instant": 28.77},
    ("rtx-4080", "load"): {"utilization.gpu": 7, "memory.used": 1474, "temperature.gpu": 46},
    ("h100-80gb", "idle"): {"memory.total": 81559, "power.limit": 700, "fan.speed": None,
                            "temperature.memory": 48, "mig.mode.current": False, "memory.reserved": 479},
    ("h100-80gb", "load"): {"utilization.gpu": 100, "utilization.memory": 11, "memory.used": 19818,
                            "power.draw": 631.95, "power.draw.average": 631.95, "power.draw.instant": 625.68,
                            "clocks.sm": 1980, "clocks.mem": 2619, "ecc.errors.uncorrected.volatile.total": 0,
                            "remapped_rows.pending": False, "retired_pages.pending": None,
                            "name": "NVIDIA H100 80GB HBM3", "pci.bus_id": "00000000:00:09.0"},
    ("h100-mig", "idle"): {"utilization.gpu": None, "utilization.memory": None, "memory.used": 59,
                           "mig.mode.current": True},
    ("h100-mig", "load"): {"utilization.gpu": None, "memory.used": 11125, "power.draw": 433.78},
    ("h200", "idle"): {"memory.total": 143771, "temperature.gpu": 28, "power.draw": 77.71},
    ("h200", "load"): {"utilization.gpu": 100, "memory.used": 32362, "power.draw": 627.4, "name": "NVIDIA H200"},
    ("windows", "idle"): {"memory.used": 702, "power.draw": 38.92, "fan.speed": 37, "persistence_mode": None,
                          "temperature.memory": None, "power.draw.average": None},
    ("windows", "load"): {"utilization.gpu": 7, "memory.used": 1296, "driver_version": "591.86"},
}


def agent_csv(capture, state, fields):
    """What ``--query-gpu=<fields> --format=csv,noheader,nounits`` prints, from the capture."""
    lines = []
    canonical = capture.aliases()
    for row in capture.query_gpu(state):
        cells = []
        for _, name, _ in fields:
            text, unit = row[canonical[name]]
            if unit and text.endswith(" " + unit):
                text = text[: -len(unit) - 1]
            cells.append(text)
        lines.append(", ".join(cells))
    return "\n".join(lines) + "\n"


def parse_capture(name, state):
    capture = Capture(name)
    supported = nvsmi.parse_help_query_gpu(capture.help_query_gpu())
    fields = nvsmi.choose_fields(supported)
    gpus, lost, other = nvsmi.parse_gpu_rows(agent_csv(capture, state, fields), fields)
    assert lost == [] and other == []
    return gpus, fields


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: f"{k[0]}-{k[1]}")
def test_gpu_values_match_capture(key):
    name, state = key
    gpus, _ = parse_capture(name, state)
    assert len(gpus) == 1
    for field, expected in EXPECTED[key].items():
        assert gpus[0][field] == expected, field


@pytest.mark.parametrize("name", all_captures())
@pytest.mark.parametrize("state", ["idle", "load"])
def test_every_capture_parses_every_field_it_has(name, state):
    gpus, fields = parse_capture(name, state)
    capture = Capture(name)
    row, canonical = capture.query_gpu(state)[0], capture.aliases()
    for key, query_name, kind in fields:
        raw = row[canonical[query_name]][0]
        value = gpus[0][key]
        if raw in ("[N/A]", "N/A", "[Not Supported]", "[Requested functionality has been deprecated]"):
            assert value is None, (key, raw)
        else:
            assert value is not None, (key, raw)


def test_help_query_gpu_lists_aliases_and_new_names():
    names = nvsmi.parse_help_query_gpu(Capture("h100-80gb").help_query_gpu())
    assert {"clocks.sm", "clocks.current.sm", "clocks_event_reasons.active",
            "clocks_throttle_reasons.active", "power.draw.instant"} <= names


def test_old_driver_falls_back_to_throttle_reasons():
    fields = nvsmi.choose_fields({"index", "clocks_throttle_reasons.active", "power.draw"})
    assert ("clocks_event_reasons.active", "clocks_throttle_reasons.active", "hex") in fields
    assert [f[0] for f in fields] == ["index", "power.draw", "clocks_event_reasons.active"]


def test_unsupported_fields_are_skipped():
    fields = nvsmi.choose_fields(None, unsupported={"power.draw.instant", "clocks.sm"})
    names = [f[1] for f in fields]
    assert "power.draw.instant" not in names
    assert "clocks.current.sm" in names  # next name for the same value


@pytest.mark.parametrize("text", ["[N/A]", "N/A", "[Not Supported]", "[Unknown Error]",
                                  "[Requested functionality has been deprecated]", "ERR!",
                                  "[Insufficient Permissions]", "", "  [N/A] "])
def test_sentinels_null_the_value(text):
    for kind in ("num", "int", "hex", "bool", "str"):
        assert nvsmi.parse_value(text, kind) is None


def test_one_bad_field_nulls_only_that_value():
    fields = nvsmi.choose_fields({"index", "uuid", "utilization.gpu", "memory.used", "name"})
    gpus, _, _ = nvsmi.parse_gpu_rows("0, GPU-abc, ERR!, 1234, NVIDIA A100\n", fields)
    assert gpus == [{"index": 0, "uuid": "GPU-abc", "utilization.gpu": None, "memory.used": 1234,
                     "name": "NVIDIA A100"}]


def test_name_with_comma_does_not_shift_columns():
    fields = nvsmi.choose_fields({"index", "memory.used", "name"})
    gpus, _, _ = nvsmi.parse_gpu_rows("3, 512, Tesla, weird, name\n", fields)
    assert gpus[0] == {"index": 3, "memory.used": 512, "name": "Tesla, weird, name"}


def test_lost_gpu_lines_are_named_by_bus_id_and_other_rows_kept():
    fields = nvsmi.choose_fields({"index", "uuid", "memory.used"})
    text = (
        "0, GPU-a, 100\n"
        "Unable to determine the device handle for GPU 0000:0B:00.0: Unknown Error\n"
        "GPU 00000000:3B:00.0: GPU is lost. Reboot the system to recover this GPU\n"
        "3, GPU-d, 300\n"
    )
    gpus, lost, other = nvsmi.parse_gpu_rows(text, fields)
    assert [g["index"] for g in gpus] == [0, 3]
    assert [item["pci.bus_id"] for item in lost] == ["0000:0B:00.0", "00000000:3B:00.0"]
    assert other == []


@pytest.mark.parametrize(
    "name,state,expected",
    [
        ("rtx-2080-super__595", "load", [(5268, "ffmpeg", 370), (5267, "ffmpeg", 230)]),
        ("h100-80gb", "load", [(11327, "/root/tools/memhog", 2566), (11328, "/root/tools/memhog", 1542),
                               (11345, "./gpu_burn", 15690)]),
        ("h200", "load", [(10291, "/root/tools/memhog", 2566), (10293, "/root/tools/memhog", 1542),
                          (10309, "./gpu_burn", 28234)]),
        ("h100-mig", "load", [(21180, "/root/tools/memhog", 2296), (21181, "/root/tools/memhog", 1272),
                              (21198, "./gpu_burn", 7484)]),
    ],
)
def test_compute_apps_from_captures(name, state, expected):
    text = "".join(
        f"{a['gpu_uuid']}, {a['pid']}, {a['used_gpu_memory'].replace(' MiB', '')}, {a['process_name']}\n"
        for a in Capture(name).compute_apps(state)
    )
    apps = nvsmi.parse_compute_apps(text)
    assert [(a["pid"], a["process_name"], a["used_gpu_memory"]) for a in apps] == expected


def test_windows_per_process_memory_is_null():
    apps = Capture("windows").compute_apps("load")
    text = "".join(f"{a['gpu_uuid']}, {a['pid']}, {a['used_gpu_memory']}, {a['process_name']}\n" for a in apps)
    parsed = nvsmi.parse_compute_apps(text)
    assert len(parsed) == 12
    assert all(p["used_gpu_memory"] is None for p in parsed)
    assert parsed[0]["process_name"].startswith("C:\\Windows\\SystemApps\\")
    assert any(p["process_name"] == "C:\\Program Files\\NVIDIA Corporation\\NVIDIA GeForce Experience\\NVIDIA Share.exe"
               for p in parsed)


def test_process_name_with_comma_and_na_pid():
    parsed = nvsmi.parse_compute_apps("GPU-1, [N/A], 10, /opt/my app, v2/run.py --x=1,2\n")
    assert parsed == [{"gpu_uuid": "GPU-1", "pid": None, "used_gpu_memory": 10,
                       "process_name": "/opt/my app, v2/run.py --x=1,2"}]


@pytest.mark.parametrize(
    "text,code,state",
    [
        ("Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 590.48", 18, "driver_mismatch"),
        ("No devices were found", 6, "no_devices"),
        ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
         "latest NVIDIA driver is installed and running.", 9, "driver_not_loaded"),
        ("Failed to initialize NVML: Insufficient Permissions", 4, "insufficient_permissions"),
        ("Something new and strange", 255, "error"),
        ("", 3, "error"),
    ],
)
def test_whole_tool_failures_are_named(text, code, state):
    got, message = nvsmi.classify_failure(code, text)
    assert got == state
    assert message == (text.splitlines()[0] if text else f"nvidia-smi exited with code {code}")


def test_invalid_field_message():
    assert nvsmi.invalid_field('Field "power.draw.instant" is not a valid field to query.\n') == "power.draw.instant"
    assert nvsmi.invalid_field("No devices were found") is None


# Health, engine and capacity fields (issue 15), read off the captures by hand.
HEALTH_EXPECTED = {
    ("rtx-2080-super__595", "idle"): {
        "driver_version": "595.71.05",  # from kmd_version: driver_version is deprecated in 595
        "clocks_event_reasons.active": 0x4, "clocks_event_reasons.supported": 0x1FF,
        "clocks_event_reasons_counters.sw_power_cap": 212553937,
        "pcie.link.gen.current": 1, "pcie.link.gen.max": 3, "pcie.link.width.current": 16,
        "memory.free": 7571, "ecc.mode.current": None, "remapped_rows.failure": None,
        "temperature.gpu.tlimit": None, "mig.mode.pending": None},
    ("rtx-2080-super__595", "load"): {
        "utilization.gpu": 8, "utilization.encoder": 100, "utilization.decoder": 0,
        "encoder.stats.sessionCount": 2, "pcie.link.gen.current": 3, "memory.free": 6967},
    ("rtx-4080", "load"): {"utilization.encoder": 72, "encoder.stats.sessionCount": 2, "pcie.link.gen.max": 4},
    ("h100-80gb", "load"): {
        "driver_version": "590.48.01", "ecc.mode.current": True, "ecc.mode.pending": True,
        "ecc.errors.corrected.volatile.total": 0, "ecc.errors.corrected.aggregate.total": 0,
        "ecc.errors.uncorrected.aggregate.total": 0, "retired_pages.single_bit_ecc.count": None,
        "retired_pages.double_bit.count": None, "remapped_rows.correctable": 0,
        "remapped_rows.uncorrectable": 0, "remapped_rows.failure": False, "gpu_recovery_action": "None",
        "pcie.link.gen.current": 5, "pcie.link.gen.max": 5, "pcie.link.width.current": 16,
        "pcie.link.width.max": 16, "temperature.gpu.tlimit": 26, "memory.free": 61263,
        "utilization.encoder": 0, "mig.mode.pending": False},
    ("h100-mig", "load"): {"mig.mode.current": True, "mig.mode.pending": True, "utilization.encoder": None,
                           "utilization.decoder": None, "remapped_rows.correctable": None,
                           "temperature.gpu.tlimit": 24, "memory.free": 69956},
    ("h200", "load"): {"memory.free": 110796, "memory.reserved": 614, "memory.total": 143771,
                       "temperature.gpu.tlimit": 35, "clocks_event_reasons_counters.hw_thermal_slowdown": 0},
    ("windows", "idle"): {"clocks_event_reasons_counters.sw_power_cap": 5451018134, "driver_version": "591.86",
                          "memory.free": 7286},
}


@pytest.mark.parametrize("key", sorted(HEALTH_EXPECTED), ids=lambda k: f"{k[0]}-{k[1]}")
def test_health_values_match_capture(key):
    gpus, _ = parse_capture(*key)
    for field, expected in HEALTH_EXPECTED[key].items():
        assert gpus[0][field] == expected, field


def _independent(raw, kind):
    """The capture's cell as a value, written without the parser: units cut, words mapped."""
    if raw.startswith("[") or raw in ("N/A", ""):
        return None
    if kind == "bool":
        return {"Enabled": True, "Yes": True, "Disabled": False, "No": False}[raw]
    if kind == "hex":
        return int(raw, 16)
    if kind == "str":
        return raw
    number = float(raw.split(" ")[0])
    return int(number) if number.is_integer() else number


NEW_FIELDS = ("mig.mode.pending", "ecc.mode.current", "ecc.mode.pending", "ecc.errors.corrected.volatile.total",
              "ecc.errors.corrected.aggregate.total", "ecc.errors.uncorrected.aggregate.total",
              "retired_pages.single_bit_ecc.count", "retired_pages.double_bit.count", "remapped_rows.correctable",
              "remapped_rows.uncorrectable", "remapped_rows.failure", "gpu_recovery_action",
              "clocks_event_reasons.supported", "clocks_event_reasons_counters.sw_power_cap",
              "clocks_event_reasons_counters.sync_boost", "clocks_event_reasons_counters.sw_thermal_slowdown",
              "clocks_event_reasons_counters.hw_thermal_slowdown",
              "clocks_event_reasons_counters.hw_power_brake_slowdown", "pcie.link.gen.current", "pcie.link.gen.max",
              "pcie.link.width.current", "pcie.link.width.max", "temperature.gpu.tlimit", "utilization.encoder",
              "utilization.decoder", "encoder.stats.sessionCount", "memory.free")


@pytest.mark.parametrize("name", all_captures())
@pytest.mark.parametrize("state", ["idle", "load"])
def test_every_new_field_equals_the_capture(name, state):
    gpus, fields = parse_capture(name, state)
    row = Capture(name).query_gpu(state)[0]
    kinds = {key: kind for key, _, kind in fields}
    assert set(NEW_FIELDS) <= set(kinds), set(NEW_FIELDS) - set(kinds)
    for key in NEW_FIELDS:
        assert gpus[0][key] == _independent(row[key][0], kinds[key]), key


@pytest.mark.parametrize("name", all_captures())
@pytest.mark.parametrize("state", ["idle", "load"])
def test_throttle_bitmask_decodes_to_the_per_reason_columns(name, state):
    from server_monitor.core.gpu_health import reason_names

    gpus, _ = parse_capture(name, state)
    row = Capture(name).query_gpu(state)[0]
    active = {field.split(".", 1)[1] for field, (text, _) in row.items()
              if field.startswith("clocks_event_reasons.") and text == "Active"}
    assert set(reason_names(gpus[0]["clocks_event_reasons.active"])) == active


@pytest.mark.parametrize("name", all_captures())
def test_version_gives_driver_and_cuda(name):
    capture = Capture(name)
    parsed = nvsmi.parse_version(capture.version())
    driver = capture.query_gpu("idle")[0]["driver_version"][0]
    assert parsed["driver_version"] == driver
    assert parsed["cuda_version"] in ("13.1", "13.2")
    assert parsed["cuda_version"] in capture.section("idle", "nvidia-smi (default table)")


def test_lost_gpu_without_a_space_is_named_by_bus_id():
    # The spelling of NVIDIA/nvidia-container-toolkit#69 and #846: no space after "GPU".
    fields = nvsmi.choose_fields({"index", "uuid", "memory.used", "name"})
    text = ("0, GPU-a, 100, NVIDIA H100\n"
            "Unable to determine the device handle for GPU0000:17:00.0: Unknown Error\n"
            "2, GPU-c, 300, NVIDIA H100\n")
    gpus, lost, other = nvsmi.parse_gpu_rows(text, fields)
    assert [g["index"] for g in gpus] == [0, 2]
    assert lost == [{"pci.bus_id": "0000:17:00.0",
                     "message": "Unable to determine the device handle for GPU0000:17:00.0: Unknown Error"}]
    assert other == []


def test_gpu_requires_reset_is_a_named_state():
    fields = nvsmi.choose_fields({"index", "uuid", "memory.used", "temperature.gpu", "name"})
    gpus, lost, _ = nvsmi.parse_gpu_rows(
        "0, GPU-a, [GPU requires reset], [GPU requires reset], NVIDIA H100\n1, GPU-b, 5, 40, NVIDIA H100\n", fields)
    assert lost == []
    assert gpus[0]["state"] == "requires_reset" and gpus[0]["memory.used"] is None
    assert "state" not in gpus[1]


def test_mig_devices_from_the_h100_mig_capture():
    capture = Capture("h100-mig")
    listing = nvsmi.parse_list_gpus(capture.section("capabilities", "list (-L)"))
    assert listing[0]["uuid"] == "GPU-00000000-0000-0000-0000-000000000000"
    assert [(i, m["profile"], m["uuid"]) for i, m in sorted(listing[0]["mig"].items())] == [
        (0, "3g.40gb", "MIG-00000000-0000-0000-0000-000000000000"),
        (1, "2g.20gb", "MIG-00000001-0000-0000-0000-000000000001"),
        (2, "1g.10gb", "MIG-00000002-0000-0000-0000-000000000002"),
        (3, "1g.10gb", "MIG-00000003-0000-0000-0000-000000000003")]
    devices, procs = nvsmi.parse_mig_table(capture.section("load", "nvidia-smi (default table)"))
    joined = nvsmi.mig_devices(listing, devices)
    assert [(d["profile"], d["gpu_instance_id"], d["compute_instance_id"], d["memory.used"], d["memory.total"],
             d["sm_count"]) for d in joined] == [
        ("3g.40gb", 2, 0, 11091, 40448, 60), ("2g.20gb", 3, 0, 17, 20096, 32),
        ("1g.10gb", 9, 0, 9, 9984, 16), ("1g.10gb", 10, 0, 9, 9984, 16)]
    assert [(p["pid"], p["gpu_instance_id"], p["compute_instance_id"], p["process_name"], p["used_gpu_memory"])
            for p in procs] == [(21180, 2, 0, "/root/tools/memhog", 2296), (21181, 2, 0, "/root/tools/memhog", 1272),
                                (21198, 2, 0, "./gpu_burn", 7484)]
    idle, none = nvsmi.parse_mig_table(capture.section("idle", "nvidia-smi (default table)"))
    assert len(idle) == 4 and none == []


@pytest.mark.parametrize("name", [c for c in all_captures() if "mig" not in c])
def test_non_mig_captures_have_no_mig_devices(name):
    capture = Capture(name)
    devices, procs = nvsmi.parse_mig_table(capture.section("load", "nvidia-smi (default table)"))
    assert devices == []
    # The default table's process rows (no GI/CI) agree with --query-compute-apps where it has memory.
    apps = {int(a["pid"]) for a in capture.compute_apps("load")}
    assert apps <= {p["pid"] for p in procs}
    assert all(p["gpu_instance_id"] is None for p in procs)
    assert all(m["mig"] == {} for m in nvsmi.parse_list_gpus(capture.section("capabilities", "list (-L)")).values())
