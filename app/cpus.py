"""How many CPUs this process may actually use: its affinity mask, capped by any cgroup CPU quota.

`os.cpu_count()` counts the host's CPUs, so `docker run --cpus 2` (or a pod's `limits.cpu: 2`) on a 64-core
host would get 64 threads of each kind, all throttled to 2 CPUs of time. The quota is read from cgroup v2
(`cpu.max`) or v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`), for the process's own cgroup and every
ancestor up to the mount (the tightest wins), and rounded up: 1.5 CPUs of quota can keep 2 threads busy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

CGROUP_MOUNT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 mounts the cpu controller under either name, depending on the distribution.
_V1_CPU_DIRECTORIES = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def usable_cpus(
    *,
    cgroup_mount: Path | None = None,
    proc_self_cgroup: Path | None = None,
    affinity: Callable[[], int] | None = None,
) -> int:
    """min(CPUs in the affinity mask, the cgroup quota rounded up); at least 1. Defaults: this process's."""
    cpus = (affinity or _affinity_count)()
    quota = cgroup_cpu_quota(
        cgroup_mount=cgroup_mount or CGROUP_MOUNT, proc_self_cgroup=proc_self_cgroup or PROC_SELF_CGROUP
    )
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(*, cgroup_mount: Path = CGROUP_MOUNT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """The tightest CPU quota (in CPUs) over this process's cgroup and its ancestors; None when unlimited."""
    memberships = _memberships(proc_self_cgroup)
    quotas: list[float] = []
    v2_path = memberships.get("")
    if v2_path is not None:
        for directory in _ancestors(cgroup_mount, v2_path):
            quotas.extend(_v2_quota(directory / "cpu.max"))
    v1_path = memberships.get("cpu")
    if v1_path is not None:
        for name in _V1_CPU_DIRECTORIES:
            for directory in _ancestors(cgroup_mount / name, v1_path):
                quotas.extend(_v1_quota(directory / "cpu.cfs_quota_us", directory / "cpu.cfs_period_us"))
    return min(quotas) if quotas else None


def _affinity_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _memberships(proc_self_cgroup: Path) -> dict[str, str]:
    """Controller -> cgroup path, from lines like `0::/kubepods/pod1` (v2, key "") or `4:cpu,cpuacct:/docker/ab`."""
    try:
        text = proc_self_cgroup.read_text()
    except OSError:
        return {}
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            found[""] = path
        for controller in controllers.split(","):
            if controller:
                found[controller] = path
    return found


def _ancestors(mount: Path, cgroup_path: str) -> Iterator[Path]:
    """The cgroup's directory under `mount`, then each parent up to the mount itself.

    Inside a container the mount is the container's own cgroup while /proc/self/cgroup may still name the host's
    path; the walk reaches the mount either way.
    """
    relative = PurePosixPath(cgroup_path.lstrip("/"))
    while True:
        yield mount / relative
        if relative == relative.parent:
            return
        relative = relative.parent


def _v2_quota(cpu_max: Path) -> list[float]:
    """`cpu.max` holds "QUOTA PERIOD" in microseconds, QUOTA being "max" when unlimited; [] for no quota."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return _ratio(quota, period) if quota != "max" else []
    except (OSError, ValueError):
        return []


def _v1_quota(quota_file: Path, period_file: Path) -> list[float]:
    """cgroup v1 writes -1 as the quota when unlimited; [] for no quota."""
    try:
        return _ratio(quota_file.read_text(), period_file.read_text())
    except (OSError, ValueError):
        return []


def _ratio(quota: str, period: str) -> list[float]:
    quota_us, period_us = int(quota), int(period)
    return [quota_us / period_us] if quota_us > 0 and period_us > 0 else []
