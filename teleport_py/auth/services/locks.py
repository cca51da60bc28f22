"""Locks, stored as ``/locks/<id>`` (expiring with the lock's ``expires``).

``tctl lock --user=NAME|--role=NAME [--message] [--ttl]`` creates one;
``tctl get locks`` and ``tctl rm lock/ID`` go through the generic resource
calls. While a lock is in force, Auth refuses its target logins, certificate
reissues and access requests (``check``); agents read the list (``list``,
polled) and end the target's kube connections."""
from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any, Iterable

import attrs

from teleport_py import events
from teleport_py.auth.audit import AuditLog
from teleport_py.auth.authorizer import Authorizer
from teleport_py.auth.errors import AccessDenied, BadParameter
from teleport_py.auth.services.common import Identity, to_json, utc_now, validated
from teleport_py.pki import HostIdentity
from teleport_py.resources import resource_from_dict, resource_to_dict
from teleport_py.resources.lock import Lock

PREFIX = "/locks/"
MAX_MESSAGE = 1024


@attrs.frozen
class Locks:
    _reactor: Any
    _backend: Any
    _authorizer: Authorizer
    _audit: AuditLog

    async def in_force(self) -> list[Lock]:
        return [resource_from_dict(json.loads(item.value)) for item in await self._backend.get_range(PREFIX)]

    async def check(self, username: str, roles: Iterable[str]) -> None:
        """Refuse (AccessDenied with the lock's message) a user a lock targets."""
        roles = tuple(roles)
        for lock in await self.in_force():
            if lock.targets(username, roles):
                raise AccessDenied(lock.describe())

    async def create(self, caller: Identity, *, user: str = "", role: str = "", message: str = "",
                     ttl: float | None = None) -> dict[str, Any]:
        await self._authorizer.check(caller, "lock", "create")
        if bool(user) == bool(role):
            raise BadParameter("name exactly one target: --user=NAME or --role=NAME")
        if len(message) > MAX_MESSAGE:
            raise BadParameter(f"message: at most {MAX_MESSAGE} characters")
        now = utc_now(self._reactor).replace(microsecond=0)
        expires = now + timedelta(seconds=ttl) if ttl else None
        doc = resource_to_dict(Lock(name=str(uuid.uuid4()), user=user, role=role, message=message,
                                    created_by=self._authorizer.actor(caller), created=now, expires=expires))
        lock = validated(doc, "lock")  # the target names checked like any lock's
        await self._backend.put(PREFIX + lock.name, to_json(doc),
                                expires=expires.timestamp() if expires is not None else None)
        await self._audit.emit(events.LOCK_CREATED, user=lock.created_by, name=lock.name,
                               target_user=user or None, target_role=role or None, message=message or None,
                               expires=expires.isoformat() if expires is not None else None)
        return doc

    async def list(self, caller: Identity) -> list[dict[str, Any]]:
        """Every lock in force: for agents (which end locked users' sessions)
        and for callers with a ``lock`` list rule."""
        if not (isinstance(caller, HostIdentity) and caller.system_role == "kube"):
            await self._authorizer.check(caller, "lock", "list")
        return [resource_to_dict(lock) for lock in await self.in_force()]
