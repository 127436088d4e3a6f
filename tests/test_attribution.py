"""Process attribution: cgroup paths of each container runtime, users inside user namespaces.

The cgroup texts are in the exact formats the kernel prints for each runtime (cgroup v2
unified ``0::/path`` and v1 ``N:controller:/path``), as documented by systemd, LXC/Incus,
Docker, Podman, Kubernetes (cri-containerd) and Slurm's cgroup plugins.
"""

import json
import os

import pytest

from monitor_agent import cgroups
from monitor_agent.procinfo import ProcessInfo, inside_uid, parse_status_uid, parse_uid_map

DOCKER_ID = "3f4e5d6c7b8a" + "0" * 52
K8S_ID = "a1b2c3d4e5f6" + "1" * 52
POD = "6f2b0c1e-8a3d-4c1f-9b2e-1a2b3c4d5e6f"

CASES = [
    ("lxc v2", "0::/lxc.payload.trainbox/system.slice/ssh.service\n", ("lxc", "trainbox")),
    ("lxc v1", "12:memory:/lxc.payload/trainbox\n11:cpu,cpuacct:/lxc.payload/trainbox\n", ("lxc", "trainbox")),
    ("lxc legacy", "4:devices:/lxc/oldbox/init.scope\n", ("lxc", "oldbox")),
    ("incus project", "0::/lxc.payload.vision_ws-3/init.scope\n", ("lxc", "vision_ws-3")),
    ("incus payload", "0::/incus.payload.team-a_box1/user.slice\n", ("incus", "team-a_box1")),
    ("incus machine slice", "0::/machine.slice/incus-box2.scope\n", ("incus", "box2")),
    ("docker v2", f"0::/system.slice/docker-{DOCKER_ID}.scope\n", ("docker", DOCKER_ID[:12])),
    ("docker v1", f"13:pids:/docker/{DOCKER_ID}\n12:memory:/docker/{DOCKER_ID}\n", ("docker", DOCKER_ID[:12])),
    ("podman rootless", f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{DOCKER_ID}.scope/container\n",
     ("podman", DOCKER_ID[:12])),
    ("kubernetes v2",
     f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}.slice/cri-containerd-{K8S_ID}.scope\n",
     ("kubernetes", f"pod {POD} / {K8S_ID[:12]}")),
    ("kubernetes v1", f"11:memory:/kubepods/besteffort/pod{POD}/{K8S_ID}\n", ("kubernetes", f"pod {POD} / {K8S_ID[:12]}")),
    ("containerd plain", f"0::/system.slice/containerd.service/cri-containerd-{K8S_ID}.scope\n", ("containerd", K8S_ID[:12])),
    ("slurm v2", "0::/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0\n", ("slurm", "job 4242")),
    ("slurm v1", "7:memory:/slurm/uid_1000/job_77/step_batch/task_0\n", ("slurm", "job 77")),
    ("user session", "0::/user.slice/user-1001.slice/session-4.scope\n", ("user-slice", "user-1001")),
    ("host service", "0::/system.slice/nvidia-persistenced.service\n", (None, None)),
    ("empty", "", (None, None)),
]


@pytest.mark.parametrize("text,expected", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_cgroup_runtimes(text, expected):
    assert cgroups.parse_cgroup(text) == expected


def test_systemd_escapes_are_decoded():
    assert cgroups.parse_cgroup("0::/machine.slice/incus-my\\x2dbox.scope\n") == ("incus", "my-box")


def test_status_uid_and_uid_map():
    assert parse_status_uid("Name:\tpython\nUid:\t1001000\t1001000\t1001000\t1001000\n") == 1001000
    assert parse_status_uid("garbage") is None
    mapping = parse_uid_map("         0    1000000 1000000000\n")
    assert inside_uid(1001000, mapping) == 1000
    assert inside_uid(500, mapping) is None
    assert inside_uid(1000, parse_uid_map("0 0 4294967295\n")) is None  # host namespace


def make_proc(root, pid, uid, cgroup, uid_map="0 0 4294967295\n", passwd=None):
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "status").write_text(f"Name:\tpython\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\n")
    (d / "cgroup").write_text(cgroup)
    (d / "uid_map").write_text(uid_map)
    if passwd is not None:
        (d / "root" / "etc").mkdir(parents=True)
        (d / "root" / "etc" / "passwd").write_text(passwd)


def test_unprivileged_container_user_from_its_own_passwd(tmp_path):
    make_proc(tmp_path, 4242, 1001000, "0::/lxc.payload.trainbox/user.slice\n",
              uid_map="0 1000000 1000000000\n",
              passwd="root:x:0:0::/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n")
    info = ProcessInfo(proc_root=str(tmp_path)).owner(4242)
    assert info == {"uid": 1001000, "user": "alice", "container": "trainbox", "container_kind": "lxc"}


def test_unknown_shifted_uid_shows_the_number(tmp_path):
    make_proc(tmp_path, 7, 1005000, "0::/lxc.payload.box/\n", uid_map="0 1000000 1000000000\n", passwd="root:x:0:0::/:/bin/sh\n")
    assert ProcessInfo(proc_root=str(tmp_path)).owner(7)["user"] == "1005000"


def test_host_user_from_pwd(tmp_path):
    make_proc(tmp_path, 8, 0, "0::/user.slice/user-0.slice/session-1.scope\n")
    info = ProcessInfo(proc_root=str(tmp_path)).owner(8)
    assert info == {"uid": 0, "user": "root", "container": "user-0", "container_kind": "user-slice"}


def test_docker_name_from_its_state_file(tmp_path):
    proc, docker = tmp_path / "proc", tmp_path / "docker"
    make_proc(proc, 9, 0, f"0::/system.slice/docker-{DOCKER_ID}.scope\n")
    (docker / "containers" / DOCKER_ID).mkdir(parents=True)
    (docker / "containers" / DOCKER_ID / "config.v2.json").write_text(json.dumps({"Name": "/llama-finetune"}))
    info = ProcessInfo(proc_root=str(proc), docker_root=str(docker)).owner(9)
    assert info["container"] == "llama-finetune" and info["container_kind"] == "docker"


def test_pid_that_exited_is_skipped_quietly(tmp_path):
    assert ProcessInfo(proc_root=str(tmp_path)).owner(99999) == {
        "uid": None, "user": None, "container": None, "container_kind": None}
    assert ProcessInfo(proc_root=str(tmp_path)).owner(None)["user"] is None


def test_real_proc_for_this_process():
    info = ProcessInfo().owner(os.getpid())
    assert info["uid"] == os.getuid()
    assert info["user"]
