"""What a server process costs, read from ``/proc``: memory, CPU time, dropped connections.

Memory: ``VmRSS`` (resident now) and ``VmHWM`` (the highest resident size so far) from
``/proc/<pid>/status``. CPU: ``utime + stime`` from ``/proc/<pid>/stat``, in clock
ticks. Listen-queue overflows from ``/proc/net/netstat``: a SYN dropped because an
accept queue was full costs the client a one-second retransmission, which would show up
as latency that no server code spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
SAMPLE_INTERVAL = 0.05
# Fields of /proc/<pid>/stat after the command name: state is the 3rd field of the
# whole line, utime the 14th and stime the 15th.
UTIME_AFTER_COMM = 14 - 3
STIME_AFTER_COMM = 15 - 3


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """Resident set size now and at its highest so far, KiB."""

    rss_kib: int
    hwm_kib: int


def parse_status_kib(status_text: str) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``, ...), in KiB."""
    fields: dict[str, int] = {}
    for line in status_text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            fields[name.strip()] = int(parts[0])
    return fields


def parse_memory(status_text: str) -> MemoryReading:
    fields = parse_status_kib(status_text)
    return MemoryReading(rss_kib=fields.get("VmRSS", 0), hwm_kib=fields.get("VmHWM", 0))


def parse_cpu_ticks(stat_text: str) -> int:
    """``utime + stime`` of a ``/proc/<pid>/stat`` line, in clock ticks.

    The command name sits in parentheses and may itself hold spaces or parentheses, so
    the fields are counted from the last ``)``.
    """
    after_comm = stat_text[stat_text.rindex(")") + 2 :].split()
    return int(after_comm[UTIME_AFTER_COMM]) + int(after_comm[STIME_AFTER_COMM])


def parse_listen_drops(netstat_text: str) -> int:
    """``TcpExt: ListenDrops`` (which counts overflows too) from ``/proc/net/netstat``."""
    lines = netstat_text.splitlines()
    for names, values in itertools.pairwise(lines):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenDrops", "0"))
    return 0


def read_memory(pid: int) -> MemoryReading:
    return parse_memory((PROC / str(pid) / "status").read_text())


def read_cpu_seconds(pid: int) -> float:
    ticks = parse_cpu_ticks((PROC / str(pid) / "stat").read_text())
    return ticks / os.sysconf("SC_CLK_TCK")


def reset_peak_memory(pid: int) -> None:
    """Make ``VmHWM`` start again from the current RSS, where the kernel allows it."""
    with contextlib.suppress(OSError):
        (PROC / str(pid) / "clear_refs").write_text("5")


def read_listen_drops() -> int:
    try:
        return parse_listen_drops((PROC / "net" / "netstat").read_text())
    except OSError:
        return 0


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    """What one process spent during one run of ``jobs`` requests."""

    cpu_s: float
    rss_baseline_kib: int
    rss_peak_kib: int
    jobs: int

    @property
    def cpu_s_per_1000_jobs(self) -> float:
        return self.cpu_s / self.jobs * 1_000

    @property
    def rss_growth_per_request_bytes(self) -> float:
        """Peak above baseline, shared out over the requests of the run."""
        return max(0, self.rss_peak_kib - self.rss_baseline_kib) * 1_024 / self.jobs

    def to_json(self) -> dict[str, object]:
        return {
            "cpu_s": round(self.cpu_s, 3),
            "cpu_s_per_1000_jobs": round(self.cpu_s_per_1000_jobs, 4),
            "rss_baseline_kib": self.rss_baseline_kib,
            "rss_peak_kib": self.rss_peak_kib,
            "rss_growth_per_request_bytes": round(self.rss_growth_per_request_bytes, 1),
        }


class UsageMeter:
    """Watches one process during a run: CPU time spent, resident memory at its peak.

    The peak is the higher of ``VmRSS`` sampled every 50 ms and ``VmHWM`` read at the
    end (reset to the current size when the run starts, so that an earlier peak does not
    count); ``VmHWM`` catches a peak between samples, and the samples keep working where
    ``VmHWM`` cannot be reset.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._peak_kib = 0

    async def _sample(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self._peak_kib = max(self._peak_kib, read_memory(self.pid).rss_kib)
            await asyncio.sleep(SAMPLE_INTERVAL)

    @contextlib.asynccontextmanager
    async def measure(self, jobs: int) -> AsyncIterator[list[ProcessUsage]]:
        """Measure the block; the yielded list holds the usage once the block has ended."""
        reset_peak_memory(self.pid)
        baseline = read_memory(self.pid)
        cpu_before = read_cpu_seconds(self.pid)
        self._peak_kib = baseline.rss_kib
        usage: list[ProcessUsage] = []
        sampler = asyncio.create_task(self._sample())
        try:
            yield usage
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        final = read_memory(self.pid)
        usage.append(
            ProcessUsage(
                cpu_s=read_cpu_seconds(self.pid) - cpu_before,
                rss_baseline_kib=baseline.rss_kib,
                rss_peak_kib=max(self._peak_kib, final.rss_kib, final.hwm_kib),
                jobs=max(1, jobs),
            )
        )
