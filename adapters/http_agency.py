"""The partner agencies' side of the HTTP API (design sections 9 and 10): ``GET /api/v1/events``, the
event feed filtered by the agency's scope (``gateway/event_feed.py``); officers read it in full."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from adapters.http_api import _ERROR_RESPONSES, _run
from gateway import event_feed

router = APIRouter(prefix="/api/v1")

_FEED = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["events", "next_cursor"],
                "properties": {
                    "events": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["cursor", "type", "at", "data"],
                            "properties": {
                                "cursor": {"type": "integer"},
                                "type": {"type": "string"},
                                "ccrn": {"type": "string"},
                                "vehicle": {"type": "string"},
                                "status": {"type": "string"},
                                "status_version": {"type": "integer"},
                                "at": {"type": "string", "format": "date-time"},
                                "data": {"type": "object"},
                            },
                        },
                    },
                    "next_cursor": {"type": "integer", "description": "pass as after to resume"},
                },
            }
        }
    }
}


@router.get(
    "/events",
    summary="Events after a cursor, as the agency's scope may see them (agencies and officers)",
    responses={200: {"description": "the events, oldest first", **_FEED}, **_ERROR_RESPONSES},
)
async def events(
    request: Request,
    after: int = Query(0, description="the last cursor you have seen (0: from the start)"),
    limit: int = Query(
        event_feed.DEFAULT_LIMIT, description=f"at most this many events, 1 to {event_feed.MAX_LIMIT}"
    ),
) -> JSONResponse:
    feed = await _run(request, lambda c: event_feed.read(c.gw, c.actor, after, limit))
    return JSONResponse(feed)
