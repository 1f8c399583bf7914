"""Finding the unified hierarchy from /proc/self/cgroup and mountinfo, and the fallback where there is none.

The inputs are the kernel's text formats, written to a directory standing in for /proc.
"""

from __future__ import annotations

from pathlib import Path

from agent.executors.cgroups import Containment, open_containment, own_cgroup, unified_mount

HYBRID_CGROUP = "4:memory:/process_api/53d3\n1:cpu:/\n0::/\n"
HYBRID_MOUNTS = (
    "30 24 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    "42 30 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
)
PURE_V2_MOUNTS = (
    "27 22 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
)


def test_own_cgroup_is_the_unified_line() -> None:
    assert own_cgroup(HYBRID_CGROUP) == "/"
    assert own_cgroup("0::/system.slice/reconcile-agent.service\n") == "/system.slice/reconcile-agent.service"
    assert own_cgroup("4:memory:/x\n1:cpu:/\n") is None  # v1 only


def test_the_unified_mount_is_found_on_hybrid_and_pure_v2_hosts() -> None:
    assert unified_mount(HYBRID_MOUNTS) == ("/", Path("/sys/fs/cgroup/unified"))
    assert unified_mount(PURE_V2_MOUNTS) == ("/", Path("/sys/fs/cgroup"))
    assert unified_mount("41 31 0:38 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n") == (
        "/",
        Path("/mnt/cg two"),
    )
    assert unified_mount(HYBRID_MOUNTS.splitlines()[2]) is None


def fake_proc(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self/cgroup").write_text(cgroup)
    (proc / "self/mountinfo").write_text(mountinfo)
    return proc


def test_without_a_cgroup2_mount_the_agent_falls_back_to_process_groups_and_says_why(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, HYBRID_CGROUP, HYBRID_MOUNTS.splitlines()[2] + "\n")
    containment = open_containment(tmp_path / "state", proc)
    assert containment == Containment(kind="process-group", reason="no cgroup v2 hierarchy is mounted")
    assert containment.limits == []
    assert containment.refusal(["pids_max"]) == (
        "pids limit requested, but this node has no cgroup for workloads (no cgroup v2 hierarchy is mounted)"
    )


def test_where_cgroups_cannot_be_made_the_agent_falls_back_naming_the_error(tmp_path: Path) -> None:
    # A plain directory named as the mount point: whatever gets created there, it has no cgroup files.
    point = tmp_path / "not-cgroupfs"
    point.mkdir()
    proc = fake_proc(tmp_path, "0::/\n", f"41 31 0:38 / {point} rw - cgroup2 cgroup2 rw\n")
    containment = open_containment(tmp_path / "state", proc)
    assert containment.kind == "process-group"
    assert containment.reason.startswith("cannot create cgroups: ")
    assert "cgroup.controllers" in containment.reason


def test_a_limit_without_its_controller_is_refused_with_the_controller_named() -> None:
    containment = Containment(kind="cgroup", workloads=Path("/x"), controllers=frozenset({"pids"}))
    assert containment.limits == ["pids_max"]
    assert containment.refusal(["pids_max"]) is None
    assert containment.refusal(["pids_max", "memory_max_bytes"]) == (
        "memory limit requested, but this node's cgroup has no memory controller"
    )
