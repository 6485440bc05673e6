"""Officers' HTTP side of the SFTP channel: register a party's SSH key, list and revoke them, see the
channel's status (``/api/v1``)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from adapters import sftp_keys, sftp_service
from gateway import parties
from gateway.context import Actor, Gateway
from gateway.errors import GatewayError

router = APIRouter(prefix="/api/v1", tags=["sftp"])


async def _actor(request: Request) -> Actor:
    header = request.headers.get("authorization", "")
    return await run_in_threadpool(parties.authenticate_bearer, request.app.state.gateway, header, "http")


def _officer(actor: Actor) -> None:
    if not actor.is_officer:
        raise GatewayError.one("FORBIDDEN", "only customs officers may do this")


async def _public_key(request: Request) -> str:
    """The key line, sent as ``{"public_key": "ssh-ed25519 AAAA..."}`` or as the .pub file in text/plain."""
    body = await request.body()
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise GatewayError.one("MALFORMED", "the body is not UTF-8 text") from None
    if media == "text/plain":
        return text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GatewayError.one("MALFORMED", f"the body is not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("public_key"), str):
        raise GatewayError.one(
            "MISSING_FIELD", 'send {"public_key": "ssh-ed25519 AAAA... comment"}', "public_key"
        )
    return str(data["public_key"])


@router.post(
    "/parties/{party_id}/ssh-keys",
    status_code=201,
    summary="Register an SSH public key with which a party logs in to its SFTP mailbox (officers)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["public_key"],
                        "properties": {
                            "public_key": {"type": "string", "example": "ssh-ed25519 AAAAC3... ops@acme"}
                        },
                    }
                },
                "text/plain": {"schema": {"type": "string"}},
            },
        }
    },
    responses={200: {"description": "already registered to this party"}, 201: {"description": "registered"}},
)
async def add_ssh_key(party_id: str, request: Request) -> JSONResponse:
    actor = await _actor(request)
    _officer(actor)
    gw: Gateway = request.app.state.gateway
    text = await _public_key(request)
    key = await run_in_threadpool(sftp_keys.register_ssh_key, gw, actor, party_id, text)
    created = key.pop("created")
    return JSONResponse(key, status_code=201 if created else 200)


@router.get("/parties/{party_id}/ssh-keys", summary="A party's SSH keys (officers, or the party itself)")
async def list_ssh_keys(party_id: str, request: Request) -> list[dict[str, Any]]:
    actor = await _actor(request)
    keys: list[dict[str, Any]] = await run_in_threadpool(
        sftp_keys.list_ssh_keys, request.app.state.gateway, actor, party_id
    )
    return keys


@router.delete(
    "/parties/{party_id}/ssh-keys/{key:path}",
    summary="Revoke a party's SSH key, by fingerprint (SHA256:..., URL-encoded) or key id (officers, or "
    "the party itself); sessions opened with it are closed",
    responses={200: {"description": "revoked, or already revoked (`revoked` false)"}},
)
async def revoke_ssh_key(party_id: str, key: str, request: Request) -> dict[str, Any]:
    actor = await _actor(request)
    revoked: dict[str, Any] = await run_in_threadpool(
        sftp_keys.revoke_ssh_key, request.app.state.gateway, actor, party_id, key
    )
    return revoked


@router.get(
    "/sftp/status", summary="Each SFTP mailbox and pull partner: files waiting, last success, last error"
)
async def sftp_status(request: Request) -> dict[str, Any]:
    actor = await _actor(request)
    _officer(actor)
    report: dict[str, Any] = await run_in_threadpool(sftp_service.status, request.app.state.gateway)
    return report
