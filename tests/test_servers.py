"""What the two servers share by copy, since neither may import the other."""

from __future__ import annotations

import inspect

from jobserver import bodies as jobserver_bodies
from jobserver.__main__ import JobServerProcess
from proxy import bodies as proxy_bodies
from proxy.server import ProxyServer


def test_both_servers_handle_stop_signals_the_same_way() -> None:
    """The proxy's and the job server's capture_signals are the same code."""
    proxy = inspect.getsource(ProxyServer.capture_signals)
    jobserver = inspect.getsource(JobServerProcess.capture_signals)
    assert proxy == jobserver


def test_proxy_and_job_server_take_the_same_callback_urls() -> None:
    """The proxy passes on exactly the callbacks the job server takes: one rule, twice."""
    assert proxy_bodies.CALLBACK_URL == jobserver_bodies.CALLBACK_URL
    assert proxy_bodies.MAX_CALLBACK_LENGTH == jobserver_bodies.CALLBACK_MAX_LENGTH
