"""Shared mode: tracked jobs (``/jobs/{ref}``) readable on any replica.

The replica that holds a tracked job writes it to Redis with each of its events, as
``jobproxy:job:<ref>``: its events and, once it has ended, its final answer. The record
lives ``job_deadline + result_ttl`` while the job runs and ``result_ttl`` once it has
ended. Each event is also published on ``jobproxy:jobs``. Another replica asked for the
job reads the record into a *mirror* (``proxy.holding.tracking``), after it started listening to
the channel, so that no event falls between the two; the mirror then follows the events
as they are published, and a stream or long poll there is answered as on the holder.
Writes go out from one task, in the order the events happened, several to a round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy.answers import Answer, encode
from proxy.bodies import decode_json
from proxy.holding.tracking import Event, TrackedJob, TrackedJobs
from proxy.shared.bus import JOBS_CHANNEL, PREFIX

logger = logging.getLogger(__name__)

WRITE_BATCH = 200


def job_key(ref: str) -> str:
    return f"{PREFIX}job:{ref}"


def _final_json(answer: Answer | None) -> dict[str, Any] | None:
    if answer is None:
        return None
    status, headers, _ = answer
    return {"status": status, "headers": [[k.decode(), v.decode()] for k, v in headers]}


def _final_answer(final: Any, event: Event) -> Answer | None:
    """The final answer of a record or message: its status and headers, the event's data."""
    if not isinstance(final, dict):
        return None
    headers = [(str(k).encode(), str(v).encode()) for k, v in final.get("headers", [])]
    return int(final["status"]), headers, event[2]


def _event(item: Any) -> Event:
    number, name, data = item
    return int(number), str(name), str(data).encode()


class SharedJobs:
    """Publishes this replica's tracked jobs, and mirrors other replicas' ones."""

    def __init__(
        self, redis: Redis, tracked: TrackedJobs, *, running_ttl: float, final_ttl: float
    ) -> None:
        self._redis = redis
        self._tracked = tracked
        self._running_ttl = max(1, round(running_ttl))
        self._final_ttl = max(1, round(final_ttl))
        self._queue: asyncio.Queue[tuple[TrackedJob, Event]] = asyncio.Queue()
        tracked.on_event = self._published

    def _published(self, job: TrackedJob, event: Event) -> None:
        self._queue.put_nowait((job, event))

    async def write(self) -> None:
        """Write the events of this replica's jobs as they come, until cancelled."""
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < WRITE_BATCH:
                batch.append(self._queue.get_nowait())
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for job, event in batch:
                        self._write(pipe, job, event)
                    await pipe.execute()
            except (RedisError, OSError, TimeoutError) as exc:
                logger.warning("could not share %d job events through Redis: %s", len(batch), exc)

    def _write(self, pipe: Any, job: TrackedJob, event: Event) -> None:
        # The record as of this event: later events of the job come later in the queue.
        events = job.events[: event[0]]
        final = _final_json(job.final) if event[0] == len(job.events) else None
        record = {
            "events": [[number, name, data.decode()] for number, name, data in events],
            "final": final,
        }
        ttl = self._final_ttl if final is not None else self._running_ttl
        pipe.set(job_key(job.ref), encode(record), ex=ttl)
        message = {"ref": job.ref, "event": [event[0], event[1], event[2].decode()]}
        pipe.publish(JOBS_CHANNEL, encode({**message, "final": final}))

    async def read(self, ref: str) -> TrackedJob | None:
        """Another replica's job, mirrored here; None when Redis knows no such ref."""
        mirror = self._tracked.mirror(ref)  # listening before reading: no event is missed
        try:
            value = await self._redis.get(job_key(ref))
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("could not read job %s from Redis: %s", ref, exc)
            value = None
        try:
            record = decode_json(value) if value is not None else None
            events = [_event(item) for item in record["events"]] if record else []
        except (ValueError, KeyError, TypeError):
            record, events = None, []
        if record is None or not events:
            self._tracked.let_go(mirror)
            return None
        for event in events:
            final = _final_answer(record.get("final"), event) if event is events[-1] else None
            mirror.heard(event, final)
        return mirror

    def heard(self, data: str) -> None:
        """A message on the jobs channel: an event of a job mirrored here, maybe."""
        with contextlib.suppress(ValueError, KeyError, TypeError):
            message = decode_json(data)
            event = _event(message["event"])
            self._tracked.heard(str(message["ref"]), event, _final_answer(message["final"], event))
