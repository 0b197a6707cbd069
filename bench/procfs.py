"""CPU and memory readings from /proc (Linux), to tell the server's, the client's and everyone else's CPU apart."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) of `pid`, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of `pid`."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command name; utime and stime are the 14th and 15th fields overall.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """User + system CPU time of one thread (`tid`) of `pid`."""
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown CPU" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine_busy_seconds() -> float:
    """CPU time all cores spent on anything but idle/iowait since boot, summed over cores."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    # Guest time is already counted in user/nice; only the first eight fields are disjoint.
    return (sum(fields[:8]) - idle - iowait) / _CLOCK_TICKS


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU seconds of the machine and of the benchmark's own processes, at one instant."""

    machine: float
    ours: float

    @classmethod
    def take(cls, pids: tuple[int, ...]) -> CpuSnapshot:
        return cls(machine=machine_busy_seconds(), ours=sum(process_cpu_seconds(pid) for pid in pids))


def others_cpu_percent(before: CpuSnapshot, after: CpuSnapshot, seconds: float, extra_ours_s: float = 0.0) -> float:
    """CPU % used by processes other than ours (100 = one core) over `seconds`: the noise on a shared machine.

    `extra_ours_s` is CPU time of our processes that were not in the snapshots' pids (e.g. a child that has exited).
    """
    if seconds <= 0:
        return 0.0
    others = (after.machine - before.machine) - (after.ours - before.ours) - extra_ours_s
    return round(max(0.0, 100.0 * others / seconds), 1)


@dataclass(frozen=True)
class CpuUse:
    """CPU used over an interval by our processes and by everyone else (percent of one core)."""

    seconds: float
    ours_s: float
    others_percent: float

    @property
    def ours_percent(self) -> float:
        return round(100.0 * self.ours_s / self.seconds, 1) if self.seconds > 0 else 0.0

    def ms_per(self, count: int) -> float:
        """Our CPU milliseconds per unit of work (image): throughput's noise-robust counterpart."""
        return round(1000.0 * self.ours_s / count, 1) if count else 0.0


class CpuMeter:
    """Started on creation; `stop()` says how much CPU `pids` and the rest of the machine used since."""

    def __init__(self, pids: tuple[int, ...]) -> None:
        self._pids = pids
        self._before = CpuSnapshot.take(pids)
        self._started = time.perf_counter()

    def stop(self) -> CpuUse:
        after = CpuSnapshot.take(self._pids)
        seconds = time.perf_counter() - self._started
        return CpuUse(
            seconds=seconds,
            ours_s=after.ours - self._before.ours,
            others_percent=others_cpu_percent(self._before, after, seconds),
        )
