"""Who may do what in Auth: users as their roles' ``rules`` say (deny wins),
cluster services by their system role. Every service asks here."""
from __future__ import annotations

from teleport_py.auth.errors import AccessDenied
from teleport_py.auth.services.common import Identity
from teleport_py.auth.services.roles import Roles
from teleport_py.pki import HostIdentity, UserIdentity




class Authorizer:
    def __init__(self, roles: Roles):
        self._roles = roles

    async def check(self, caller: Identity, kind: str, verb: str) -> None:
        """Admin may do anything; users as their roles' ``rules`` say (deny wins);
        other system roles only through the calls reserved for them."""
        if isinstance(caller, HostIdentity):
            if caller.system_role == "admin":
                return
            # Kube agents authorize each kubectl request against the user's
            # roles (named in the user's certificate, traits too): read only.
            if caller.system_role == "kube" and kind == "role" and verb in ("read", "list"):
                return
            raise AccessDenied(f"{caller.system_role} service may not {verb} {kind} resources")
        roles = await self._roles.get_many(caller.roles)

        def matches(rules) -> bool:
            return any(
                (kind in r.resources or "*" in r.resources) and (verb in r.verbs or "*" in r.verbs) for r in rules
            )

        if any(matches(r.deny.rules) for r in roles):
            raise AccessDenied(f"access denied to perform action {verb!r} on {kind!r}")
        if not any(matches(r.allow.rules) for r in roles):
            raise AccessDenied(f"access denied to perform action {verb!r} on {kind!r}")

    @staticmethod
    def require_system_role(caller: Identity, *allowed: str) -> HostIdentity:
        if isinstance(caller, HostIdentity) and caller.system_role in allowed + ("admin",):
            return caller
        raise AccessDenied("this call is reserved for cluster services")

    @staticmethod
    def actor(caller: Identity) -> str:
        """The caller as audit events name it."""
        if isinstance(caller, UserIdentity):
            return caller.username
        return f"{caller.system_role}:{caller.host_id}"
