"""Password hashing with scrypt, a memory-hard KDF from the standard library.

scrypt with N=2**15, r=8 costs ~32 MiB and ~50-100 ms per guess, which makes
offline guessing expensive; the hash carries its parameters so they can be
raised later without breaking stored passwords. Hashing is CPU-bound, so the
Auth service runs it on a thread pool, never on the reactor thread.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
_N, _R, _P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024


class WeakPassword(ValueError):
    pass


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"password must be at least {MIN_PASSWORD_LENGTH} characters long")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(f"password must be at most {MAX_PASSWORD_LENGTH} characters long")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash``, all base64; slow on purpose."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str | None) -> bool:
    """Constant-time check. ``encoded=None`` (unknown user) still pays the full
    cost against a dummy hash, so timing does not reveal which users exist."""
    if encoded is None:
        hash_password(password, salt=b"\0" * 16)
        return False
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)
