"""What the two servers share by copy, since neither may import the other."""

from __future__ import annotations

from jobserver import bodies as jobserver_bodies
from proxy import bodies as proxy_bodies


def test_proxy_and_job_server_take_the_same_callback_urls() -> None:
    """The proxy passes on exactly the callbacks the job server takes: one rule, twice."""
    assert proxy_bodies.CALLBACK_URL == jobserver_bodies.CALLBACK_URL
    assert proxy_bodies.MAX_CALLBACK_LENGTH == jobserver_bodies.CALLBACK_MAX_LENGTH
