"""Sign-up tokens: a new (or reset) user sets a password with one, once.
Stored as ``/usertokens/<token>`` ``{user, expires}``, expiring with the token;
with ``second_factor: otp`` also ``otp_secret``, the OTP device the user
registers with the token (shown on the sign-up page only)."""
from __future__ import annotations

import json
import secrets
from typing import Any

import attr

from teleport_py import events
from teleport_py.auth import totp
from teleport_py.auth.services.common import to_json

PREFIX = "/usertokens/"
SIGNUP_TOKEN_TTL = 3600.0


@attr.s(frozen=True, auto_attribs=True)
class SignupTokens:
    _backend: Any
    _clock: Any

    async def create(self, username: str, *, otp: bool = False) -> dict[str, Any]:
        token = secrets.token_hex(16)
        expires = self._clock.seconds() + SIGNUP_TOKEN_TTL
        record: dict[str, Any] = {"user": username, "expires": expires}
        if otp:
            record["otp_secret"] = totp.new_secret()
        await self._backend.put(PREFIX + token, to_json(record), expires=expires)
        return {"token": token, "user": username, "expires": events.rfc3339(expires), "ttl": SIGNUP_TOKEN_TTL}

    async def details(self, token: str) -> dict[str, Any] | None:
        """``{user, expires[, otp_secret]}``, or None for an unknown or expired token."""
        item = await self._backend.get(PREFIX + token) if token else None
        return json.loads(item.value) if item is not None else None

    async def user_of(self, token: str) -> str | None:
        """Whose token this is, or None for an unknown or expired one."""
        found = await self.details(token)
        return found["user"] if found is not None else None

    async def redeem(self, token: str) -> bool:
        """Use the token up; False when someone else just did."""
        return bool(await self._backend.delete(PREFIX + token))
