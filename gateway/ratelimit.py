"""Rate limits (``[limits]``): token buckets held in the memory of each gateway process.

Every party gets a bucket of ``burst`` tokens that refills at ``requests_per_second``; a request that
finds the bucket empty is refused with ``429 RATE_LIMITED`` and ``Retry-After`` (the whole seconds until a
token is back). Parties are limited after authentication (``parties.authenticate`` and the PIN and
portal-session checks call :func:`admit`), so every channel is covered and an unauthenticated caller
cannot spend another party's allowance. The login and registration forms, which anyone may post to, are
limited per client address by the request edge (:func:`login_buckets`) before any work is done.

A check is a dictionary look-up and a little arithmetic under a lock: no database, no I/O. With N gateway
processes behind a load balancer each process holds its own buckets, so a party spread evenly over them
may reach N times the configured rate; set the rate per process accordingly (docs/operations.md).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from starlette.types import Scope, Send

from gateway.config import LimitsConfig
from gateway.errors import RateLimited

MAX_KEYS = 100_000  # buckets kept before full ones are dropped (a full bucket is the same as none)


class Buckets:
    """Token buckets by key; ``take`` answers 0.0 when a request may go, else the seconds to wait."""

    def __init__(self, rate: float, burst: int, max_keys: int = MAX_KEYS) -> None:
        self.rate = float(rate)
        self.burst = float(max(burst, 1))
        self.max_keys = max_keys
        self._state: dict[str, tuple[float, float]] = {}  # key -> (tokens, monotonic time)
        self._lock = threading.Lock()

    @property
    def on(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> float:
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, at = self._state.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._state[key] = (tokens - 1.0, now)
                if len(self._state) > self.max_keys:
                    self._prune(now)
                return 0.0
            self._state[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full = [k for k, (tokens, at) in self._state.items() if tokens + (now - at) * self.rate >= self.burst]
        for key in full:
            del self._state[key]
        if len(self._state) > self.max_keys:  # a flood of distinct keys: start afresh rather than grow
            self._state.clear()


def _party_buckets(gw: Any) -> Buckets:
    """The per-party buckets of a gateway (one per ``Gateway`` object, so one per process)."""
    state = vars(gw)
    buckets: Buckets | None = state.get("_party_buckets")
    if buckets is None:
        limits: LimitsConfig = gw.config.limits
        with _CREATE:
            buckets = state.setdefault("_party_buckets", Buckets(limits.requests_per_second, limits.burst))
    return buckets


_CREATE = threading.Lock()


def admit(gw: Any, party_id: str | None) -> None:
    """Count one request of an authenticated party; raise RATE_LIMITED when it is over its limit."""
    if party_id is None:
        return
    buckets = _party_buckets(gw)
    wait = buckets.take(party_id)
    if wait:
        raise RateLimited(
            f"party {party_id} is over its limit of {buckets.rate:g} requests a second "
            f"(bursts of {buckets.burst:g}); retry after the Retry-After seconds",
            wait,
        )


LIMITED_PATHS = frozenset({"/login", "/apply", "/api/v1/registrations"})


def login_buckets(limits: LimitsConfig) -> Buckets:
    """``[limits] login_per_minute`` per client address on the forms anyone may post: login and
    registration (``LIMITED_PATHS``), checked by the request edge (``gateway.app.Edge``) before the body
    is read. Behind a reverse proxy the client address is the proxy's unless uvicorn trusts its
    ``X-Forwarded-For`` (``--forwarded-allow-ips``)."""
    return Buckets(limits.login_per_minute / 60.0, limits.login_burst)


async def refuse_login(scope: Scope, send: Send, wait: float) -> None:
    """Answer 429 to a login or registration over its limit: JSON on the API, a short page on the
    portal."""
    error = RateLimited(
        "too many login or registration attempts from your address; retry after the Retry-After seconds",
        wait,
    )
    if scope["path"].startswith("/api/"):
        body = json.dumps(error.as_body()).encode()
        content_type = b"application/json"
    else:
        body = _PAGE.format(seconds=error.retry_after).encode()
        content_type = b"text/html; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(error.retry_after).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Too many attempts</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>Too many attempts</h1>
<p>There were too many login or registration attempts from your address. Please try again in
{seconds} seconds.</p>
<p lang="zh-Hant">此地址的登入或註冊嘗試過多，請於 {seconds} 秒後再試。</p>
<p><a href="/">Home</a></p></main></body></html>
"""
