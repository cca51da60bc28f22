"""Users' OTP devices (``second_factor: otp``): ``/otp_devices/<user>``
``{secret, last_step}``. A device is registered at sign-up with a first valid
code; every later code must be for a step after the last one taken, recorded
with compare-and-swap, so a code is never taken twice, even by two Auth
servers on one backend at once. Secrets stay in the backend: never logged,
never answered to anyone but the proxy's sign-up page."""
from __future__ import annotations

import json
from typing import Any

import attr

from teleport_py.auth import totp
from teleport_py.auth.services.common import to_json

PREFIX = "/otp_devices/"


@attr.s(frozen=True, auto_attribs=True)
class OtpDevices:
    _backend: Any
    _clock: Any

    async def register(self, username: str, secret: str, step: int) -> None:
        """Store the user's device, ``step`` the one its first code (checked
        at sign-up) was for; replaces an earlier device (a reset user
        registers again)."""
        await self._backend.put(PREFIX + username, to_json({"secret": secret, "last_step": step}))

    async def take(self, username: str, code: str) -> bool:
        """Whether ``code`` is the user's device's, for a step not taken
        before; taking it records that step."""
        while True:
            item = await self._backend.get(PREFIX + username)
            if item is None:
                return False
            device = json.loads(item.value)
            step = totp.match(device["secret"], code, self._clock.seconds(), device["last_step"])
            if step is None:
                return False
            updated = to_json({**device, "last_step": step})
            if await self._backend.compare_and_swap(PREFIX + username, item.value, updated) is not None:
                return True

    async def forget(self, username: str) -> None:
        await self._backend.delete(PREFIX + username)
