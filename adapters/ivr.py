"""The phone dialog for drivers (design section 9): DTMF only, served as VoiceXML 2.1 over HTTP so that
any IVR platform can run it. The entry document is ``/ivr/start.vxml``.

The caller identifies with party id (8 digits) and PIN (6 digits); three wrong PINs lock the dialog for
that party for 30 minutes (``parties.authenticate_pin``). Then a menu: bundle, unbundle, hear my
bundles. Every step is one document whose form posts (``<submit namelist=...>``) to the next URL.

State between documents travels in the documents themselves: the driver's identity as a signed token
``PARTY.EXPIRES.HMAC`` (HMAC-SHA256 with a random secret kept in the ``settings`` table as
``ivr_secret``, valid for :data:`TOKEN_MINUTES` and renewed on every step; never the PIN), and the
dialog's own choices (vehicle, control point, the CCRNs keyed so far) as plain variables: they are
only what the caller keyed, and the bundling service checks all of them again. Each step re-reads the
party, so a driver suspended in mid-call is refused at the next key press.

Vehicles. A Hong Kong registration mark is usually up to two letters then up to four digits; letters
cannot be keyed on a phone unambiguously, so the caller first picks from the vehicles he bundled
before (most recent first), or keys the mark's digits and then picks its letters from a short spoken
list: the letters of his earlier vehicles with those digits. Vehicle hints in consignments are not
offered, because they are the filers' data and the dialog asks for the vehicle before any CCRN. When
the list is empty or wrong, the letters are keyed two keys each: the key that carries the letter, then
its place on that key (A is 2 1, B is 2 2, S is 7 4, Z is 9 4). The mark is the letters followed by the
digits; personalised marks that mix them otherwise are bundled on the web or API.

CCRNs are keyed one at a time, and each is checked at once against its Damm check digit so that a
mistyped one is asked for again while the caller still holds the paper; star ends the list and bundles.
Whatever goes wrong, the platform gets a valid VoiceXML document that says so in plain words; never an
HTTP error or a stack trace.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy import or_, select
from starlette.concurrency import run_in_threadpool

from gateway import bundles, parties, tables
from gateway.clock import HONG_KONG
from gateway.context import SYSTEM, Actor, Gateway, store_raw, stored_secret
from gateway.errors import GatewayError, Problem
from gateway.identifiers import ccrn_problem, normalise_vrn, vrn_problem

log = logging.getLogger("roadcargo.ivr")
router = APIRouter(prefix="/ivr", include_in_schema=False)

CONTENT_TYPE = "application/voicexml+xml"
TOKEN_MINUTES = 15
SECRET_NAME = "ivr_secret"
LOGIN_TRIES = 3  # per call; the PIN lock itself counts across calls
MAX_PICKS = 5  # a spoken list longer than this is forgotten before its end
KEYPAD = {"2": "ABC", "3": "DEF", "4": "GHI", "5": "JKL", "6": "MNO", "7": "PQRS", "8": "TUV", "9": "WXYZ"}

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates" / "ivr"),
    autoescape=True,
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)


# -- documents -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One thing to ask: keys (``digits`` = min and max count) or a pick among ``options``."""

    name: str
    prompt: str
    digits: tuple[int, int] | None = None
    options: tuple[tuple[str, str], ...] = ()  # (key, value)
    star: bool = False  # the star key alone is an answer too
    nomatch: str = "Sorry, that is not one of the choices."


@dataclass
class Doc:
    template: str
    say: list[str] = field(default_factory=list)
    vars: dict[str, str] = field(default_factory=dict)
    fields: list[Field] = field(default_factory=list)
    submit: str = ""
    exit_on: tuple[str, str, str] | None = None  # (field, value, goodbye): end the call there

    def render(self) -> str:
        names = [*self.vars, *(f.name for f in self.fields)]
        return _templates.get_template(self.template).render(
            say=self.say,
            vars=self.vars,
            fields=self.fields,
            submit=self.submit,
            namelist=" ".join(names),
            exit_on=self.exit_on,
        )


def _bye(*say: str) -> Doc:
    return Doc("bye.vxml.j2", list(say))


def _vxml(doc: Doc) -> Response:
    # IVR platforms cache documents by URL; every answer here is about this call only.
    return Response(doc.render(), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})


# -- speaking --------------------------------------------------------------------------------------


def _spell(text: str) -> str:
    """Digits and letters one by one: ``AB1234`` is said ``A B 1 2 3 4``."""
    return " ".join(text)


def _ending(ccrn: str) -> str:
    return f"the number ending {_spell(ccrn[-4:])}"


def _time(gw: Gateway, iso: str | None) -> str:
    """A time of day in Hong Kong time, with the day when it is not today."""
    if iso is None:
        return "an unknown time"
    moment = datetime.fromisoformat(iso).astimezone(HONG_KONG)
    today = gw.now().astimezone(HONG_KONG).date()
    said = f"{moment.hour % 12 or 12}:{moment.minute:02d} {'AM' if moment.hour < 12 else 'PM'}"
    if moment.date() == today:
        return said
    if moment.date() == today + timedelta(days=1):
        return f"{said} tomorrow"
    return f"{said} on {moment:%A} {moment.day} {moment:%B}"


def _cp_name(gw: Gateway, code: str) -> str:
    cp = gw.config.control_points.get(code)
    return cp.name if cp else _spell(code)


def _describe(gw: Gateway, view: dict[str, Any]) -> str:
    n = len(view["ccrns"])
    return (
        f"Vehicle {_spell(view['vehicle'])}, at {_cp_name(gw, view['control_point'])}, "
        f"with {n} consignment{'s' if n != 1 else ''}. "
        f"Earliest crossing {_time(gw, view['earliest_crossing'])} Hong Kong time. "
        f"Your slot is from {_time(gw, view['slot']['start'])} to {_time(gw, view['slot']['end'])}."
    )


def _explain(gw: Gateway, problem: Problem, ccrns: list[str], vehicle: str, cp: str) -> str:
    """One refusal in plain words, for the ear."""
    match = re.fullmatch(r"ccrns\[(\d+)\]", problem.field or "")
    which = _ending(ccrns[int(match.group(1))]) if match and int(match.group(1)) < len(ccrns) else "a number"
    code = problem.code
    if code == "ALREADY_BUNDLED" and problem.field == "vehicle":
        return f"Vehicle {_spell(vehicle)} already has a live bundle. Unbundle it first."
    if code == "ALREADY_BUNDLED":
        return f"The consignment with {which} is already in another live bundle."
    if problem.field == "bundle_id":
        return "That bundle is no longer live." if code == "INVALID_STATE" else "You have no such bundle."
    if code == "NOT_FOUND":
        return f"There is no consignment with {which}."
    if code == "EXPIRED":
        return f"The consignment with {which} has expired."
    if code == "INVALID_STATE":
        return f"The consignment with {which} can no longer be bundled."
    if code == "BUNDLE_MISMATCH":
        return f"The consignment with {which} crosses in another direction or at another control point."
    if code == "CCRN_CHECK_DIGIT":
        return f"{which.capitalize()} does not check."
    if code == "SLOT_FULL":
        return f"{_cp_name(gw, cp)} has no free slot left today. Choose another control point or call later."
    if code == "FORBIDDEN" and "suspended" in problem.message:
        return "Your registration is suspended. Please contact customs."
    if code == "INVALID_VALUE" and problem.field == "vehicle":
        return f"{_spell(vehicle)} is not a Hong Kong registration mark."
    if code == "UNAVAILABLE":
        return "The gateway is busy. Please try again in a few minutes."
    return "The gateway could not do that."


def _explain_all(gw: Gateway, error: GatewayError, ccrns: list[str], vehicle: str, cp: str) -> list[str]:
    said: list[str] = []
    for problem in error.problems:
        sentence = _explain(gw, problem, ccrns, vehicle, cp)
        if sentence not in said:
            said.append(sentence)
    return said[:3]  # the caller cannot take in more; the rest waits for the next try


# -- identity --------------------------------------------------------------------------------------


def _secret(gw: Gateway) -> bytes:
    return stored_secret(gw, SECRET_NAME)


def _sign(secret: bytes, party_id: str, expires: int) -> str:
    return hmac.new(secret, f"ivr:{party_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def issue_token(gw: Gateway, secret: bytes, party_id: str) -> str:
    expires = int((gw.now() + timedelta(minutes=TOKEN_MINUTES)).timestamp())
    return f"{party_id}.{expires}.{_sign(secret, party_id, expires)}"


class CallEnded(Exception):
    """The call cannot go on; carries what to say before hanging up."""

    def __init__(self, *say: str) -> None:
        super().__init__(" ".join(say))
        self.say = list(say)


_TOKEN_PART = re.compile(r"[0-9]{1,12}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _caller(gw: Gateway, secret: bytes, token: str) -> Actor:
    """The driver a token names, if it is genuine, unexpired, and the driver still active."""
    party_id, _, rest = token.partition(".")
    expires, _, signature = rest.partition(".")
    if not (
        _TOKEN_PART.fullmatch(party_id) and _TOKEN_PART.fullmatch(expires) and _HEX64.fullmatch(signature)
    ):
        raise CallEnded("Please identify first. Call again.")
    if not hmac.compare_digest(signature, _sign(secret, party_id, int(expires))):
        raise CallEnded("Please identify first. Call again.")
    if int(expires) < gw.now().timestamp():
        raise CallEnded("Your call has timed out. Please call again.")
    party = parties.get_party(gw, SYSTEM, party_id)
    if party["status"] != "ACTIVE":
        raise CallEnded("Your registration is suspended. Please contact customs. Goodbye.")
    if party["role"] != "driver":  # tokens are only issued to drivers; a changed role ends the call
        raise CallEnded("The phone service is for drivers. Goodbye.")
    return Actor(party_id, party["role"], "ivr", party["status"])


@dataclass
class Step:
    """What a step works with: the gateway, the caller's keys, and (after login) who is calling."""

    gw: Gateway
    secret: bytes
    params: dict[str, str]
    actor: Actor | None = None

    def get(self, name: str) -> str:
        return self.params.get(name, "").strip()

    @property
    def driver(self) -> Actor:
        assert self.actor is not None
        return self.actor

    def token(self) -> str:
        return issue_token(self.gw, self.secret, str(self.driver.party_id))

    def ask(self, say: list[str], fields: list[Field], submit: str, **state: str) -> Doc:
        return Doc("ask.vxml.j2", say, {"token": self.token(), **state}, fields, submit)


# -- the dialog --------------------------------------------------------------------------------------

_PARTY_AGAIN = "A party number has eight digits. Please key it again."
_PIN_AGAIN = "A PIN has six digits. Please key it again."
_MENU = (("1", "bundle"), ("2", "unbundle"), ("3", "hear"), ("9", "end"))


def _login(say: list[str], tries: int = 0) -> Doc:
    return Doc(
        "ask.vxml.j2",
        say,
        {"tries": str(tries)},
        [
            Field("party", "Please key your eight digit party number.", digits=(8, 8), nomatch=_PARTY_AGAIN),
            Field("pin", "Now key your six digit PIN.", digits=(6, 6), nomatch=_PIN_AGAIN),
        ],
        "login",
    )


def start(step: Step) -> Doc:
    return _login(["Welcome to the road cargo phone service for drivers."])


def login(step: Step) -> Doc:
    tries = int(step.get("tries")) + 1 if step.get("tries").isdigit() else 1
    try:
        step.actor = parties.authenticate_pin(step.gw, step.get("party"), step.get("pin"), "ivr")
    except GatewayError as error:
        message = error.problems[0].message
        if error.problems[0].code == "RATE_LIMITED":
            return _bye("The phone service is busy for this party number. Please call again later. Goodbye.")
        if "locked" in message:
            return _bye(
                "There have been three wrong PINs for this party number, so the phone service is locked "
                "for it for 30 minutes. Please call again later. Goodbye."
            )
        if tries >= LOGIN_TRIES:
            return _bye("That party number and PIN do not match. Please check them and call again. Goodbye.")
        return _login(["That party number and PIN do not match. Please try again."], tries)
    if step.driver.status != "ACTIVE":
        return _bye("Your registration is suspended. Please contact customs. Goodbye.")
    if step.driver.role != "driver":
        return _bye("The phone service is for drivers. Goodbye.")
    return _menu(step, [])


def _menu(step: Step, say: list[str]) -> Doc:
    doc = step.ask(
        say,
        [
            Field(
                "choice",
                "To bundle consignments with a vehicle, press 1. To unbundle, press 2. "
                "To hear your bundles, press 3. To end the call, press 9.",
                options=_MENU,
            )
        ],
        "menu",
    )
    doc.exit_on = ("choice", "end", "Goodbye.")
    return doc


def menu(step: Step) -> Doc:
    choice = step.get("choice")
    if choice in ("bundle", "unbundle"):
        return _vehicle_pick(step, choice)
    if choice == "hear":
        views = _live_bundles(step)
        if not views:
            return _menu(step, ["You have no live bundle."])
        return _menu(step, [_describe(step.gw, v) for v in views])
    return _bye("Goodbye.")


# vehicles


def _driver_vehicles(step: Step, live_only: bool) -> list[str]:
    """Vehicles this driver bundled (or had bundled for him), most recent first."""
    b = tables.bundles
    me = step.driver.party_id
    query = select(b.c.vehicle, b.c.created_at).where(or_(b.c.driver_id == me, b.c.created_by == me))
    if live_only:
        query = query.where(b.c.status == "LIVE")
    seen: list[str] = []
    with step.gw.engine.connect() as conn:
        for row in conn.execute(query.order_by(b.c.created_at.desc()).limit(200)):
            if row.vehicle not in seen:
                seen.append(row.vehicle)
    return seen


def _live_bundles(step: Step) -> list[dict[str, Any]]:
    views = []
    for vehicle in _driver_vehicles(step, live_only=True)[:MAX_PICKS]:
        view = bundles.live_bundle(step.gw, step.driver, vehicle)
        if view is not None:
            views.append(view)
    return views


def _vehicle_pick(step: Step, purpose: str, say: list[str] | None = None) -> Doc:
    candidates = _driver_vehicles(step, live_only=purpose == "unbundle")[:MAX_PICKS]
    say = list(say or [])
    if not candidates:
        if purpose == "unbundle":
            return _menu(step, [*say, "You have no live bundle."])
        return _digits(step, purpose, say)
    prompt = " ".join(f"For {_spell(v)}, press {i}." for i, v in enumerate(candidates, 1))
    options = tuple((str(i), v) for i, v in enumerate(candidates, 1))
    return step.ask(
        say,
        [Field("pick", f"{prompt} For another vehicle, press 0.", options=(*options, ("0", "other")))],
        "vehicle",
        purpose=purpose,
    )


def _digits(step: Step, purpose: str, say: list[str]) -> Doc:
    field_ = Field(
        "digits",
        "Key the digits of the vehicle's registration mark, then press hash.",
        digits=(1, 4),
        nomatch="Please key the one to four digits of the mark, then hash.",
    )
    return step.ask(say, [field_], "vehicle", purpose=purpose)


def _letters(step: Step, purpose: str, digits: str, say: list[str]) -> Doc:
    pattern = re.compile(rf"([A-Z]{{1,4}}){re.escape(digits)}")
    prefixes: list[str] = []
    for vehicle in _driver_vehicles(step, live_only=purpose == "unbundle"):
        m = pattern.fullmatch(vehicle)
        if m and m.group(1) not in prefixes:
            prefixes.append(m.group(1))
    prefixes = prefixes[:MAX_PICKS]
    if not prefixes:
        return _spell_letters(step, purpose, digits, say)
    prompt = " ".join(f"For {_spell(p + digits)}, press {i}." for i, p in enumerate(prefixes, 1))
    options = tuple((str(i), p) for i, p in enumerate(prefixes, 1))
    return step.ask(
        say,
        [Field("letters", f"{prompt} To key the letters, press 0.", options=(*options, ("0", "spell")))],
        "vehicle",
        purpose=purpose,
        digits=digits,
    )


def _spell_letters(step: Step, purpose: str, digits: str, say: list[str]) -> Doc:
    field_ = Field(
        "spelled",
        "Key the letters of the mark, two keys for each letter: the key it is on, then its place on "
        "that key. For example, A is 2 1, B is 2 2, and S is 7 4. Then press hash.",
        digits=(2, 8),
        nomatch="Please key two keys for each letter, then hash.",
    )
    return step.ask(say, [field_], "vehicle", purpose=purpose, digits=digits)


def letters_from_keys(keys: str) -> str | None:
    """Letters keyed two keys each (key, place on the key): ``2122`` is ``AB``; None if not letters."""
    if len(keys) % 2:
        return None
    out = []
    for key, place in zip(keys[::2], keys[1::2], strict=True):
        letters = KEYPAD.get(key, "")
        if not place.isdigit() or not 1 <= int(place) <= len(letters):
            return None
        out.append(letters[int(place) - 1])
    return "".join(out)


def vehicle(step: Step) -> Doc:
    purpose = step.get("purpose")
    if purpose not in ("bundle", "unbundle"):
        return _menu(step, [])
    pick, digits = step.get("pick"), step.get("digits")
    if pick == "other":
        return _digits(step, purpose, [])
    if pick:
        return _vehicle_chosen(step, purpose, pick)
    if not digits.isdigit():
        return _digits(step, purpose, [])
    letters, spelled = step.get("letters"), step.get("spelled")
    if spelled:
        decoded = letters_from_keys(spelled)
        if decoded is None:
            return _spell_letters(step, purpose, digits, ["Those keys are not letters."])
        return _vehicle_chosen(step, purpose, decoded + digits)
    if letters == "spell":
        return _spell_letters(step, purpose, digits, [])
    if letters:
        return _vehicle_chosen(step, purpose, letters + digits)
    return _letters(step, purpose, digits, [])


def _vehicle_chosen(step: Step, purpose: str, mark: str) -> Doc:
    problem = vrn_problem(mark)
    if problem:
        return _digits(step, purpose, [f"{_spell(mark)} is not a Hong Kong registration mark."])
    vrn = normalise_vrn(mark)
    if purpose == "bundle":
        return _control_point(step, vrn, [f"Vehicle {_spell(vrn)}."])
    view = bundles.live_bundle(step.gw, step.driver, vrn)
    if view is None:
        return _menu(step, [f"You have no live bundle for vehicle {_spell(vrn)}."])
    return step.ask(
        [_describe(step.gw, view)],
        [
            Field(
                "confirm",
                "To unbundle it, press 1. To keep it, press 2.",
                options=(("1", "yes"), ("2", "no")),
            )
        ],
        "unbundle",
        bundle_id=view["bundle_id"],
    )


# bundling


def _control_point(step: Step, vrn: str, say: list[str]) -> Doc:
    codes = list(step.gw.config.control_points)
    prompt = " ".join(f"For {_cp_name(step.gw, c)}, press {i}." for i, c in enumerate(codes, 1))
    options = tuple((str(i), c) for i, c in enumerate(codes, 1))
    return step.ask(
        say,
        [Field("control_point", f"Which control point? {prompt}", options=options)],
        "ccrn",
        vehicle=vrn,
        ccrns="",
    )


def _ask_ccrn(step: Step, vrn: str, cp: str, ccrns: list[str], say: list[str]) -> Doc:
    if ccrns:
        prompt = "Key the next CCRN, or press star to bundle."
    else:
        prompt = "Key the twelve digits of the first CCRN."
    field_ = Field(
        "ccrn",
        prompt,
        digits=(12, 12),
        star=bool(ccrns),
        nomatch="A CCRN has twelve digits. Please key it again.",
    )
    return step.ask(say, [field_], "ccrn", vehicle=vrn, control_point=cp, ccrns=" ".join(ccrns))


def ccrn(step: Step) -> Doc:
    vrn, cp = step.get("vehicle"), step.get("control_point")
    if vrn_problem(vrn):
        return _vehicle_pick(step, "bundle")
    if cp not in step.gw.config.control_points:
        return _control_point(step, vrn, [])
    ccrns = step.get("ccrns").split()
    keyed = step.get("ccrn")
    if keyed == "*":
        if not ccrns:
            return _ask_ccrn(step, vrn, cp, ccrns, ["You have not keyed any CCRN yet."])
        return _bundle(step, vrn, cp, ccrns)
    if not keyed:
        return _ask_ccrn(step, vrn, cp, ccrns, [f"{_cp_name(step.gw, cp)}."])
    number, problem = ccrn_problem(keyed)
    if problem is not None or number is None:
        if problem is not None and problem.code == "CCRN_CHECK_DIGIT":
            say = "That number does not check. Please key it again."
        else:
            say = "A CCRN has twelve digits. Please key it again."
        return _ask_ccrn(step, vrn, cp, ccrns, [say])
    if number in ccrns:
        return _ask_ccrn(step, vrn, cp, ccrns, [f"You have keyed {_ending(number)} already."])
    ccrns.append(number)
    n = len(ccrns)
    noted = f"{_ending(number).capitalize()} is noted. That is {n} number{'s' if n > 1 else ''}."
    if n >= bundles.MAX_CCRNS:
        return _bundle(step, vrn, cp, ccrns)
    return _ask_ccrn(step, vrn, cp, ccrns, [noted])


def _bundle(step: Step, vrn: str, cp: str, ccrns: list[str]) -> Doc:
    request = {"vehicle": vrn, "control_point": cp, "ccrns": ccrns}
    store_raw(step.gw, step.driver, "application/json", json.dumps(request).encode())
    try:
        view = bundles.bundle(step.gw, step.driver, vrn, cp, ccrns)
    except GatewayError as error:
        said = _explain_all(step.gw, error, ccrns, vrn, cp)
        return _menu(step, [*said, "Nothing was bundled."])
    n = len(view["ccrns"])
    return _menu(
        step,
        [
            f"Done. Vehicle {_spell(view['vehicle'])} is bundled with {n} consignment{'s' if n != 1 else ''} "
            f"at {_cp_name(step.gw, view['control_point'])}.",
            f"The earliest crossing is at {_time(step.gw, view['earliest_crossing'])} Hong Kong time.",
            f"Your slot is from {_time(step.gw, view['slot']['start'])} "
            f"to {_time(step.gw, view['slot']['end'])}.",
        ],
    )


def unbundle(step: Step) -> Doc:
    bundle_id = step.get("bundle_id")
    if step.get("confirm") != "yes":
        return _menu(step, ["The bundle is kept."])
    store_raw(step.gw, step.driver, "application/json", json.dumps({"unbundle": bundle_id}).encode())
    try:
        view = bundles.unbundle(step.gw, step.driver, bundle_id)
    except GatewayError as error:
        return _menu(step, [*_explain_all(step.gw, error, [], "", ""), "Nothing was changed."])
    return _menu(
        step,
        [
            f"The bundle of vehicle {_spell(view['vehicle'])} is dissolved. "
            "Its consignments can be bundled again."
        ],
    )


# -- HTTP ------------------------------------------------------------------------------------------

_PUBLIC = {"start": start, "login": login}
_SIGNED_IN: dict[str, Callable[[Step], Doc]] = {
    "menu": menu,
    "vehicle": vehicle,
    "ccrn": ccrn,
    "unbundle": unbundle,
}


def _run(gw: Gateway, secret: bytes, name: str, params: dict[str, str]) -> Doc:
    step = Step(gw, secret, params)
    if name in _PUBLIC:
        return _PUBLIC[name](step)
    if name not in _SIGNED_IN:
        return _bye("Sorry, that part of the phone service does not exist. Goodbye.")
    try:
        step.actor = _caller(gw, secret, step.get("token"))
    except CallEnded as ended:
        return _bye(*ended.say)
    except GatewayError:
        return _bye("Please identify first. Call again.")
    return _SIGNED_IN[name](step)


async def _answer(request: Request, name: str) -> Response:
    gw: Gateway = request.app.state.gateway
    try:
        params = {k: str(v) for k, v in request.query_params.items()}
        if request.method == "POST":
            form = await request.form()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        secret = getattr(request.app.state, "ivr_secret", None)
        if secret is None:
            secret = request.app.state.ivr_secret = await run_in_threadpool(_secret, gw)
        doc = await run_in_threadpool(_run, gw, secret, name, params)
    except Exception:
        # The platform must always get a document it can speak; the fault goes to the log.
        log.exception("phone dialog step %s failed", name)
        doc = _bye("Sorry, the phone service has a problem. Nothing was changed. Please call again later.")
    return _vxml(doc)


@router.api_route("/start.vxml", methods=["GET", "POST"])
async def start_document(request: Request) -> Response:
    return await _answer(request, "start")


@router.api_route("/{step}", methods=["GET", "POST"])
async def step_document(request: Request, step: str) -> Response:
    return await _answer(request, step)


@router.api_route("/{rest:path}", methods=["GET", "POST"])
async def unknown_document(request: Request, rest: str) -> Response:
    return await _answer(request, "")
