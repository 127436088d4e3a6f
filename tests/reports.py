"""Building valid contract-v1 reports for tests, from the real captures' values."""

import time
import uuid

from capture_file import Capture


def gpu_from_capture(capture="h100-80gb", state="load", index=0, seed="t"):
    """One report GPU dict with the capture's values (identity fields made unique)."""
    row = Capture(capture).query_gpu(state)[0]

    def num(field):
        text = row[field][0].split(" ")[0]
        try:
            value = float(text)
        except ValueError:
            return None
        return int(value) if value.is_integer() else value

    return {
        "index": index,
        "uuid": f"GPU-{seed}-{index:04d}-0000-0000-000000000000",
        "name": row["name"][0],
        "pci.bus_id": f"00000000:{0x18 + index * 0x10:02X}:00.0",
        "driver_version": row["driver_version"][0],
        "utilization.gpu": num("utilization.gpu"),
        "utilization.memory": num("utilization.memory"),
        "memory.used": num("memory.used"),
        "memory.total": num("memory.total"),
        "temperature.gpu": num("temperature.gpu"),
        "power.draw": num("power.draw"),
        "power.limit": num("power.limit"),
        "fan.speed": num("fan.speed"),
        "mig.mode.current": row["mig.mode.current"][0] == "Enabled",
        "clocks.sm": num("clocks.current.sm"),
        "clocks.mem": num("clocks.current.memory"),
        **health_from_capture(row),
    }


# Report keys of the health/engine fields (issue 15) and how their capture cells read.
HEALTH_FIELDS = {
    "memory.free": "num", "memory.reserved": "num", "utilization.encoder": "num", "utilization.decoder": "num",
    "encoder.stats.sessionCount": "num", "temperature.gpu.tlimit": "num", "pcie.link.gen.current": "num",
    "pcie.link.gen.max": "num", "pcie.link.width.current": "num", "pcie.link.width.max": "num",
    "ecc.mode.current": "bool", "ecc.mode.pending": "bool", "mig.mode.pending": "bool",
    "ecc.errors.uncorrected.volatile.total": "num", "ecc.errors.corrected.volatile.total": "num",
    "ecc.errors.corrected.aggregate.total": "num", "ecc.errors.uncorrected.aggregate.total": "num",
    "remapped_rows.correctable": "num", "remapped_rows.uncorrectable": "num", "remapped_rows.pending": "bool",
    "remapped_rows.failure": "bool", "retired_pages.pending": "bool", "gpu_recovery_action": "str",
    "clocks_event_reasons.active": "hex", "clocks_event_reasons.supported": "hex",
    "clocks_event_reasons_counters.sw_power_cap": "num", "clocks_event_reasons_counters.hw_thermal_slowdown": "num",
}


def health_from_capture(row):
    """The health/engine fields of one capture row, as the agent reports them."""
    out = {}
    for key, kind in HEALTH_FIELDS.items():
        if kind is None or key not in row:
            continue
        text = row[key][0]
        if text.startswith("[") or text in ("N/A", ""):
            out[key] = None
        elif kind == "bool":
            out[key] = text in ("Enabled", "Yes")
        elif kind == "hex":
            out[key] = int(text, 16)
        elif kind == "str":
            out[key] = text
        else:
            value = float(text.split(" ")[0])
            out[key] = int(value) if value.is_integer() else value
    return out


def sample_report(hostname="gpu-01", gpus=2, processes=2, disks=2, sample_time=None,
                  machine_id=None, capture="h100-80gb", state="load"):
    """A complete valid report: ``gpus`` GPUs, ``processes`` processes per GPU, ``disks`` mounts."""
    now = time.time() if sample_time is None else sample_time
    gpu_list = [gpu_from_capture(capture, state, i, seed=hostname) for i in range(gpus)]
    return {
        "contract_version": 1,
        "report_id": str(uuid.uuid4()),
        "sample_time": now,
        "sent_at": time.time(),  # sent now, whenever it was sampled (a replay when older)
        "interval": 30,
        "host": {
            "machine_id": machine_id or ("m" + uuid.uuid5(uuid.NAMESPACE_DNS, hostname).hex[:31]),
            "hostname": hostname,
            "os": "Ubuntu 22.04.5 LTS",
            "kernel": "5.15.0-185-generic",
            "arch": "x86_64",
            "cpu_model": "AMD EPYC 9654",
            "cpu_count": 192,
            "boot_time": now - 86400,
            "agent_version": "0.1.0",
        },
        "cpu": {"percent": 42.5, "load_1": 12.0, "load_5": 10.0, "load_15": 8.0},
        "memory": {"total_bytes": 2 * 1024**4, "used_bytes": 1024**4, "swap_total_bytes": 0, "swap_used_bytes": 0},
        "network": {"rx_bytes_per_s": 1.5e6, "tx_bytes_per_s": 2.5e5},
        "uptime_s": 86400,
        "disks": [
            {"mountpoint": "/" if d == 0 else f"/data{d}", "device": f"/dev/nvme{d}n1", "fstype": "ext4",
             "total_bytes": 4 * 1024**4, "used_bytes": (d + 1) * 1024**4}
            for d in range(disks)
        ],
        "gpu_status": {"state": "ok", "message": None, "lost": [], "stale": False},
        "gpus": gpu_list,
        "processes": [
            {"gpu_uuid": g["uuid"], "pid": 1000 + 10 * g["index"] + k, "process_name": f"python train_{k}.py",
             "used_gpu_memory": 1024 * (k + 1), "user": f"user{k}", "uid": 1000 + k,
             "container": f"lab-{k}", "container_kind": "lxc"}
            for g in gpu_list for k in range(processes)
        ],
    }


def mig_report(hostname="mig-host", busy_instances=(0,), **kw):
    """A report of one H100 in MIG mode, with its four MIG devices as the H100-MIG capture shows
    them (nvidia-smi -L and the default table, load state); processes in ``busy_instances``."""
    report = sample_report(hostname, gpus=1, processes=0, capture="h100-mig", **kw)
    gpu = report["gpus"][0]
    layout = [(0, "3g.40gb", 2, 11091, 40448, 60), (1, "2g.20gb", 3, 17, 20096, 32),
              (2, "1g.10gb", 9, 9, 9984, 16), (3, "1g.10gb", 10, 9, 9984, 16)]
    report["mig_devices"] = [
        {"gpu_uuid": gpu["uuid"], "gpu_index": 0, "mig_index": i, "uuid": f"MIG-{hostname}-{i:04d}",
         "profile": profile, "gpu_instance_id": gi, "compute_instance_id": 0, "memory.used": used,
         "memory.total": total, "sm_count": sms, "sampled_at": report["sample_time"]}
        for i, profile, gi, used, total, sms in layout]
    report["processes"] = [
        {"gpu_uuid": gpu["uuid"], "pid": 21180 + i, "process_name": "./gpu_burn", "used_gpu_memory": 2296,
         "user": "alice", "uid": 1000, "container": None, "container_kind": None,
         "gpu_instance_id": layout[i][2], "compute_instance_id": 0, "mig_uuid": f"MIG-{hostname}-{i:04d}"}
        for i in busy_instances]
    return report
