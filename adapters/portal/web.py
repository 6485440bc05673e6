"""What every portal page needs: who is asking (the login session), the language, the CSRF token, and
rendering a template. Pages call :func:`open_page` first and render through the returned ``Page``.

Sessions live in the database (``portal_sessions``): the cookie holds a random token and the table its
SHA-256, so logging out really ends the session and a copy of the database opens none. Visitors who are
not logged in get an anonymous cookie instead, so that the login and application forms are protected
against cross-site request forgery too. The CSRF token of a form is an HMAC, under the portal secret
(kept in the ``settings`` table), of whichever of the two cookies the visitor holds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import ChainableUndefined, Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import delete, insert, or_, select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from gateway import ratelimit, tables
from gateway.context import FILER_ROLES, Actor, Gateway, stored_secret
from gateway.errors import GatewayError, RateLimited
from gateway.identifiers import format_ccrn

HERE = Path(__file__).parent
SESSION_COOKIE = "rcg_session"
ANON_COOKIE = "rcg_anon"
LANG_COOKIE = "rcg_lang"
LANGUAGES = ("en", "zh-Hant")
SESSION_HOURS = 12
DISPLAY_SESSION_HOURS = 30 * 24  # a kiosk lane screen is logged in once, not every shift
SECRET_NAME = "portal_secret"


@cache
def catalogue(lang: str) -> dict[str, str]:
    """The message catalogue of one language (``i18n/LANG.json``): key -> text."""
    data: dict[str, str] = json.loads((HERE / "i18n" / f"{lang}.json").read_text("utf-8"))
    return data


def translate(lang: str, key: str, **values: Any) -> str:
    text = catalogue(lang).get(key) or catalogue("en").get(key) or key
    return text.format(**values) if values else text


_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html", "svg"], default_for_string=True),
    undefined=ChainableUndefined,  # optional fields of a record are simply absent
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["ccrn"] = format_ccrn


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def portal_secret(request: Request) -> bytes:
    """The HMAC key of CSRF tokens; read once per application from the database."""
    state = request.app.state
    cached: bytes | None = getattr(state, "portal_secret", None)
    if cached is None:
        cached = stored_secret(state.gateway, SECRET_NAME)
        state.portal_secret = cached
    return cached


def _csrf_for(secret: bytes, cookie_value: str) -> str:
    return hmac.new(secret, b"csrf|" + cookie_value.encode("utf-8", "replace"), hashlib.sha256).hexdigest()


def _language(request: Request) -> str:
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LANGUAGES:
        return str(chosen)
    accept = request.headers.get("accept-language", "").lower()
    return "zh-Hant" if accept.startswith("zh") else "en"


def load_session(gw: Gateway, token: str | None) -> Actor | None:
    """The party of a live session, with its role and status as they are now (a suspension shows at
    once); None for no, unknown or expired sessions, and for sessions opened with an API key that has
    since been revoked or has expired. Counts towards the party's rate limit."""
    if not token:
        return None
    s, p, k = tables.portal_sessions, tables.parties, tables.api_keys
    now = gw.now()
    with gw.engine.connect() as conn:
        row = conn.execute(
            select(p.c.party_id, p.c.role, p.c.status)
            .join(s, s.c.party_id == p.c.party_id)
            .outerjoin(k, k.c.key_id == s.c.key_id)
            .where(
                s.c.token_hash == hash_token(token),
                s.c.expires_at > now,
                or_(
                    s.c.key_id.is_(None),
                    k.c.revoked_at.is_(None) & or_(k.c.expires_at.is_(None), k.c.expires_at > now),
                ),
            )
        ).first()
    if row is None:
        return None
    ratelimit.admit(gw, row.party_id)
    return Actor(row.party_id, row.role, "portal", row.status)


def start_session(gw: Gateway, party_id: str, hours: int = SESSION_HOURS, key_id: int | None = None) -> str:
    """A new session; ``key_id`` is the API key it was opened with (None: a password), so that revoking
    the key ends the session too."""
    token = secrets.token_urlsafe(32)
    now = gw.now()
    with gw.engine.begin() as conn:
        # Expired sessions of this party go when it logs in again: the table stays small without a job.
        conn.execute(
            delete(tables.portal_sessions).where(
                tables.portal_sessions.c.party_id == party_id, tables.portal_sessions.c.expires_at <= now
            )
        )
        conn.execute(
            insert(tables.portal_sessions).values(
                token_hash=hash_token(token),
                party_id=party_id,
                created_at=now,
                expires_at=now + timedelta(hours=hours),
                key_id=key_id,
            )
        )
    return token


def end_session(gw: Gateway, token: str | None) -> None:
    if token:
        with gw.engine.begin() as conn:
            conn.execute(
                delete(tables.portal_sessions).where(tables.portal_sessions.c.token_hash == hash_token(token))
            )


@dataclass
class Page:
    """One request to the portal: who, in which language, the form posted, and the cookies to set."""

    request: Request
    gw: Gateway
    actor: Actor | None
    lang: str
    csrf: str
    form: FormData | None = None
    body: bytes = b""
    cookies: dict[str, tuple[str, int | None]] = field(default_factory=dict)

    def t(self, key: str, **values: Any) -> str:
        return translate(self.lang, key, **values)

    def value(self, name: str) -> str:
        """A text field of the posted form ('' when absent or a file)."""
        raw = self.form.get(name) if self.form is not None else None
        return raw if isinstance(raw, str) else ""

    @property
    def role(self) -> str | None:
        return None if self.actor is None else self.actor.role

    def render(self, template: str, status: int = 200, **values: Any) -> Response:
        html = _env.get_template(template).render(
            t=self.t,
            lang=self.lang,
            languages=LANGUAGES,
            csrf=self.csrf,
            actor=self.actor,
            nav=navigation(self.actor),
            path=self.request.url.path,
            here=quote(
                self.request.url.path + (f"?{self.request.url.query}" if self.request.url.query else "")
            ),
            **values,
        )
        return self.finish(HTMLResponse(html, status_code=status))

    def redirect(self, url: str) -> Response:
        return self.finish(RedirectResponse(url, status_code=303))

    def finish(self, response: Response) -> Response:
        secure = self.request.url.scheme == "https"
        for name, (value, max_age) in self.cookies.items():
            if value:
                response.set_cookie(
                    name, value, max_age=max_age, httponly=True, samesite="lax", secure=secure, path="/"
                )
            else:
                response.delete_cookie(name, path="/", httponly=True, samesite="lax", secure=secure)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        # Everything is served by the gateway itself: no CDN, no inline script, no external request.
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        return response


def navigation(actor: Actor | None) -> list[tuple[str, str]]:
    """The menu for a role: (path, message key)."""
    if actor is None:
        return [("/", "nav.home"), ("/login", "nav.login"), ("/apply", "nav.apply")]
    items = [("/", "nav.home")]
    if actor.role in FILER_ROLES:
        items += [
            ("/consignments", "nav.consignments"),
            ("/consignments/new", "nav.lodge"),
            ("/upload", "nav.upload"),
        ]
    if actor.role in ("driver", "service_provider"):
        items += [("/bundles", "nav.bundles")]
    if actor.role == "officer":
        items += [
            ("/officer/dashboard", "nav.dashboard"),
            ("/officer/profiles", "nav.profiles"),
            ("/officer/targets", "nav.targets"),
            ("/officer/inspections", "nav.inspections"),
            ("/officer/control-points", "nav.control_points"),
            ("/officer/applications", "nav.applications"),
            ("/officer/parties", "nav.parties"),
        ]
    if actor.role in ("officer", "kiosk"):
        items += [("/kiosk", "nav.kiosk")]
    items += [("/account", "nav.account")]
    return items


class Refused(Exception):
    """A request the portal turns away before any work (bad CSRF token): answered with a page."""


async def open_page(request: Request) -> Page:
    """Read cookies (and the form of a POST, whose CSRF token is checked) and load the session."""
    gw: Gateway = request.app.state.gateway
    secret = await run_in_threadpool(portal_secret, request)
    token = request.cookies.get(SESSION_COOKIE)
    actor = await run_in_threadpool(load_session, gw, token) if token else None
    cookies: dict[str, tuple[str, int | None]] = {}
    if actor is None:
        if token:
            cookies[SESSION_COOKIE] = ("", None)  # expired or logged out elsewhere: forget it
        anon = request.cookies.get(ANON_COOKIE)
        if not anon or len(anon) > 64:
            anon = secrets.token_urlsafe(24)
            cookies[ANON_COOKIE] = (anon, None)
        basis = anon
    else:
        assert token is not None
        basis = token
    page = Page(request, gw, actor, _language(request), _csrf_for(secret, basis), cookies=cookies)
    if request.method == "POST":
        page.body = await request.body()
        page.form = await request.form(max_files=1, max_fields=20000)
        sent = page.form.get("csrf")
        if not isinstance(sent, str) or not hmac.compare_digest(sent, page.csrf):
            raise Refused(page.t("error.csrf"))
    return page


def refused_response(request: Request, message: str) -> HTMLResponse:
    lang = _language(request)
    html = _env.get_template("message.html").render(
        t=lambda key, **v: translate(lang, key, **v),
        lang=lang,
        languages=LANGUAGES,
        csrf="",
        actor=None,
        nav=navigation(None),
        path=request.url.path,
        here=quote(request.url.path),
        title=translate(lang, "error.refused_title"),
        message=message,
        links=[("/", "nav.home")],
    )
    return HTMLResponse(html, status_code=403, headers={"Cache-Control": "no-store"})


def limited_response(request: Request, error: RateLimited) -> HTMLResponse:
    """429 for a party over its rate limit, as a page, with ``Retry-After``."""
    response = refused_response(request, error.problems[0].message)
    response.status_code = 429
    response.headers.update(error.headers)
    return response


def svg_markup(svg: str) -> Markup:
    """An SVG this module generated from digits only: safe to put into the page as it is."""
    return Markup(svg)


Work = Callable[[Page], Response]


async def serve(request: Request, work: Work, roles: Collection[str] | None = None) -> Response:
    """Open the page, check the login and role, run ``work`` in a worker thread, and turn what the
    services refuse into a page: NOT_FOUND is a 404 page whether the thing is unknown or another
    party's, exactly as the API answers."""
    try:
        page = await open_page(request)
    except Refused as exc:
        return refused_response(request, str(exc))
    except RateLimited as exc:
        return limited_response(request, exc)
    if roles is not None:
        if page.actor is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return page.redirect(f"/login?next={quote(target, safe='')}")
        if page.actor.role not in roles:
            return message(page, "error.forbidden_title", page.t("error.forbidden"), status=403)
    try:
        return await run_in_threadpool(work, page)
    except GatewayError as exc:
        return problem_page(page, exc)


def message(
    page: Page,
    title_key: str,
    text: str,
    status: int = 200,
    links: Sequence[tuple[str, str]] = (("/", "nav.home"),),
) -> Response:
    return page.render("message.html", status=status, title=page.t(title_key), message=text, links=links)


def problem_page(page: Page, error: GatewayError) -> Response:
    status = error.http_status
    key = "error.not_found_title" if status == 404 else "error.refused_title"
    text = " ".join(f"{page.t('code.' + p.code)}: {p.message}" for p in error.problems)
    return message(page, key, text, status=status)
