"""Errors that become JSON answers, in the same shape from both servers.

Every error answer's body is ``{"error": "<short machine word>", "detail": "<human
sentence>"}`` (:func:`error_body`); one that asks the client to come back later carries
``Retry-After`` in whole seconds, at least 1 (:func:`retry_after_header`).

Each server draws its own hierarchy under :class:`AnsweredError` (``proxy.errors``,
``jobserver.errors``) and answers it in its own exception table: which errors there are,
their statuses and their words are the server's own.
"""

from __future__ import annotations

from typing import Any


def error_body(error: str, detail: Any) -> dict[str, Any]:
    """The JSON body of an error answer."""
    return {"error": error, "detail": detail}


def retry_after_header(seconds: float) -> dict[str, str]:
    """``Retry-After`` in whole seconds, at least 1: a 0 would invite an immediate retry."""
    return {"Retry-After": str(max(1, round(seconds)))}


class AnsweredError(Exception):
    """An error answered to the client; subclasses set ``status_code`` and ``error``.

    ``detail`` is a human sentence, by default the class's docstring. With
    ``retry_after`` (seconds) the answer tells the client when to come back.
    """

    status_code: int = 500
    error: str = "internal_error"

    def __init__(self, detail: Any = None, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail if detail is not None else (self.__doc__ or "").strip()
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        """The answer's headers beside its content type."""
        return {} if self.retry_after is None else retry_after_header(self.retry_after)

    def body(self) -> dict[str, Any]:
        return error_body(self.error, self.detail)
