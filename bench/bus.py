"""``python -m bench.bus``: pub/sub against streams for routing callbacks between replicas.

Both variants do what shared mode needs per callback: store the result (``SET NX EX``),
then notify the holding replica, which receives the notice on a dedicated connection.
Measured: delivery throughput and publish-to-receive latency on a local redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

MESSAGES = 10_000
CONCURRENCY = 100
STREAM = "bench:stream"
CHANNEL = "bench:channel"


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        "redis-server",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        client = Redis(port=port)
        async with asyncio.timeout(10):
            while True:
                with contextlib.suppress(OSError, ConnectionError):
                    if await client.ping():
                        break
                await asyncio.sleep(0.02)
        await client.aclose()
        yield port
    finally:
        process.terminate()
        await process.wait()


async def _drive(send: Callable[[int], Awaitable[None]], messages: int) -> None:
    queue = iter(range(messages))

    async def worker() -> None:
        for n in queue:
            await send(n)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def run_pubsub(port: int, messages: int) -> list[float]:
    writer, reader = Redis(port=port), Redis(port=port)
    latencies: list[float] = []
    done = asyncio.Event()
    async with reader.pubsub() as pubsub:
        await pubsub.subscribe(CHANNEL)

        async def receive() -> None:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    latencies.append(time.perf_counter() - json.loads(message["data"])["t"])
                    if len(latencies) == messages:
                        done.set()
                        return

        receiver = asyncio.create_task(receive())

        async def send(n: int) -> None:
            body = json.dumps({"n": n, "t": time.perf_counter()})
            await writer.set(f"bench:result:{n}", body, nx=True, ex=60)
            await writer.publish(CHANNEL, body)

        await _drive(send, messages)
        async with asyncio.timeout(60):
            await done.wait()
        await receiver
    await writer.aclose()
    await reader.aclose()
    return latencies


async def run_streams(port: int, messages: int) -> list[float]:
    writer, reader = Redis(port=port), Redis(port=port)
    latencies: list[float] = []

    async def receive() -> None:
        last = "0-0"
        while len(latencies) < messages:
            # redis-py types XREAD loosely: [[stream, [(entry id, {field: value})]]]
            batches: Any = await reader.xread({STREAM: last}, count=500, block=1000)
            for _, entries in batches:
                for entry_id, fields in entries:
                    last = entry_id
                    latencies.append(time.perf_counter() - json.loads(fields[b"m"])["t"])

    receiver = asyncio.create_task(receive())

    async def send(n: int) -> None:
        body = json.dumps({"n": n, "t": time.perf_counter()})
        await writer.set(f"bench:result:{n}", body, nx=True, ex=60)
        # Streams keep every entry: a replica's stream must be trimmed as it is written.
        await writer.xadd(STREAM, {"m": body}, maxlen=messages, approximate=True)

    await _drive(send, messages)
    async with asyncio.timeout(60):
        await receiver
    await writer.aclose()
    await reader.aclose()
    return latencies


def summary(name: str, latencies: list[float], seconds: float) -> dict[str, float | str]:
    ordered = sorted(latencies)
    return {
        "variant": name,
        "messages": len(ordered),
        "per_second": round(len(ordered) / seconds),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
    }


async def measure(messages: int) -> list[dict[str, float | str]]:
    rows = []
    async with redis_server() as port:
        for name, variant in (("pub/sub", run_pubsub), ("streams", run_streams)):
            began = time.perf_counter()
            latencies = await variant(port, messages)
            rows.append(summary(name, latencies, time.perf_counter() - began))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bus", description=__doc__)
    parser.add_argument("--messages", type=int, default=MESSAGES)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("bench.bus: redis-server is not installed", file=sys.stderr)
        return 2
    for row in asyncio.run(measure(args.messages)):
        print("  ".join(f"{key}={value}" for key, value in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
