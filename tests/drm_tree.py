#!/usr/bin/env python3
"""Builds sysfs/procfs fixture trees for the DRM (AMD / Intel) collector.

    python tests/drm_tree.py            # (re)writes tests/fixtures/sysfs/* and tests/fixtures/procfs/*

The layout and file formats follow the kernel's documentation (see
``tests/fixtures/sysfs/SOURCE.md``): ``/sys/class/drm/cardN`` links into
``/sys/devices/pci.../<bus id>/drm/cardN`` whose ``device`` links back to the PCI device
directory; ``/proc/<pid>/fd/<n>`` are symlinks, ``/proc/<pid>/fdinfo/<n>`` the DRM client
statistics of ``Documentation/gpu/drm-usage-stats.rst``. Numbers are public
specifications (VRAM sizes, power limits, PCI ids from libdrm's amdgpu.ids / the kernel's
PCI id tables) or illustrative readings within them.

``python -m bench agent`` uses :func:`mi300x_host` to build its AMD case in a temporary
directory. The committed trees are the output of :func:`write_all`; ``test_drm.py`` checks
that they still match.
"""

import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
MIB = 1048576

# Real cgroup paths (cgroup v2) of the kinds procinfo/cgroups.py recognise.
DOCKER_ID = "3f4a9c2e1b7d6a5f8e9c0b1a2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e"
CGROUP_DOCKER = f"0::/system.slice/docker-{DOCKER_ID}.scope\n"
CGROUP_INCUS = "0::/lxc.payload.vision_trainer/system.slice/ssh.service\n"
CGROUP_SLURM = "0::/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0\n"
CGROUP_HOST = "0::/user.slice/user-65534.slice/session-3.scope\n"


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fp:
        fp.write(text)


def _link(path, target):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.remove(path)
    os.symlink(target, path)


def card(sys_root, index, bus_id, files, hwmon=None, vendor="0x1002", driver="amdgpu", card_files=None,
         connectors=(), bridge="0000:00:01.1"):
    """One PCI GPU with DRM node ``card<index>`` (+ ``renderD<128+index>`` and connector nodes).

    ``files``: PCI device attributes (name -> text); ``hwmon``: hwmon attributes or None for
    a card without hwmon; ``card_files``: attributes of the card node itself (i915 ``gt_*``).
    """
    dev_rel = f"devices/pci0000:00/{bridge}/{bus_id}"
    dev = os.path.join(sys_root, dev_rel)
    base = {"vendor": vendor + "\n", "uevent": f"DRIVER={driver}\nPCI_SLOT_NAME={bus_id}\n"}
    for name, text in {**base, **files}.items():
        _write(os.path.join(dev, name), text)
    _link(os.path.join(dev, "driver"), f"../../../../bus/pci/drivers/{driver}")
    nodes = [f"card{index}", f"renderD{128 + index}"] + [f"card{index}-{c}" for c in connectors]
    for node in nodes:
        node_dir = os.path.join(dev, "drm", node)
        os.makedirs(node_dir, exist_ok=True)
        _link(os.path.join(node_dir, "device"), f"../../../{bus_id}")
        _write(os.path.join(node_dir, "uevent"), f"MAJOR=226\nDEVNAME=dri/{node}\n")
        _link(os.path.join(sys_root, "class", "drm", node), f"../../{dev_rel}/drm/{node}")
    for name, text in (card_files or {}).items():
        _write(os.path.join(dev, "drm", f"card{index}", name), text)
    if hwmon is not None:
        n = index + 2
        for name, text in hwmon.items():
            _write(os.path.join(dev, "hwmon", f"hwmon{n}", name), text)


def bmc(sys_root):
    """The ASPEED BMC's VGA device that every server board has (not a compute GPU)."""
    card(sys_root, 0, "0000:03:00.0", {"device": "0x2000\n", "revision": "0x52\n"}, vendor="0x1a03", driver="ast",
         connectors=("VGA-1",), bridge="0000:00:1c.5")


def process(proc_root, pid, uid, cgroup, cmdline, fds, comm=None, uid_map=None, passwd=None, other_fds=3):
    """``/proc/<pid>`` with ``status``, ``cgroup``, ``cmdline`` and the given DRM fds.

    ``fds``: ``{fd number: (link target, fdinfo text or None)}``; None = the fdinfo entry
    vanished after the fd was listed. ``other_fds``: plain fds (files, sockets) to skip.
    """
    d = os.path.join(proc_root, str(pid))
    _write(os.path.join(d, "status"), f"Name:\t{comm or os.path.basename(cmdline[0])}\nPid:\t{pid}\n"
                                      f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    _write(os.path.join(d, "cgroup"), cgroup)
    _write(os.path.join(d, "cmdline"), "\x00".join(cmdline) + "\x00")
    _write(os.path.join(d, "comm"), (comm or os.path.basename(cmdline[0]))[:15] + "\n")
    if uid_map:
        _write(os.path.join(d, "uid_map"), uid_map)
    if passwd:
        _write(os.path.join(d, "root", "etc", "passwd"), passwd)
    os.makedirs(os.path.join(d, "fd"), exist_ok=True)
    os.makedirs(os.path.join(d, "fdinfo"), exist_ok=True)
    plain = ["/dev/null", "/dev/pts/0", "socket:[48121]", "pipe:[48122]", "/var/log/train.log",
             "anon_inode:[eventfd]", "/dev/kfd"]
    for n in range(other_fds):
        _link(os.path.join(d, "fd", str(n)), plain[n % len(plain)])
        _write(os.path.join(d, "fdinfo", str(n)), "pos:\t0\nflags:\t02\nmnt_id:\t25\nino:\t5\n")
    for fd, (target, text) in fds.items():
        _link(os.path.join(d, "fd", str(fd)), target)
        if text is not None:
            _write(os.path.join(d, "fdinfo", str(fd)), text)


def amdgpu_fdinfo(pdev, client_id, vram_kib, gtt_kib=2048, gfx_ns=0, compute_ns=0, new_keys=True):
    """amdgpu's fdinfo (amdgpu_fdinfo.c): drm-memory-* (older) and drm-resident-* etc. (6.9+)."""
    lines = ["pos:\t0", "flags:\t02100002", "mnt_id:\t26", "ino:\t1130", "drm-driver:\tamdgpu",
             f"drm-client-id:\t{client_id}", f"drm-pdev:\t{pdev}", f"pasid:\t{32768 + client_id}"]
    if new_keys:
        lines += [f"drm-total-vram:\t{vram_kib} KiB", "drm-shared-vram:\t0", f"drm-active-vram:\t{vram_kib} KiB",
                  f"drm-resident-vram:\t{vram_kib} KiB", "drm-purgeable-vram:\t0",
                  f"drm-total-gtt:\t{gtt_kib} KiB", f"drm-resident-gtt:\t{gtt_kib} KiB"]
    lines += [f"drm-memory-vram:\t{vram_kib} KiB", f"drm-memory-gtt:\t{gtt_kib} KiB", "drm-memory-cpu:\t0 KiB",
              "amd-memory-visible-vram:\t0 KiB", "amd-evicted-vram:\t0 KiB",
              f"amd-requested-vram:\t{vram_kib} KiB", f"amd-requested-gtt:\t{gtt_kib} KiB",
              f"drm-engine-gfx:\t{gfx_ns} ns", f"drm-engine-compute:\t{compute_ns} ns", "drm-engine-dma:\t0 ns",
              "drm-engine-dec:\t0 ns", "drm-engine-enc:\t0 ns"]
    return "\n".join(lines) + "\n"


def i915_fdinfo(pdev, client_id, local_mib, render_ns):
    """i915's fdinfo (i915_drm_client.c): regions system0/local0, engines with capacity."""
    return (f"pos:\t0\nflags:\t02100002\nmnt_id:\t26\nino:\t1201\ndrm-driver:\ti915\n"
            f"drm-client-id:\t{client_id}\ndrm-pdev:\t{pdev}\n"
            f"drm-total-system0:\t580 KiB\ndrm-shared-system0:\t0\ndrm-active-system0:\t0\n"
            f"drm-resident-system0:\t580 KiB\ndrm-purgeable-system0:\t0\n"
            f"drm-total-local0:\t{local_mib} MiB\ndrm-shared-local0:\t0\ndrm-active-local0:\t0\n"
            f"drm-resident-local0:\t{local_mib} MiB\ndrm-purgeable-local0:\t0\n"
            f"drm-engine-render:\t{render_ns} ns\ndrm-engine-copy:\t0 ns\ndrm-engine-video:\t0 ns\n"
            f"drm-engine-capacity-video:\t2\ndrm-engine-video-enhance:\t0 ns\n")


def xe_fdinfo(pdev, client_id, vram_mib, ccs_cycles, total_cycles):
    """xe's fdinfo (xe_drm_client.c): vram0/system regions, drm-cycles-*/drm-total-cycles-*."""
    return (f"pos:\t0\nflags:\t02100002\nmnt_id:\t26\nino:\t1301\ndrm-driver:\txe\n"
            f"drm-client-id:\t{client_id}\ndrm-pdev:\t{pdev}\n"
            f"drm-total-system:\t0\ndrm-shared-system:\t0\ndrm-active-system:\t0\ndrm-resident-system:\t0\n"
            f"drm-total-vram0:\t{vram_mib} MiB\ndrm-shared-vram0:\t0\ndrm-active-vram0:\t0\n"
            f"drm-resident-vram0:\t{vram_mib} MiB\n"
            f"drm-cycles-rcs:\t0\ndrm-total-cycles-rcs:\t{total_cycles}\n"
            f"drm-cycles-bcs:\t0\ndrm-total-cycles-bcs:\t{total_cycles}\n"
            f"drm-cycles-ccs:\t{ccs_cycles}\ndrm-total-cycles-ccs:\t{total_cycles}\ndrm-engine-capacity-ccs:\t1\n")


MI300X_BUS = ["0000:05:00.0", "0000:26:00.0", "0000:46:00.0", "0000:65:00.0",
              "0000:85:00.0", "0000:a6:00.0", "0000:c6:00.0", "0000:e5:00.0"]
MI300X_VRAM = 196592 * MIB  # 192 GiB HBM3 as the driver reports it


def mi300x_card(sys_root, i, bus, busy, used_mib, power_w, junction_c, mem_c):
    card(sys_root, i + 1, bus, {
        "device": "0x74a1\n", "revision": "0x00\n", "subsystem_vendor": "0x1002\n", "subsystem_device": "0x74a1\n",
        "product_name": "AMD Instinct MI300X\n",
        "unique_id": "%016x\n" % (0x5a1c3e7f90b2d400 + i * 0x1111),
        "gpu_busy_percent": f"{busy}\n", "mem_busy_percent": f"{busy // 3}\n",
        "mem_info_vram_total": f"{MI300X_VRAM}\n", "mem_info_vram_used": f"{used_mib * MIB}\n",
        "mem_info_gtt_total": f"{1024 * 1024 * MIB}\n",
        "pp_dpm_sclk": "0: 500Mhz\n1: 2100Mhz *\n" if busy else "0: 500Mhz *\n1: 2100Mhz\n",
        "pp_dpm_mclk": "0: 900Mhz\n1: 1100Mhz\n2: 1200Mhz\n3: 1300Mhz *\n",
        "current_compute_partition": "SPX\n", "available_compute_partition": "SPX, DPX, QPX, CPX\n",
        "current_memory_partition": "NPS1\n", "available_memory_partition": "NPS1, NPS4\n",
    }, hwmon={
        "name": "amdgpu\n",
        "temp2_input": f"{junction_c * 1000}\n", "temp2_label": "junction\n", "temp2_crit": "110000\n",
        "temp3_input": f"{mem_c * 1000}\n", "temp3_label": "mem\n", "temp3_crit": "95000\n",
        "power1_input": f"{power_w * 1000000}\n", "power1_label": "PPT\n",
        "power1_cap": "750000000\n", "power1_cap_max": "750000000\n",
    }, bridge="0000:00:01.%d" % (i % 8))


def mi300x_host(root, procs_per_gpu=1, other_processes=0, fds_per_other=20):
    """8 x MI300X (plus the BMC's VGA) and their DRM clients; returns (sys_root, proc_root).

    ``procs_per_gpu`` > 1 adds more training processes per GPU (benchmark); with the default
    the tree also holds the de-duplication cases (a dup'ed fd, a forked child sharing its
    parent's client, a process on two GPUs, an idle handle). ``other_processes``: processes
    without GPU fds (each with ``fds_per_other`` plain fds) that the scan must step over.
    """
    sys_root, proc_root = os.path.join(root, "sys"), os.path.join(root, "proc")
    bmc(sys_root)
    loads = [(100, 181200, 704, 86, 72), (97, 181200, 689, 84, 71), (0, 283, 141, 38, 35), (100, 99408, 650, 80, 70),
             (64, 65536, 455, 61, 55), (0, 283, 139, 37, 34), (100, 190000, 745, 90, 78), (12, 8200, 210, 45, 40)]
    for i, bus in enumerate(MI300X_BUS):
        mi300x_card(sys_root, i, bus, *loads[i])
    _write(os.path.join(sys_root, "module", "amdgpu", "version"), "6.8.5\n")
    if procs_per_gpu == 1:
        alice = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
        for i, bus in enumerate(MI300X_BUS):
            if i in (2, 5):
                continue  # idle GPUs
            pid = 4100 + i * 10
            vram_kib = (loads[i][1] - 283) * 1024
            kind = (0, 1, 0, 2, 0, 0, 1, 2)[i]  # host session, docker, incus container
            cgroup, uid, extra = [(CGROUP_HOST, 65534, {}),
                                  (CGROUP_DOCKER, 0, {}),
                                  (CGROUP_INCUS, 1001000, {"uid_map": "         0    1000000 1000000000\n",
                                                           "passwd": alice})][kind]
            fds = {5: (f"/dev/dri/renderD{129 + i}",
                       amdgpu_fdinfo(bus, 10 + i, vram_kib, gfx_ns=0, compute_ns=7000000000 * (i + 1)))}
            process(proc_root, pid, uid, cgroup, ["/usr/bin/python3", "train.py", f"--rank={i}"], fds, **extra)
        # The same client through a dup'ed fd and through a forked child (de-duplicated).
        dup = amdgpu_fdinfo(MI300X_BUS[0], 10, (181200 - 283) * 1024, compute_ns=7000000000)
        _link(os.path.join(proc_root, "4100", "fd", "9"), "/dev/dri/renderD129")
        _write(os.path.join(proc_root, "4100", "fdinfo", "9"), dup)
        process(proc_root, 4101, 65534, CGROUP_HOST, ["/usr/bin/python3", "-c", "dataloader worker"],
                {7: ("/dev/dri/renderD129", dup)})
        # One process on two GPUs (pipeline parallel): two clients, two process rows.
        process(proc_root, 4300, 65534, CGROUP_SLURM, ["/opt/venv/bin/python", "pipeline.py"],
                {4: ("/dev/dri/renderD132", amdgpu_fdinfo(MI300X_BUS[3], 40, 1024 * 1024, compute_ns=1000)),
                 6: ("/dev/dri/renderD133", amdgpu_fdinfo(MI300X_BUS[4], 41, 2048 * 1024, compute_ns=1000))})
        # A monitoring tool holding an idle handle: no memory, no engine time -> not listed.
        process(proc_root, 4400, 0, CGROUP_HOST, ["/usr/bin/amd-smi", "monitor"],
                {3: ("/dev/dri/renderD129", amdgpu_fdinfo(MI300X_BUS[0], 99, 0, gtt_kib=0))}, other_fds=3)
    else:
        pid = 10000
        for i, bus in enumerate(MI300X_BUS):
            for k in range(procs_per_gpu):
                pid += 1
                fds = {20: (f"/dev/dri/renderD{129 + i}",
                            amdgpu_fdinfo(bus, 100 + pid, 1024 * 1024 * (k + 1), compute_ns=10**9 * k))}
                process(proc_root, pid, 65534, [CGROUP_HOST, CGROUP_DOCKER, CGROUP_SLURM][k % 3],
                        ["/usr/bin/python3", "train.py"], fds, other_fds=30)
    for n in range(other_processes):
        process(proc_root, 20000 + n, 0, CGROUP_HOST, ["/usr/sbin/daemon"], {}, other_fds=fds_per_other)
    return sys_root, proc_root


def radeon_host(root):
    """A Ryzen workstation: one Radeon RX 7900 XTX driving a display (no product_name, no
    unique_id) and the CPU's integrated Radeon (skipped as integrated graphics)."""
    sys_root, proc_root = os.path.join(root, "sys"), os.path.join(root, "proc")
    card(sys_root, 0, "0000:03:00.0", {
        "device": "0x744c\n", "revision": "0xc8\n", "subsystem_vendor": "0x1002\n", "subsystem_device": "0x0e3b\n",
        "gpu_busy_percent": "37\n", "mem_busy_percent": "12\n",
        "mem_info_vram_total": "25753026560\n", "mem_info_vram_used": f"{6144 * MIB}\n",
        "pp_dpm_sclk": "0: 500Mhz\n1: 1423Mhz *\n2: 2526Mhz\n",
        "pp_dpm_mclk": "0: 96Mhz\n1: 456Mhz\n2: 772Mhz\n3: 1249Mhz *\n",
    }, hwmon={
        "name": "amdgpu\n",
        "temp1_input": "52000\n", "temp1_label": "edge\n", "temp2_input": "67000\n", "temp2_label": "junction\n",
        "temp3_input": "60000\n", "temp3_label": "mem\n",
        "power1_average": "187000000\n", "power1_label": "PPT\n", "power1_cap": "303000000\n",
        "pwm1": "89\n", "pwm1_enable": "2\n", "fan1_input": "1150\n",
        "freq1_input": "1423000000\n", "freq1_label": "sclk\n", "freq2_input": "1249000000\n", "freq2_label": "mclk\n",
    }, connectors=("DP-1", "DP-2", "HDMI-A-1"), bridge="0000:02:00.0")
    # The Ryzen 9 7950X's integrated Radeon (Raphael): a 512 MiB carve-out, skipped by default.
    card(sys_root, 1, "0000:13:00.0", {
        "device": "0x164e\n", "revision": "0xc1\n", "gpu_busy_percent": "0\n",
        "mem_info_vram_total": f"{512 * MIB}\n", "mem_info_vram_used": f"{40 * MIB}\n",
    }, hwmon={"name": "amdgpu\n", "temp1_input": "41000\n", "temp1_label": "edge\n"},
        connectors=("HDMI-A-2",), bridge="0000:00:08.1")
    process(proc_root, 1234, 0, "0::/system.slice/display-manager.service\n", ["/usr/lib/xorg/Xorg", ":0"],
            {12: ("/dev/dri/card0", amdgpu_fdinfo("0000:03:00.0", 1, 262144, gfx_ns=912345678901))})
    process(proc_root, 2345, 65534, CGROUP_HOST, ["/home/bob/venv/bin/python", "finetune.py"],
            {30: ("/dev/dri/renderD128", amdgpu_fdinfo("0000:03:00.0", 7, 4 * 1024 * 1024, compute_ns=5 * 10**11,
                                                       new_keys=False))})
    return sys_root, proc_root


def intel_host(root):
    """Integrated UHD (skipped) + Arc A770 (i915) + Data Center GPU Max 1100 (xe)."""
    sys_root, proc_root = os.path.join(root, "sys"), os.path.join(root, "proc")
    card(sys_root, 0, "0000:00:02.0", {"device": "0x4680\n", "revision": "0x0c\n"}, vendor="0x8086",
         driver="i915", hwmon=None, connectors=("HDMI-A-1",), bridge="0000:00:02.0")
    card(sys_root, 1, "0000:03:00.0", {"device": "0x56a0\n", "revision": "0x08\n"}, vendor="0x8086", driver="i915",
         hwmon={"name": "i915\n", "power1_max": "190000000\n", "power1_rated_max": "225000000\n",
                "energy1_input": "123456000000\n", "in0_input": "880\n"},
         card_files={"gt_act_freq_mhz": "2100\n", "gt_cur_freq_mhz": "2100\n", "gt_max_freq_mhz": "2400\n"},
         connectors=("DP-1",), bridge="0000:02:01.0")
    card(sys_root, 2, "0000:8a:00.0", {"device": "0x0bda\n", "revision": "0x2f\n",
                                       "tile0/physical_vram_size_bytes": f"{49152 * MIB}\n",
                                       "tile0/gt0/freq0/act_freq": "1550\n"},
         vendor="0x8086", driver="xe",
         hwmon={"name": "xe\n", "power1_max": "300000000\n", "energy1_input": "98765000000\n",
                "temp2_input": "58000\n", "temp2_label": "pkg\n", "temp3_input": "54000\n", "temp3_label": "vram\n"},
         bridge="0000:89:00.0")
    process(proc_root, 3100, 65534, CGROUP_HOST, ["/usr/bin/python3", "xpu_train.py"],
            {8: ("/dev/dri/renderD129", i915_fdinfo("0000:03:00.0", 11, 6144, 25662044495))})
    process(proc_root, 3200, 0, CGROUP_DOCKER, ["/usr/local/bin/python", "serve.py"],
            {8: ("/dev/dri/renderD130", xe_fdinfo("0000:8a:00.0", 4, 20480, 28257900, 7655183225))})
    return sys_root, proc_root


def nvidia_amd_host(root):
    """An NVIDIA card (nvidia-drm; left to nvidia-smi) next to an AMD Instinct MI210."""
    sys_root, proc_root = os.path.join(root, "sys"), os.path.join(root, "proc")
    card(sys_root, 0, "0000:17:00.0", {"device": "0x2330\n", "revision": "0xa1\n"}, vendor="0x10de",
         driver="nvidia", bridge="0000:16:00.0")
    card(sys_root, 1, "0000:b1:00.0", {
        "device": "0x740f\n", "revision": "0x02\n", "product_name": "AMD Instinct MI210\n",
        "unique_id": "7d1a6b2c3e4f5061\n", "gpu_busy_percent": "88\n", "mem_busy_percent": "41\n",
        "mem_info_vram_total": f"{65520 * MIB}\n", "mem_info_vram_used": f"{30720 * MIB}\n",
        "pp_dpm_sclk": "0: 500Mhz\n1: 1700Mhz *\n", "pp_dpm_mclk": "0: 1600Mhz *\n",
    }, hwmon={
        "name": "amdgpu\n", "temp1_input": "51000\n", "temp1_label": "edge\n",
        "temp2_input": "63000\n", "temp2_label": "junction\n", "temp3_input": "58000\n", "temp3_label": "mem\n",
        "power1_average": "241000000\n", "power1_cap": "300000000\n",
    }, bridge="0000:b0:00.0")
    process(proc_root, 5150, 65534, CGROUP_HOST, ["/usr/bin/python3", "rocm_job.py"],
            {6: ("/dev/dri/renderD129", amdgpu_fdinfo("0000:b1:00.0", 3, 30000 * 1024, compute_ns=4 * 10**10))})
    return sys_root, proc_root


def odd_host(root):
    """Edge cases: a card without hwmon, a card with garbage values, a duplicate card node,
    a process whose fdinfo vanished, a process with garbage fdinfo values."""
    sys_root, proc_root = os.path.join(root, "sys"), os.path.join(root, "proc")
    card(sys_root, 0, "0000:c1:00.0", {
        "device": "0x740c\n", "revision": "0x01\n", "product_name": "AMD Instinct MI250X\n",
        "unique_id": "0c1d2e3f40516273\n", "gpu_busy_percent": "5\n", "mem_busy_percent": "0\n",
        "mem_info_vram_total": f"{65520 * MIB}\n", "mem_info_vram_used": f"{10 * MIB}\n",
    }, hwmon=None, bridge="0000:c0:00.0")
    card(sys_root, 1, "0000:c9:00.0", {
        "device": "0x740c\n", "revision": "0x01\n", "product_name": "AMD Instinct MI250X\n",
        "unique_id": "not-a-hex-id!\n", "gpu_busy_percent": "garbage\n", "mem_busy_percent": "250\n",
        "mem_info_vram_total": f"{65520 * MIB}\n", "mem_info_vram_used": "-4096\n",
        "pp_dpm_sclk": "0: 500Mhz\n1: 1700Mhz\n", "pp_dpm_mclk": "nonsense\n",
        "current_compute_partition": "spx; rm -rf /\n",
    }, hwmon={
        "name": "amdgpu\n", "temp1_input": "N/A\n", "temp1_label": "edge\n", "temp2_input": "99999999\n",
        "temp2_label": "junction\n", "temp3_input": "61000\n", "temp3_label": "mem\n",
        "power1_average": "\n", "power1_cap": "560000000\n",
    }, bridge="0000:c8:00.0")
    # A second card node for the same PCI device (counted once).
    _link(os.path.join(sys_root, "class", "drm", "card2"), "../../devices/pci0000:00/0000:c8:00.0/0000:c9:00.0/drm/card1")
    # fd listed, fdinfo already gone: the process exited between the two reads.
    process(proc_root, 6100, 65534, CGROUP_HOST, ["/usr/bin/python3", "short.py"],
            {5: ("/dev/dri/renderD128", None)})
    # A process whose fd directory is gone entirely (only its cmdline left).
    os.makedirs(os.path.join(proc_root, "6150"), exist_ok=True)
    with open(os.path.join(proc_root, "6150", "cmdline"), "w") as f:
        f.write("/usr/bin/python3\0gone.py\0")
    # Garbage values in an otherwise valid client: vram unparseable (null), gfx time valid.
    bad = ("drm-driver:\tamdgpu\ndrm-client-id:\t8\ndrm-pdev:\t0000:c9:00.0\ndrm-memory-vram:\tlots KiB\n"
           "drm-engine-gfx:\t12345 ns\ndrm-engine-compute:\tbusy ns\ndrm-engine-capacity-gfx:\tzero\n")
    process(proc_root, 6200, 65534, CGROUP_HOST, ["/usr/bin/python3", "odd.py"],
            {5: ("/dev/dri/renderD129", bad), 6: ("/dev/dri/renderD129", "drm-driver:\tamdgpu\nno client id\n")})
    return sys_root, proc_root


STRIX_HALO_BUS = "0000:c3:00.0"
STRIX_HALO_VRAM = 536870912  # mem_info_vram_total: the BIOS's 512 MiB carve-out (ROCm#6004, real)
STRIX_HALO_GTT = 137438953472  # mem_info_gtt_total: 128 GiB GTT pool (ROCm#6004, real)
STRIX_HALO_GTT_USED_MIB = 24174  # mem_info_gtt_used with a model loaded (homelab-monitor#247, real)


def strix_halo_host(root):
    """AMD Ryzen AI Max+ 395 (Strix Halo, Radeon 8060S, PCI 1002:1586 rev d1 at c3:00.0) with a 512 MiB
    VRAM carve-out and a 128 GiB GTT pool, running one LLM server whose weights live in GTT
    (drm-memory-gtt), and the desktop compositor holding a little VRAM."""
    sys_root, proc_root = os.path.join(root, "sys"), os.path.join(root, "proc")
    card(sys_root, 1, STRIX_HALO_BUS, {
        "device": "0x1586\n", "revision": "0xd1\n", "gpu_busy_percent": "97\n",
        "mem_info_vram_total": f"{STRIX_HALO_VRAM}\n", "mem_info_vram_used": f"{148 * MIB}\n",
        "mem_info_vis_vram_total": f"{STRIX_HALO_VRAM}\n",
        "mem_info_gtt_total": f"{STRIX_HALO_GTT}\n", "mem_info_gtt_used": f"{STRIX_HALO_GTT_USED_MIB * MIB}\n",
        "pp_dpm_sclk": "0: 600Mhz\n1: 2900Mhz *\n", "pp_dpm_mclk": "0: 1000Mhz *\n",
    }, hwmon={
        "name": "amdgpu\n", "temp1_input": "71000\n", "temp1_label": "edge\n",
        "power1_input": "98000000\n", "power1_label": "PPT\n",
    }, connectors=("DP-1", "HDMI-A-1"), bridge="0000:00:08.1")
    process(proc_root, 3100, 1000, CGROUP_HOST, ["/usr/bin/gnome-shell"],
            {14: ("/dev/dri/card1", amdgpu_fdinfo(STRIX_HALO_BUS, 2, 5348, gtt_kib=14336, gfx_ns=81234567890))})
    process(proc_root, 4200, 1000, CGROUP_HOST, ["/opt/llama.cpp/build/bin/llama-server", "-m", "model.gguf"],
            {7: ("/dev/dri/renderD128", amdgpu_fdinfo(STRIX_HALO_BUS, 5, 2048, gtt_kib=24160 * 1024,
                                                       compute_ns=912345678901))})
    return sys_root, proc_root


HOSTS = {
    "mi300x-8": mi300x_host,
    "radeon-7900xtx": radeon_host,
    "intel-arc-max": intel_host,
    "nvidia-amd": nvidia_amd_host,
    "amd-odd": odd_host,
    "strix-halo": strix_halo_host,
}

AMDGPU_IDS = """# List of AMDGPU IDs (excerpt of libdrm's data/amdgpu.ids; format: device_id,\trevision_id,\tproduct_name)
# Format: device_id, revision_id, product_name
1.0.0
740C,\t01,\tAMD Instinct MI250X / MI250
740F,\t02,\tAMD Instinct MI210
744C,\tC8,\tAMD Radeon RX 7900 XTX
744C,\tCC,\tAMD Radeon RX 7900 XT
74A1,\t00,\tAMD Instinct MI300X
1586,\tD1,\tAMD Radeon 8060S Graphics
"""


PCI_IDS = """# Excerpt of the PCI ID database (https://pci-ids.ucw.cz, pciutils' pci.ids), fixture for the tests
1002  Advanced Micro Devices, Inc. [AMD/ATI]
\t744c  Navi 31 [Radeon RX 7900 XT/7900 XTX/7900 GRE/7900M]
\t74a1  Aqua Vanjaram [Instinct MI300X]
10de  NVIDIA Corporation
\t2330  GH100 [H100 SXM5 80GB]
8086  Intel Corporation
\t0bda  Ponte Vecchio XT (1 Tile) [Data Center GPU Max 1100]
\t\t8086 0000  Data Center GPU Max 1100
\t4680  AlderLake-S GT1
\t56a0  DG2 [Arc A770]
"""


def write_all(base=FIXTURES):
    """(Re)write every fixture tree under ``base/sysfs/<host>`` and ``base/procfs/<host>``."""
    import tempfile
    for name, build in HOSTS.items():
        for kind in ("sysfs", "procfs"):
            shutil.rmtree(os.path.join(base, kind, name), ignore_errors=True)
        with tempfile.TemporaryDirectory() as tmp:
            sys_root, proc_root = build(tmp)
            shutil.copytree(sys_root, os.path.join(base, "sysfs", name), symlinks=True)
            if os.path.isdir(proc_root):
                shutil.copytree(proc_root, os.path.join(base, "procfs", name), symlinks=True)
            else:
                os.makedirs(os.path.join(base, "procfs", name))
        for kind in ("sysfs", "procfs"):
            doc = " ".join(build.__doc__.split())
            _write(os.path.join(base, kind, name, "SOURCE.md"),
                   f"# {kind} fixture `{name}`\n\n{doc}\n\nWritten by `tests/drm_tree.py` (`{build.__name__}`) from "
                   f"the kernel's documented formats and public values; see `../SOURCE.md` for the sources.\n")
    _write(os.path.join(base, "sysfs", "amdgpu.ids"), AMDGPU_IDS)
    _write(os.path.join(base, "sysfs", "pci.ids"), PCI_IDS)


if __name__ == "__main__":
    write_all(sys.argv[1] if len(sys.argv) > 1 else FIXTURES)
