"""Logs: one line per event, as text or as JSON (``--log-format json`` or ``[server] log_format``), each
carrying the request id of the request it belongs to.

The request id is the caller's ``X-Request-ID`` when it is a sane token (letters, digits and ``._:-``, at
most 64 characters), otherwise a fresh one; it is sent back in the ``X-Request-ID`` response header,
written into every log line of the request, and stored with the audit rows and raw messages the request
writes (``audit_log.request_id``, ``raw_messages.request_id``). Background work (an SFTP file, a sweep)
may :func:`bind` an id of its own.

Secrets never reach a log: the access line holds the path without its query string, and every message
is passed through :func:`redact`, which blanks bearer tokens, API keys (``rcg_...``), and values of
``pin``, ``password``, ``secret``, ``key`` and ``token`` parameters.
"""

from __future__ import annotations

import json
import logging
import random
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from starlette.types import Scope

_REQUEST_ID: ContextVar[str | None] = ContextVar("roadcargo_request_id", default=None)
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
HEADER = b"x-request-id"

access_log = logging.getLogger("roadcargo.access")


def request_id() -> str | None:
    """The id of the request (or background job) being served, None outside one."""
    return _REQUEST_ID.get()


def new_request_id() -> str:
    """A random version-4 UUID in hex, as ``uuid.uuid4().hex`` gives, from the process's pseudo-random
    generator (reseeded from the system in every forked process) instead of ``os.urandom``: a request id
    correlates log lines, it guards nothing, and reading the system's random source in the event loop
    released the GIL on every request, which then waited for a worker thread to give it back."""
    return uuid.UUID(int=random.getrandbits(128), version=4).hex


@contextmanager
def bind(rid: str | None = None) -> Iterator[str]:
    """Run a piece of background work under a request id of its own (a new one by default)."""
    rid = rid or new_request_id()
    token = _REQUEST_ID.set(rid)
    try:
        yield rid
    finally:
        _REQUEST_ID.reset(token)


# -- redaction -----------------------------------------------------------------------------------------

_SECRETS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;\"']+"), r"\1 [redacted]"),
    (re.compile(r"rcg_[A-Za-z0-9_-]{8,}"), "rcg_[redacted]"),
    (
        re.compile(
            r"(?i)\b(pin|password|passwd|secret|api_key|apikey|key|token|authorization)([\"']?\s*[=:]\s*)"
            r"(\"[^\"]*\"|'[^']*'|[^\s&,;]+)"
        ),
        r"\1\2[redacted]",
    ),
    (re.compile(r"(?i)(<(?:\w+:)?Password\b[^>]*>)[^<]*"), r"\1[redacted]"),
]


def redact(text: str) -> str:
    """The text with anything that looks like a credential blanked."""
    if text.isascii() and "<" not in text and "rcg_" not in text:
        # Without those, a pattern matches only where one of its words is (ASCII: ``lower`` folds case as
        # the patterns do): a log line, the access line above all, whose time has colons, is then
        # checked with a few substring tests instead of four regular expressions (~10 µs).
        lowered = text.lower()
        if not any(word in lowered for word in _WORDS):
            return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


# The words of the first and third patterns ("key" covers api_key and apikey, "passw" password and passwd).
_WORDS = ("bearer", "basic", "pin", "passw", "secret", "key", "token", "authorization")


# -- formatters ----------------------------------------------------------------------------------------

_EXTRA = ("method", "path", "status", "duration_ms", "client", "channel", "party_id")
_LINE = json.JSONEncoder(ensure_ascii=False, default=str).encode  # built once (context.to_json)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _REQUEST_ID.get() or "-"
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC), level, logger, message, request_id, and the access fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or _REQUEST_ID.get(),
        }
        if out["request_id"] == "-":
            out["request_id"] = None
        for name in _EXTRA:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return _LINE(out)


def setup(log_format: str = "text", level: int = logging.INFO, stream: Any = None) -> None:
    """Send every log line (the gateway's, uvicorn's, the libraries') to one handler on stderr."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


# -- the request edge (gateway.app.Edge) --------------------------------------------------------------


def incoming_id(value: bytes | None) -> str:
    """The request id: the caller's X-Request-ID when it is a sane token, else a new one."""
    if value is not None:
        text = value.decode("latin-1")
        if _SANE_ID.fullmatch(text):
            return text
    return new_request_id()


def enter(rid: str) -> Token[str | None]:
    """Make ``rid`` the id of the request being served (until :func:`leave`)."""
    return _REQUEST_ID.set(rid)


def leave(token: Token[str | None]) -> None:
    _REQUEST_ID.reset(token)


def access(scope: Scope, status: int, elapsed: float) -> None:
    """The access line of a request: method, path without the query, status, milliseconds; never
    headers."""
    if access_log.isEnabledFor(logging.INFO):
        client = scope.get("client")
        method, path = scope["method"], scope["path"]
        access_log.info(
            "%s %s %d %.1f ms",
            method,
            path,
            status,
            elapsed * 1000,
            extra={
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "client": client[0] if client else None,
            },
        )
