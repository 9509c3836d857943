"""Callback tokens: unguessable, and telling which replica holds their waiter.

A token is ``<replica>.<128 random bits>.<128-bit MAC>``: the replica that holds the
waiter, and a MAC with that replica's key, so that any replica can refuse a forged token
at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

TOKEN_BYTES = 16  # 128 bits of randomness per callback token
MAC_BYTES = 16  # a token's MAC, so that any replica can tell a forged one at once
TOKEN_KEY_BYTES = 32
REPLICA_ID_BYTES = 4


def new_replica_id() -> str:
    return secrets.token_hex(REPLICA_ID_BYTES)


def replica_of(token: str) -> str:
    """The replica named by a callback token (``<replica>.<random>.<mac>``), or ``""``."""
    replica, dot, _ = token.partition(".")
    return replica if dot else ""


def token_mac(key: bytes, stem: str) -> str:
    """The MAC part of a token: 128 bits of HMAC-SHA256(key, stem), base64url."""
    digest = hmac.new(key, stem.encode(), hashlib.sha256).digest()[:MAC_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_is_genuine(token: str, key: bytes) -> bool:
    """Whether ``token`` was issued with ``key`` (one HMAC, compared in constant time)."""
    stem, dot, mac = token.rpartition(".")
    return bool(dot) and hmac.compare_digest(mac.encode(), token_mac(key, stem).encode())


def new_token_key() -> bytes:
    """A replica's key for signing its tokens."""
    return secrets.token_bytes(TOKEN_KEY_BYTES)


def new_token(replica_id: str, key: bytes) -> str:
    """A fresh token of ``replica_id``, signed with ``key``."""
    stem = f"{replica_id}.{secrets.token_urlsafe(TOKEN_BYTES)}"
    return f"{stem}.{token_mac(key, stem)}"
