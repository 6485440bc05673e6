"""Identifiers of design section 4: CCRN, party id, API key, PIN, vehicle registration, ISO 6346."""

from __future__ import annotations

import hashlib
import re
import secrets

from gateway.errors import GatewayError, Problem

# The Damm quasigroup of order 10 (H. Michael Damm, 2004): totally anti-symmetric, so the check digit
# catches every single-digit error and every adjacent transposition.
_DAMM = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)


def damm_digit(digits: str) -> int:
    """The Damm check digit of a string of decimal digits (0 for a string that already checks)."""
    interim = 0
    for ch in digits:
        interim = _DAMM[interim][ord(ch) - 48]
    return interim


CCRN_LENGTH = 12
_SPACES = re.compile(r"[\s]+")


def new_ccrn() -> str:
    """Eleven cryptographically random digits and the Damm check digit."""
    body = f"{secrets.randbelow(10 ** (CCRN_LENGTH - 1)):0{CCRN_LENGTH - 1}d}"
    return body + str(damm_digit(body))


def ccrn_problem(value: object, field: str | None = "ccrn") -> tuple[str | None, Problem | None]:
    """Normalise a CCRN as people type it (spaces allowed) and check its shape and check digit.

    Returns the 12-digit CCRN or the problem that names what is wrong. Checked before any lookup.
    """
    if not isinstance(value, str) or not value.strip():
        return None, Problem("MISSING_FIELD" if not value else "INVALID_VALUE", field, "a CCRN is required")
    text = _SPACES.sub("", value)
    if not text.isascii() or not text.isdigit() or len(text) != CCRN_LENGTH:
        return None, Problem("INVALID_VALUE", field, f"a CCRN is {CCRN_LENGTH} digits; got {value!r}")
    if damm_digit(text) != 0:
        return None, Problem(
            "CCRN_CHECK_DIGIT", field, f"CCRN {text} has a wrong check digit: check it was keyed correctly"
        )
    return text, None


def parse_ccrn(value: object, field: str | None = "ccrn") -> str:
    ccrn, problem = ccrn_problem(value, field)
    if problem is not None:
        raise GatewayError([problem])
    assert ccrn is not None
    return ccrn


def format_ccrn(ccrn: str) -> str:
    """How people see a CCRN: ``1234 5678 9012``."""
    return " ".join(ccrn[i : i + 4] for i in range(0, len(ccrn), 4))


def new_party_id() -> str:
    """Eight random decimal digits, keyable on a phone; never starting with 0 so it never loses one."""
    return str(secrets.randbelow(90_000_000) + 10_000_000)


def new_pin() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"


API_KEY_PREFIX = "rcg_"


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """SHA-256 of a high-entropy secret (API key). Keys are 256 random bits: no stretching needed."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def hash_pin(pin: str, salt: str) -> str:
    """PINs are short: stretch them with scrypt and a per-party salt."""
    return hashlib.scrypt(pin.encode(), salt=salt.encode(), n=2**14, r=8, p=1).hex()


# Hong Kong registration marks: letters and digits, 1 to 8 characters; I, O and Q are never issued
# (they read as 1, 0 and 0).
_VRN = re.compile(r"^[A-HJ-NPR-Z0-9]{1,8}$")


def normalise_vrn(value: str) -> str:
    return _SPACES.sub("", value).upper()


def vrn_problem(value: str) -> str | None:
    vrn = normalise_vrn(value)
    if not vrn:
        return "a vehicle registration number is required"
    if not _VRN.match(vrn):
        return f"{value!r} is not a Hong Kong registration mark: 1 to 8 letters and digits, without I, O or Q"
    return None


# ISO 6346: owner code (3 letters), category (U, J or Z), 6-digit serial, check digit. Letters count
# 10..38 skipping multiples of 11; each position weighs 2**i; the check digit is the sum mod 11 mod 10.
_CONTAINER = re.compile(r"^[A-Z]{3}[UJZ][0-9]{6}[0-9]$")


def _iso6346_letter_value(ch: str) -> int:
    value = 10
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        if value % 11 == 0:
            value += 1
        if letter == ch:
            return value
        value += 1
    raise ValueError(ch)


def iso6346_check_digit(first_ten: str) -> int:
    total = 0
    for i, ch in enumerate(first_ten):
        total += (int(ch) if ch.isdigit() else _iso6346_letter_value(ch)) * (2**i)
    return total % 11 % 10


def container_shape_ok(number: str) -> bool:
    return bool(_CONTAINER.match(number))


def container_check_digit_ok(number: str) -> bool:
    return iso6346_check_digit(number[:10]) == int(number[10])
