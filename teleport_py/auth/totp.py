"""Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP), as
authenticator apps make them: HMAC-SHA1, 30-second steps, 6 digits.

Pure functions: the caller brings the time and remembers which step was used
last, so a code is taken at most once (``match`` only accepts steps after it).
One step of clock skew either way is accepted, as Teleport does.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from urllib.parse import quote, urlencode

PERIOD = 30
DIGITS = 6
SKEW_STEPS = 1
#: 160-bit secrets, RFC 4226's recommended length for SHA-1.
SECRET_BYTES = 20


def new_secret() -> str:
    """A random secret, base32 without padding (what authenticator apps take)."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def _key(secret: str) -> bytes:
    text = secret.replace(" ", "").upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def hotp(key: bytes, counter: int, digits: int = DIGITS) -> str:
    """RFC 4226: HMAC-SHA1 of the counter, dynamically truncated."""
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** digits).zfill(digits)


def step_at(seconds: float) -> int:
    return int(seconds // PERIOD)


def code_at(secret: str, seconds: float) -> str:
    """The code an authenticator shows at ``seconds`` (Unix time)."""
    return hotp(_key(secret), step_at(seconds))


def match(secret: str, code: str, seconds: float, last_step: int) -> int | None:
    """The step ``code`` is valid for (now, or one step before or after),
    if that step is later than ``last_step``; None otherwise."""
    code = code.strip()
    if len(code) != DIGITS or not code.isdigit():
        return None
    key = _key(secret)
    now = step_at(seconds)
    found = None
    for step in range(now - SKEW_STEPS, now + SKEW_STEPS + 1):
        # Every candidate is computed and compared, so timing says nothing.
        if hmac.compare_digest(hotp(key, step), code) and step > last_step and found is None:
            found = step
    return found


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """``otpauth://totp/...``: what a QR code for an authenticator app holds."""
    label = quote(f"{issuer}:{account}", safe="")
    query = urlencode({"secret": secret, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS, "period": PERIOD})
    return f"otpauth://totp/{label}?{query}"
