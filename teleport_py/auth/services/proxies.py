"""Proxies as they heartbeat themselves: ``/proxies/<host id>``, each
expiring with its TTL (Teleport's proxy heartbeat), or at once when the
proxy stops cleanly (its goodbye). Agents learn the
cluster's proxies from this list, through a proxy."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import attr
import attrs

from teleport_py.auth.authorizer import Authorizer
from teleport_py.auth.errors import AccessDenied
from teleport_py.auth.services.common import Identity, to_json, validated
from teleport_py.resources import resource_to_dict

PREFIX = "/proxies/"
#: Three missed heartbeats (the proxy sends one every 10 s) and a proxy leaves the list.
PROXY_TTL = 30.0


@attr.s(frozen=True, auto_attribs=True)
class Proxies:
    _clock: Any
    _backend: Any
    _authorizer: Authorizer

    async def heartbeat(self, caller: Identity, doc: dict[str, Any]) -> None:
        host = self._authorizer.require_system_role(caller, "proxy")
        proxy = validated(doc, "proxy")
        if proxy.name != host.host_id:
            raise AccessDenied("a proxy may only heartbeat itself")
        expires = self._clock.seconds() + PROXY_TTL
        proxy = attrs.evolve(proxy, expires=datetime.fromtimestamp(int(expires), timezone.utc))
        await self._backend.put(f"{PREFIX}{proxy.name}", to_json(resource_to_dict(proxy)), expires=expires)

    async def goodbye(self, caller: Identity) -> None:
        """A proxy stopping cleanly: forget its own record now rather than
        when the heartbeat's TTL runs out (the host id is its certificate's)."""
        host = self._authorizer.require_system_role(caller, "proxy")
        await self._backend.delete(f"{PREFIX}{host.host_id}")

    async def list(self, caller: Identity) -> list[dict[str, Any]]:
        """Every proxy whose heartbeat is live."""
        self._authorizer.require_system_role(caller, "proxy")
        return [json.loads(item.value) for item in await self._backend.get_range(PREFIX)]

