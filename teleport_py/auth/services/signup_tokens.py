"""Sign-up tokens: a new (or reset) user sets a password with one, once.
Stored as ``/usertokens/<token>`` ``{user, expires}``, expiring with the token."""
from __future__ import annotations

import json
import secrets
from typing import Any

import attr

from teleport_py import events
from teleport_py.auth.services.common import to_json

PREFIX = "/usertokens/"
SIGNUP_TOKEN_TTL = 3600.0


@attr.s(frozen=True, auto_attribs=True)
class SignupTokens:
    _backend: Any
    _clock: Any

    async def create(self, username: str) -> dict[str, Any]:
        token = secrets.token_hex(16)
        expires = self._clock.seconds() + SIGNUP_TOKEN_TTL
        await self._backend.put(PREFIX + token, to_json({"user": username, "expires": expires}), expires=expires)
        return {"token": token, "user": username, "expires": events.rfc3339(expires), "ttl": SIGNUP_TOKEN_TTL}

    async def user_of(self, token: str) -> str | None:
        """Whose token this is, or None for an unknown or expired one."""
        item = await self._backend.get(PREFIX + token) if token else None
        return json.loads(item.value)["user"] if item is not None else None

    async def redeem(self, token: str) -> bool:
        """Use the token up; False when someone else just did."""
        return bool(await self._backend.delete(PREFIX + token))
