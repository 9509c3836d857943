"""The machine the bench runs on: its description, and the open-file limit it needs."""

from __future__ import annotations

import os
import platform
import resource
import sys

# Each held request is a socket in the generator and one or two in the proxy (the
# client's connection, plus the job server's callback connection while it is sent).
SOCKETS_PER_HELD_REQUEST = 3
SPARE_FILES = 1_024


def files_needed(concurrent_requests: int) -> int:
    """The open-file limit a process needs to hold ``concurrent_requests`` requests."""
    return concurrent_requests * SOCKETS_PER_HELD_REQUEST + SPARE_FILES


def raise_open_file_limit(wanted: int) -> int:
    """Raise ``RLIMIT_NOFILE`` towards ``wanted``; returns the soft limit now in force.

    Children inherit the limit, so raising it in the bench process before it starts the
    servers and the generator covers them all. Raising the hard limit needs privilege:
    without it the soft limit goes up to the hard one and no further.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass  # unprivileged: settle for the hard limit below
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def open_file_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine_info() -> dict[str, object]:
    """What a reader needs to compare two results files."""
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "open_files_limit": open_file_limit(),
        # Other work on the machine skews every figure: a reader should see it was idle.
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }
