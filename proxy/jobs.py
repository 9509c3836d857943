"""A job as the job server writes it: JSON whose id, state and final states the dialect
(``proxy.dialects.dialect``) says where to find; and the one reading of ``Retry-After``."""

from __future__ import annotations

import math
from typing import Any

#: A job as JSON, as the job server sent it: the work sample's ``{"id", "state",
#: "startedAt", "proof"}`` (or ``"error"``), a prediction, ...
Job = dict[str, Any]


def parse_retry_after(value: str | bytes | None) -> float:
    """Seconds a ``Retry-After`` value asks for; 0.0 when absent or unusable.

    Only the delta-seconds form: an HTTP date would need a wall clock we do not inject.
    """
    try:
        seconds = float(value) if value is not None else 0.0
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0
