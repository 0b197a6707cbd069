"""The usable CPU count: affinity capped by a cgroup v1 or v2 quota, read from injected (temporary) paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cpus import cgroup_cpu_quota, usable_cpus

HOST_CPUS = 64


def eight_cpus() -> int:
    return 8


def host_cpus() -> int:
    return HOST_CPUS


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def cgroup_v2(tmp_path: Path, cpu_max: dict[str, str], own: str = "/") -> tuple[Path, Path]:
    """A cgroup2 mount with `cpu.max` files at the given relative directories; the process sits in `own`."""
    mount = tmp_path / "fs"
    mount.mkdir()
    for directory, text in cpu_max.items():
        write(mount / directory / "cpu.max", text)
    proc = tmp_path / "proc-self-cgroup"
    write(proc, f"0::{own}\n")
    return mount, proc


def test_a_two_cpu_cgroup_v2_quota_gives_two_on_a_64_cpu_host(tmp_path: Path) -> None:
    mount, proc = cgroup_v2(tmp_path, {".": "200000 100000\n"})
    assert usable_cpus(cgroup_mount=mount, proc_self_cgroup=proc, affinity=host_cpus) == 2


def test_a_two_cpu_cgroup_v1_quota_gives_two(tmp_path: Path) -> None:
    mount = tmp_path / "fs"
    write(mount / "cpu,cpuacct" / "cpu.cfs_quota_us", "200000\n")
    write(mount / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "proc-self-cgroup"
    # Docker without a cgroup namespace names the host's path; the container sees its own cgroup at the mount.
    write(proc, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n")
    assert usable_cpus(cgroup_mount=mount, proc_self_cgroup=proc, affinity=host_cpus) == 2


@pytest.mark.parametrize(("cpu_max", "expected"), [("150000 100000", 2), ("50000 100000", 1), ("10 1000000", 1)])
def test_fractional_quotas_round_up_and_never_reach_zero(tmp_path: Path, cpu_max: str, expected: int) -> None:
    mount, proc = cgroup_v2(tmp_path, {".": cpu_max})
    assert usable_cpus(cgroup_mount=mount, proc_self_cgroup=proc, affinity=host_cpus) == expected


def test_the_tightest_quota_among_the_cgroup_and_its_ancestors_wins(tmp_path: Path) -> None:
    mount, proc = cgroup_v2(
        tmp_path,
        {"kubepods": "400000 100000", "kubepods/pod1": "300000 100000", "kubepods/pod1/app": "max 100000"},
        own="/kubepods/pod1/app",
    )
    assert cgroup_cpu_quota(cgroup_mount=mount, proc_self_cgroup=proc) == 3.0
    assert usable_cpus(cgroup_mount=mount, proc_self_cgroup=proc, affinity=host_cpus) == 3


def test_an_affinity_mask_narrower_than_the_quota_wins(tmp_path: Path) -> None:
    mount, proc = cgroup_v2(tmp_path, {".": "1600000 100000"})
    assert usable_cpus(cgroup_mount=mount, proc_self_cgroup=proc, affinity=eight_cpus) == 8


@pytest.mark.parametrize("cpu_max", ["max 100000\n", "garbage\n", "100000 0\n", ""])
def test_no_quota_or_an_unreadable_one_leaves_the_affinity_count(tmp_path: Path, cpu_max: str) -> None:
    mount, proc = cgroup_v2(tmp_path, {".": cpu_max})
    assert cgroup_cpu_quota(cgroup_mount=mount, proc_self_cgroup=proc) is None
    assert usable_cpus(cgroup_mount=mount, proc_self_cgroup=proc, affinity=eight_cpus) == 8


def test_an_unlimited_v1_quota_leaves_the_affinity_count(tmp_path: Path) -> None:
    mount = tmp_path / "fs"
    write(mount / "cpu" / "cpu.cfs_quota_us", "-1\n")
    write(mount / "cpu" / "cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "proc-self-cgroup"
    write(proc, "3:cpu:/\n")
    assert usable_cpus(cgroup_mount=mount, proc_self_cgroup=proc, affinity=eight_cpus) == 8


def test_without_cgroups_at_all_the_affinity_count_stands(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert usable_cpus(cgroup_mount=missing, proc_self_cgroup=missing, affinity=eight_cpus) == 8


def test_the_real_process_gets_at_least_one_cpu() -> None:
    assert usable_cpus() >= 1
