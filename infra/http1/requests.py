"""A request's bytes, built once and sent as they are.

A caller on the hot path builds the whole request (:func:`request`) or the part every
attempt shares (:func:`request_head`) once, and hands the bytes to
:meth:`infra.http1.ConnectionPool.exchange` or :meth:`infra.http1.Http1Connection.send`:
no header objects, no URL merging, no per-request encoding. What the bytes say
(which headers, which body) is the caller's protocol, never this module's.
"""

from __future__ import annotations

from collections.abc import Iterable

Headers = Iterable[tuple[bytes, bytes]]

# Bytes that would end a request line or a header line early, or that no server accepts.
_LINE_BREAKERS = frozenset(b"\r\n\0")
_TARGET_BREAKERS = _LINE_BREAKERS | frozenset(b" ")


def request_head(method: str, target: str | bytes, host: bytes, headers: Headers = ()) -> bytes:
    """The request line, ``Host: host`` and ``headers``, each line ended with CRLF.

    The empty line that ends the head is not included: :func:`request` adds it after
    the body's length, and a caller may add lines of its own first (a signature made
    per attempt). :class:`ValueError` for a method, target or header that would break
    the request's framing.
    """
    return request_line(method, target) + header_lines(((b"Host", host), *headers))


def request_line(method: str, target: str | bytes) -> bytes:
    """``METHOD target HTTP/1.1`` and CRLF; :class:`ValueError` for a method that is not
    a word or a target that is not a path (with its query)."""
    if not method.isascii() or not method.isalpha():
        raise ValueError(f"not an HTTP method: {method!r}")
    raw_target = target.encode("ascii") if isinstance(target, str) else target
    if not raw_target.startswith(b"/") or _TARGET_BREAKERS.intersection(raw_target):
        raise ValueError(f"not a request target: {target!r}")
    return b"%s %s HTTP/1.1\r\n" % (method.encode("ascii"), raw_target)


def request(
    method: str, target: str | bytes, host: bytes, body: bytes = b"", headers: Headers = ()
) -> bytes:
    """The whole request: :func:`request_head`, ``Content-Length``, the empty line, ``body``."""
    head = request_head(method, target, host, headers)
    return b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)


def header_lines(headers: Headers) -> bytes:
    """``Name: value`` lines, each ended with CRLF; :class:`ValueError` for a header
    whose name or value would break its line (or a name with a colon)."""
    lines = []
    for name, value in headers:
        if not name or b":" in name or _TARGET_BREAKERS.intersection(name):
            raise ValueError(f"not a header name: {name!r}")
        if _LINE_BREAKERS.intersection(value):
            raise ValueError(f"not a header value of {name!r}: {value!r}")
        lines.append(b"%s: %s\r\n" % (name, value))
    return b"".join(lines)
