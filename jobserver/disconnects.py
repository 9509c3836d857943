"""Clients that leave: a ``/start`` abandoned while it waits, for ``honour_disconnects``.

Once a request's body has been read, uvicorn answers the app's next ``receive()`` with
``{"type": "http.disconnect"}`` when the client closes its connection (and only when the
request's answer is complete otherwise). :func:`abandon_on_disconnect` awaits that in a
task of its own while its block runs; when it comes, it cancels the block the way
``asyncio.timeout`` does (it cancels the task that runs the block, and uncancels it when
the block ends), so whatever the block waits for (the way to the account's gate, the
gate, ``start_latency``) gives up its place at once, and the block ends with
:class:`~jobserver.errors.ClientGone`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.types import Receive

from jobserver.errors import ClientGone

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def abandon_on_disconnect(receive: Receive) -> AsyncIterator[None]:
    """Run the block; if the client disconnects meanwhile, stop it and raise ClientGone.

    ``receive`` is the request's ASGI receive, called only after the body has been read.
    """
    task = asyncio.current_task()
    assert task is not None, "called from a task"
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        # The block's task is suspended inside the block whenever this runs: the watch
        # is cancelled before the block's task first leaves it, and a cancelled watch
        # never gets here.
        task.cancel()

    watcher = asyncio.create_task(watch(), name="disconnect-watch")
    try:
        yield
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()
        await asyncio.wait((watcher,))
        if not watcher.cancelled() and (error := watcher.exception()) is not None:
            logger.warning("the watch for a disconnect failed: %r", error)
