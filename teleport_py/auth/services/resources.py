"""The generic resource calls ``tctl`` makes (``create -f``, ``get``, ``rm``)
for every kind: validated in full, authorized per kind and verb, audited.
Where a kind has rules of its own (a role still assigned cannot go, a
user's password goes with it, kube_servers and proxies only come from heartbeats), its
service supplies them."""
from __future__ import annotations

import json
from typing import Any

import attr

from teleport_py import events
from teleport_py.auth.audit import AuditLog
from teleport_py.auth.authorizer import Authorizer
from teleport_py.auth.errors import AlreadyExists, BadParameter, NotFound
from teleport_py.auth.services import join_tokens, kube_servers, locks, proxies, roles, users
from teleport_py.auth.services.common import Identity, to_json, validated
from teleport_py.auth.services.join_tokens import token_hint
from teleport_py.auth.services.kube_servers import KubeServers
from teleport_py.auth.services.roles import Roles
from teleport_py.auth.services.users import Users
from teleport_py.resources import KubeServer, ProxyServer, Role, Token, User, resource_to_dict
from teleport_py.resources.lock import Lock

#: Each kind's key prefix in the backend, as its service keeps it.
PREFIXES = {
    "role": roles.PREFIX,
    "user": users.PREFIX,
    "token": join_tokens.PREFIX,
    "kube_server": kube_servers.PREFIX,
    "lock": locks.PREFIX,
    "proxy": proxies.PREFIX,
}
KINDS = tuple(PREFIXES)


def _kind_of(resource) -> str:
    kind = {Role: "role", User: "user", Token: "token", KubeServer: "kube_server", ProxyServer: "proxy",
            Lock: "lock"}.get(type(resource))
    if kind is None:
        raise BadParameter(f"{type(resource).__name__} resources cannot be created with tctl create "
                           "(access requests: tsh request create)")
    return kind


def _key(kind: str, name: str) -> str:
    if kind not in KINDS:
        raise BadParameter(f"unsupported resource kind {kind!r} (supported: {', '.join(KINDS)})")
    if not name or "/" in name:
        raise BadParameter(f"invalid resource name {name!r}")
    return PREFIXES[kind] + name


@attr.s(frozen=True, auto_attribs=True)
class Resources:
    _backend: Any
    _authorizer: Authorizer
    _roles: Roles
    _users: Users
    _kube_servers: KubeServers
    _audit: AuditLog

    async def list(self, caller: Identity, kind: str) -> list[dict[str, Any]]:
        await self._authorizer.check(caller, kind, "list")
        prefix = _key(kind, "x")[:-1]
        return [json.loads(item.value) for item in await self._backend.get_range(prefix)]

    async def get(self, caller: Identity, kind: str, name: str) -> dict[str, Any]:
        await self._authorizer.check(caller, kind, "read")
        if kind == "kube_server":
            return await self._kube_servers.get(name)
        item = await self._backend.get(_key(kind, name))
        if item is None:
            raise NotFound(f'{kind} "{name}" not found')
        return json.loads(item.value)

    async def upsert(self, caller: Identity, doc: dict[str, Any], force: bool = False) -> dict[str, Any]:
        """``tctl create``: validate fully, then create (or overwrite with force)."""
        resource = validated(doc)
        kind = _kind_of(resource)
        if kind == "kube_server":
            raise BadParameter("kube_server resources are created by Kubernetes service heartbeats")
        if kind == "proxy":
            raise BadParameter("proxy resources are created by proxy heartbeats")
        await self._authorizer.check(caller, kind, "create")
        if force:
            await self._authorizer.check(caller, kind, "update")
        if kind == "user":
            await self._roles.require_exist(resource.roles)
        actor = self._authorizer.actor(caller)
        if kind == "lock":
            # Who created it is the caller, whatever the file says.
            resource = attr.evolve(resource, created_by=actor)
        key = _key(kind, resource.name)
        value = to_json(resource_to_dict(resource))
        expires = resource.expires.timestamp() if kind == "token" or (kind == "lock" and resource.expires) else None
        if force:
            existing = await self._backend.get(key)
            await self._backend.put(key, value, expires=expires)
            created = existing is None
        else:
            created = await self._backend.create(key, value, expires=expires) is not None
            if not created:
                raise AlreadyExists(f'{kind} "{resource.name}" already exists; use --force to overwrite it')
        if kind == "role":
            await self._audit.emit(events.ROLE_CREATED, user=actor, name=resource.name)
        elif kind == "user":
            await self._audit.emit(events.USER_CREATE if created else events.USER_UPDATE, user=actor, name=resource.name)
        elif kind == "token":
            await self._audit.emit(events.JOIN_TOKEN_CREATE, user=actor, name=token_hint(resource.name))
        elif kind == "lock":
            await self._audit.emit(events.LOCK_CREATED, user=actor, name=resource.name,
                                   target_user=resource.user or None, target_role=resource.role or None,
                                   message=resource.message or None,
                                   expires=resource.expires.isoformat() if resource.expires is not None else None)
        return {"kind": kind, "name": resource.name, "created": created}

    async def delete(self, caller: Identity, kind: str, name: str) -> None:
        await self._authorizer.check(caller, kind, "delete")
        if kind == "role":
            holder = await self._users.holder_of_role(name)
            if holder is not None:
                raise BadParameter(f'role "{name}" is still assigned to user "{holder}"')
        if kind == "kube_server":
            await self._kube_servers.delete(name)
        elif not await self._backend.delete(_key(kind, name)):
            raise NotFound(f'{kind} "{name}" not found')
        actor = self._authorizer.actor(caller)
        if kind == "role":
            await self._audit.emit(events.ROLE_DELETED, user=actor, name=name)
        elif kind == "user":
            await self._users.forget_password(name)
            await self._audit.emit(events.USER_DELETE, user=actor, name=name)
        elif kind == "token":
            await self._audit.emit(events.JOIN_TOKEN_DELETE, user=actor, name=token_hint(name))
        elif kind == "lock":
            await self._audit.emit(events.LOCK_DELETED, user=actor, name=name)
