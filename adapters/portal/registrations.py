"""Applications to register (design section 10): anyone may apply, over the portal or
``POST /api/v1/registrations``, as a shipper, forwarder, service provider or driver; an officer approves
(which registers the party through ``parties.add_party`` and hands back its key, and a driver's PIN,
once) or rejects with a reason. Officers, kiosks and agencies are never applied for: officers register
them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update

from gateway import parties, tables
from gateway.context import Actor, Gateway, audit, iso_hk
from gateway.errors import GatewayError, Problem

APPLICABLE_ROLES = ("shipper", "forwarder", "service_provider", "driver")
_A = tables.registration_applications


def _text(data: dict[str, Any], name: str, limit: int, problems: list[Problem], required: bool) -> str | None:
    raw = data.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if required:
            problems.append(Problem("MISSING_FIELD", name, "is required"))
        return None
    if not isinstance(raw, str):
        problems.append(Problem("INVALID_VALUE", name, "must be text"))
        return None
    text = " ".join(raw.split())
    if len(text) > limit:
        problems.append(Problem("INVALID_VALUE", name, f"is at most {limit} characters; got {len(text)}"))
        return None
    if not text.isprintable():
        problems.append(Problem("INVALID_VALUE", name, "holds characters that cannot be printed"))
        return None
    return text


def apply(gw: Gateway, data: Any, channel: str) -> dict[str, Any]:
    """Record an application; returns it with its number, PENDING."""
    if not isinstance(data, dict):
        raise GatewayError.one("INVALID_VALUE", "send an object with role, name and contact")
    problems: list[Problem] = []
    unknown = sorted(set(data) - {"role", "name", "contact", "business_id"})
    problems += [Problem("INVALID_VALUE", key, f"unknown field {key!r}") for key in unknown]
    role = data.get("role")
    if role is None or role == "":
        problems.append(Problem("MISSING_FIELD", "role", "is required"))
    elif role not in APPLICABLE_ROLES:
        problems.append(
            Problem(
                "INVALID_CODE",
                "role",
                f"{role!r} cannot be applied for; one of {', '.join(APPLICABLE_ROLES)}",
            )
        )
    name = _text(data, "name", 140, problems, required=True)
    contact = _text(data, "contact", 140, problems, required=True)
    business_id = _text(data, "business_id", 35, problems, required=False)
    if problems:
        raise GatewayError(problems)
    with gw.engine.begin() as conn:
        result = conn.execute(
            insert(_A).values(
                role=role,
                name=name,
                contact=contact,
                business_id=business_id,
                channel=channel,
                status="PENDING",
                submitted_at=gw.now(),
            )
        )
        application_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        row = conn.execute(select(_A).where(_A.c.application_id == application_id)).one()
    return view(row)


def view(row: Any) -> dict[str, Any]:
    return {
        "application_id": int(row.application_id),
        "role": row.role,
        "name": row.name,
        "contact": row.contact,
        "business_id": row.business_id,
        "status": row.status,
        "submitted_at": iso_hk(row.submitted_at),
        "decided_at": iso_hk(row.decided_at),
        "party_id": row.party_id,
        "reason": row.reason,
    }


def _require_officer(actor: Actor) -> None:
    if not actor.is_officer:
        raise GatewayError.one("FORBIDDEN", "only customs officers decide applications")


def list_applications(gw: Gateway, actor: Actor, status: str | None = "PENDING") -> list[dict[str, Any]]:
    _require_officer(actor)
    query = select(_A).order_by(_A.c.submitted_at.desc(), _A.c.application_id.desc()).limit(200)
    if status:
        query = query.where(_A.c.status == status)
    with gw.engine.connect() as conn:
        return [view(r) for r in conn.execute(query)]


def _claim(gw: Gateway, actor: Actor, application_id: int, status: str, **values: Any) -> Any:
    """Move a PENDING application on; the conditional update lets only one officer decide it."""
    with gw.engine.begin() as conn:
        row = conn.execute(select(_A).where(_A.c.application_id == application_id)).first()
        if row is None:
            raise GatewayError.one("NOT_FOUND", f"no application {application_id}", "application_id")
        done = conn.execute(
            update(_A)
            .where(_A.c.application_id == application_id, _A.c.status == "PENDING")
            .values(status=status, decided_at=gw.now(), decided_by=actor.party_id, **values)
        )
        if done.rowcount != 1:
            raise GatewayError.one(
                "INVALID_STATE", f"application {application_id} is already {row.status}", "application_id"
            )
        audit(conn, gw, actor, f"application.{status.lower()}", "application", str(application_id), view(row))
        return row


def approve(gw: Gateway, actor: Actor, application_id: int) -> tuple[dict[str, Any], parties.NewParty]:
    """Register the applicant; its key (and a driver's PIN) is in the returned NewParty, shown once."""
    _require_officer(actor)
    row = _claim(gw, actor, application_id, "APPROVED")
    try:
        new = parties.add_party(gw, actor, row.role, row.name)
    except Exception:
        with gw.engine.begin() as conn:  # nothing registered: the application goes back to the queue
            conn.execute(
                update(_A)
                .where(_A.c.application_id == application_id)
                .values(status="PENDING", decided_at=None, decided_by=None)
            )
        raise
    with gw.engine.begin() as conn:
        conn.execute(update(_A).where(_A.c.application_id == application_id).values(party_id=new.party_id))
        return view(conn.execute(select(_A).where(_A.c.application_id == application_id)).one()), new


def reject(gw: Gateway, actor: Actor, application_id: int, reason: str) -> dict[str, Any]:
    _require_officer(actor)
    problems: list[Problem] = []
    text = _text({"reason": reason}, "reason", 350, problems, required=False)
    if problems:
        raise GatewayError(problems)
    _claim(gw, actor, application_id, "REJECTED", reason=text)
    with gw.engine.connect() as conn:
        return view(conn.execute(select(_A).where(_A.c.application_id == application_id)).one())
