"""What the two servers share by copy, since neither may import the other."""

from __future__ import annotations

import inspect

from jobserver.__main__ import JobServerProcess
from proxy.server import ProxyServer


def test_both_servers_handle_stop_signals_the_same_way() -> None:
    """The proxy's and the job server's capture_signals are the same code."""
    proxy = inspect.getsource(ProxyServer.capture_signals)
    jobserver = inspect.getsource(JobServerProcess.capture_signals)
    assert proxy == jobserver
