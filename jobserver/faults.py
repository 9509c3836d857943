"""Seeded randomness and fault injection.

Every random choice of the job server comes from :class:`RandomStreams`: one
``random.Random`` per purpose, each derived from the ``seed`` setting. Separate streams
keep runs comparable: turning on one fault knob does not shift the draws of another, and
job ids stay the same whatever the faults. Without a seed, job ids and webhook message
ids come from the OS's secure source (:mod:`secrets`) and the streams are seeded by the OS.
"""

from __future__ import annotations

import random
import secrets

from jobserver.config import Settings


class RandomStreams:
    """Independent random streams, one per purpose, all derived from one seed."""

    def __init__(self, seed: int | None) -> None:
        self._seed = seed
        self._streams: dict[str, random.Random] = {}
        self._system = random.SystemRandom()

    @property
    def seeded(self) -> bool:
        return self._seed is not None

    def stream(self, purpose: str) -> random.Random:
        """The stream for ``purpose`` (created on first use)."""
        rng = self._streams.get(purpose)
        if rng is None:
            # A str seed is hashed with SHA-512, so each purpose gets an unrelated stream
            # that is the same in every run with the same seed.
            rng = random.Random(f"{self._seed}:{purpose}") if self.seeded else random.Random()
            self._streams[purpose] = rng
        return rng

    def id_stream(self, purpose: str) -> random.Random:
        """The stream for ``purpose`` when seeded, else the OS's secure source (as secrets)."""
        return self.stream(purpose) if self.seeded else self._system

    def token_hex(self, purpose: str, nbytes: int) -> str:
        """``2 * nbytes`` lowercase hex digits: seeded when a seed is set, else from secrets."""
        if not self.seeded:
            return secrets.token_hex(nbytes)
        return f"{self.stream(purpose).getrandbits(nbytes * 8):0{nbytes * 2}x}"


def _roll(rng: random.Random, rate: float) -> bool:
    """True with probability ``rate``; draws nothing when the knob is off."""
    return rate > 0 and (rate >= 1 or rng.random() < rate)


class FaultInjector:
    """Decides, from the seeded streams, which jobs, callbacks and starts go wrong."""

    def __init__(self, settings: Settings, streams: RandomStreams) -> None:
        self._settings = settings
        self._streams = streams
        self._starts_refused_by_count = 0
        self.injected: dict[str, int] = {
            "job_failure": 0,
            "callback_drop": 0,
            "callback_duplicate": 0,
            "start_error": 0,
            "status_error": 0,
        }

    @property
    def start_latency(self) -> float:
        return self._settings.start_latency

    @property
    def callback_delay(self) -> float:
        return self._settings.callback_delay

    def job_error(self) -> str | None:
        """The error message of a job that must fail, or None for a job that completes."""
        if not _roll(self._streams.stream("failure"), self._settings.failure_rate):
            return None
        self.injected["job_failure"] += 1
        return "the job failed (injected fault: failure_rate)"

    def callback_copies(self) -> int:
        """How many times a callback is sent: 0 (dropped), 1, or 2 (duplicated)."""
        settings = self._settings
        if _roll(self._streams.stream("callback-drop"), settings.callback_drop_rate):
            self.injected["callback_drop"] += 1
            return 0
        if _roll(self._streams.stream("callback-duplicate"), settings.callback_duplicate_rate):
            self.injected["callback_duplicate"] += 1
            return 2
        return 1

    def start_refusal(self) -> tuple[int, str] | None:
        """``(status, reason)`` when this ``/start`` must be refused without creating a job."""
        settings = self._settings
        if self._starts_refused_by_count < settings.start_error_count:
            self._starts_refused_by_count += 1
            self.injected["start_error"] += 1
            return 503, (
                f"injected fault: start {self._starts_refused_by_count} of the first "
                f"{settings.start_error_count} is refused (start_error_count)"
            )
        if _roll(self._streams.stream("start-error"), settings.start_error_rate):
            self.injected["start_error"] += 1
            return settings.start_error_status, "injected fault: start_error_rate"
        return None

    def status_error(self) -> bool:
        """True when this ``GET /status`` must be answered 500 instead of the job."""
        if not _roll(self._streams.stream("status-error"), self._settings.status_error_rate):
            return False
        self.injected["status_error"] += 1
        return True
