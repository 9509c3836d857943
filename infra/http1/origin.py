"""Where a connection goes: an :class:`Origin` (scheme, host, port), the pool's key."""

from __future__ import annotations

from typing import NamedTuple

import httpx

DEFAULT_PORTS = {"http": 80, "https": 443}


class Origin(NamedTuple):
    """Where a connection goes; connections are pooled and reused per origin."""

    scheme: str  # "http" or "https"
    host: str  # ASCII (IDNA) form, an IPv6 address without brackets
    port: int

    @classmethod
    def of(cls, url: httpx.URL | str) -> Origin:
        """The origin of an absolute ``url``; :class:`ValueError` unless it is http(s)."""
        if not isinstance(url, httpx.URL):
            url = httpx.URL(url)
        if url.scheme not in DEFAULT_PORTS:
            raise ValueError(f"not an http or https URL: {url}")
        if not url.raw_host:
            raise ValueError(f"a URL without a host: {url}")
        host = url.raw_host.decode("ascii")
        return cls(url.scheme, host, url.port or DEFAULT_PORTS[url.scheme])

    @property
    def authority(self) -> bytes:
        """``host[:port]`` as a Host header names it (the default port left out)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == DEFAULT_PORTS[self.scheme]:
            return host.encode("ascii")
        return f"{host}:{self.port}".encode("ascii")

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority.decode('ascii')}"
