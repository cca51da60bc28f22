"""Users and their passwords: ``/users/<name>`` (the user resource) and
``/passwords/<name>`` (its scrypt hash, text). A user is created without a
password and sets one with a sign-up token (``signup_tokens``)."""
from __future__ import annotations

import json
from typing import Any

import attr
from twisted.internet import threads

from teleport_py import events
from teleport_py.auth import totp
from teleport_py.auth.audit import AuditLog
from teleport_py.auth.authorizer import Authorizer
from teleport_py.auth.errors import AlreadyExists, BadParameter, NotFound
from teleport_py.auth.password_hashing import WeakPassword, check_password_policy, hash_password
from teleport_py.auth.services.common import Identity, to_json, validated
from teleport_py.auth.services.otp_devices import OtpDevices
from teleport_py.auth.services.roles import Roles
from teleport_py.auth.services.signup_tokens import SignupTokens
from teleport_py.resources import User, resource_from_dict, resource_to_dict

PREFIX = "/users/"
PASSWORDS = "/passwords/"


@attr.s(frozen=True, auto_attribs=True)
class Users:
    _reactor: Any
    _backend: Any
    _authorizer: Authorizer
    _roles: Roles
    _signup_tokens: SignupTokens
    _audit: AuditLog
    otp_devices: OtpDevices
    #: ``auth_service.authentication.second_factor``: "off" or "otp".
    second_factor: str = "off"

    # -- for the other services ---------------------------------------------

    async def get(self, name: str) -> User:
        item = await self._backend.get(PREFIX + name)
        if item is None:
            raise NotFound(f'user "{name}" not found')
        return resource_from_dict(json.loads(item.value))

    async def password_hash(self, name: str) -> str | None:
        item = await self._backend.get(PASSWORDS + name)
        return item.value.decode("ascii") if item is not None else None

    async def forget_password(self, name: str) -> None:
        await self._backend.delete(PASSWORDS + name)

    async def holder_of_role(self, role: str) -> str | None:
        """A user the role is assigned to, if any."""
        for item in await self._backend.get_range(PREFIX):
            user = json.loads(item.value)
            if role in user["spec"].get("roles", []):
                return user["metadata"]["name"]
        return None

    async def count(self) -> int:
        return len(await self._backend.get_range(PREFIX))

    # -- callers --------------------------------------------------------------

    async def create(self, caller: Identity, user: User) -> dict[str, Any]:
        """Create a user without a password and return a sign-up token for it."""
        await self._authorizer.check(caller, "user", "create")
        await self._roles.require_exist(user.roles)
        if await self._backend.create(PREFIX + user.name, to_json(resource_to_dict(user))) is None:
            raise AlreadyExists(f'user "{user.name}" already exists')
        token = await self._signup_tokens.create(user.name, otp=self.second_factor == "otp")
        await self._audit.emit(events.USER_CREATE, user=self._authorizer.actor(caller), name=user.name,
                               roles=list(user.roles))
        return token

    async def reset(self, caller: Identity, name: str) -> dict[str, Any]:
        """Forget the user's password and return a sign-up token to set a new one."""
        await self._authorizer.check(caller, "user", "update")
        await self.get(name)
        await self.forget_password(name)
        await self.otp_devices.forget(name)
        return await self._signup_tokens.create(name, otp=self.second_factor == "otp")

    async def signup_user(self, caller: Identity, token: str) -> dict[str, Any]:
        """Whose sign-up token this is, and the OTP device to register with
        it: what the invitation page shows, and how it refuses a used or
        expired token before asking for a password. Proxy only."""
        self._authorizer.require_system_role(caller, "proxy")
        found = await self._signup_tokens.details(token)
        if found is None:
            raise NotFound("sign-up token not found or expired")
        answer = {"user": found["user"]}
        if "otp_secret" in found:
            answer["otp_secret"] = found["otp_secret"]
            answer["otp_uri"] = totp.provisioning_uri(found["otp_secret"], found["user"], self._audit.cluster_name)
        return answer

    async def complete_signup(self, caller: Identity, token: str, password: str, otp_code: str = "") -> str:
        """Set a password with a sign-up token (and register the token's OTP
        device with its first code); the token is single-use."""
        self._authorizer.require_system_role(caller, "proxy")
        found = await self._signup_tokens.details(token)
        if found is None:
            raise NotFound("sign-up token not found or expired")
        username = found["user"]
        try:
            check_password_policy(password)
        except WeakPassword as e:
            raise BadParameter(str(e), field="password") from None
        secret = found.get("otp_secret")
        if secret is not None and not otp_code:
            raise BadParameter("this cluster requires an OTP device: open the invitation link in a browser, add "
                               "the secret it shows to an authenticator app and enter the code it shows", field="otp")
        step = totp.match(secret, otp_code, self._reactor.seconds(), -1) if secret is not None else None
        if secret is not None and step is None:
            raise BadParameter("that OTP code is not the one your authenticator shows now; check the device's clock",
                               field="otp")
        if not await self._signup_tokens.redeem(token):
            raise NotFound("sign-up token not found or expired")
        if secret is not None:
            await self.otp_devices.register(username, secret, step)
        encoded = await threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), hash_password, password)
        await self._backend.put(PASSWORDS + username, encoded.encode("ascii"))
        await self._audit.emit(events.USER_PASSWORD_CHANGE, user=username)
        return username

    async def update(
        self, caller: Identity, name: str, *, roles: list[str] | None = None, traits: dict[str, list[str]] | None = None
    ) -> User:
        await self._authorizer.check(caller, "user", "update")
        while True:
            item = await self._backend.get(PREFIX + name)
            if item is None:
                raise NotFound(f'user "{name}" not found')
            doc = json.loads(item.value)
            if roles is not None:
                await self._roles.require_exist(roles)
                doc["spec"]["roles"] = list(roles)
            if traits is not None:
                merged = dict(doc["spec"].get("traits") or {})
                merged.update(traits)
                doc["spec"]["traits"] = {k: v for k, v in merged.items() if v}
            user = validated(doc, "user")
            new = to_json(resource_to_dict(user))
            if await self._backend.compare_and_swap(PREFIX + name, item.value, new) is not None:
                break
        await self._audit.emit(events.USER_UPDATE, user=self._authorizer.actor(caller), name=name, roles=list(user.roles))
        return user
