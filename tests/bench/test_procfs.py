"""What a process spent, read from /proc (``bench/procfs.py``)."""

from __future__ import annotations

import pytest

from bench.procfs import (
    ProcessUsage,
    parse_cpu_ticks,
    parse_listen_drops,
    parse_memory,
    parse_status_kib,
)

STATUS_TEXT = """\
Name:\tjobproxy
VmPeak:\t  300000 kB
VmHWM:\t   94436 kB
VmRSS:\t   62560 kB
Threads:\t1
"""
# The command name of a process may hold spaces and parentheses.
STAT_TEXT = "4242 (job (proxy) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 30 0 0 20 0 1 0"
NETSTAT_TEXT = """\
TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits
TcpExt: 0 7 9 123
IpExt: InNoRoutes InOctets
IpExt: 0 456
"""


def test_status_fields_are_read_in_kib() -> None:
    """VmRSS and VmHWM come out of /proc/<pid>/status as KiB."""
    assert parse_status_kib(STATUS_TEXT)["VmPeak"] == 300_000
    memory = parse_memory(STATUS_TEXT)
    assert (memory.rss_kib, memory.hwm_kib) == (62_560, 94_436)
    assert parse_memory("Name:\tzombie\n").rss_kib == 0


def test_cpu_ticks_are_counted_after_the_command_name() -> None:
    """utime + stime are found even when the command name holds spaces and parentheses."""
    assert parse_cpu_ticks(STAT_TEXT) == 180


def test_listen_drops_come_from_the_tcpext_table() -> None:
    """ListenDrops is read by name from /proc/net/netstat."""
    assert parse_listen_drops(NETSTAT_TEXT) == 9
    assert parse_listen_drops("") == 0


def test_process_usage_per_request_and_per_thousand() -> None:
    """Growth above the baseline is shared out per request; CPU is scaled to 1,000 jobs."""
    usage = ProcessUsage(cpu_s=3.0, rss_baseline_kib=60_000, rss_peak_kib=70_000, jobs=1_000)
    assert usage.cpu_s_per_1000_jobs == pytest.approx(3.0)
    assert usage.rss_growth_per_request_bytes == pytest.approx(10_240)
    shrunk = ProcessUsage(cpu_s=0, rss_baseline_kib=60_000, rss_peak_kib=50_000, jobs=10)
    assert shrunk.rss_growth_per_request_bytes == 0
