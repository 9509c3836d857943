"""The client on uvloop, the loop of production: the same scenarios, the same behaviour.

uvloop's transports differ from asyncio's where the client looks closest: a transport's
socket is a stand-in (its descriptor is what the stale test reads), and a write that
fails closes the transport in its own way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import uvloop

from tests.infra.http1 import test_connection, test_pool

SCENARIOS: dict[str, Callable[[], Awaitable[None]]] = {
    "round-trip": test_connection.test_a_request_and_its_answer_travel_whole,
    "chunked": test_connection.test_chunked_answer_is_assembled,
    "close-mid-answer": test_connection.test_close_mid_answer_is_answer_incomplete_with_the_status,
    "reset-mid-answer": test_connection.test_reset_mid_answer_is_connection_broken,
    "reset-by-client": test_connection.test_reset_hangs_up_with_a_tcp_reset,
    **{
        f"idle-{ending}": partial(
            test_connection.test_an_idle_connection_with_anything_to_read_is_not_reusable,
            ending,
        )
        for ending in ("close", "reset", "stray-bytes")
    },
    "reuse": test_pool.test_sequential_requests_reuse_one_connection,
    **{
        f"pool-{ending}": partial(
            test_pool.test_an_end_not_yet_handled_is_found_before_writing, ending
        )
        for ending in ("close", "reset")
    },
    "read-timeout": test_pool.test_slow_answer_is_read_timeout_and_connection_dropped,
    "bound": test_pool.test_pool_limit_holds_concurrent_exchanges_to_its_size,
    "cancelled": test_pool.test_cancelled_exchange_closes_its_connection_and_frees_the_place,
    "aclose": test_pool.test_aclose_closes_connections_and_fails_callers,
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_on_uvloop(name: str) -> None:
    """The scenario behaves the same on uvloop."""

    async def run() -> None:
        await SCENARIOS[name]()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
