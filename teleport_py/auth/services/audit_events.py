"""The audit log as callers reach it: agents upload their spooled events,
users and admins search. Storage is ``auth.audit.AuditLog``."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import attr

from teleport_py.auth.audit import AuditLog, InvalidCursor
from teleport_py.auth.authorizer import Authorizer
from teleport_py.auth.errors import BadParameter
from teleport_py.auth.services.common import Identity


@attr.s(frozen=True, auto_attribs=True)
class AuditEvents:
    _authorizer: Authorizer
    _audit: AuditLog

    async def append(self, caller: Identity, batch: list[dict[str, Any]]) -> int:
        """Store a batch from a cluster service, stamped with its host id."""
        host = self._authorizer.require_system_role(caller, "kube", "proxy")
        if not all(isinstance(event, dict) for event in batch):
            raise BadParameter("events must be objects")
        try:
            await self._audit.append_all([{**event, "server_id": host.host_id} for event in batch])
        except (ValueError, KeyError) as e:
            raise BadParameter(str(e)) from None
        return len(batch)

    async def search(
        self, caller: Identity, start: datetime, end: datetime, types: list[str], limit: int, user: str = ""
    ) -> list[dict[str, Any]]:
        return (await self.search_page(caller, start, end, types, limit, user))[0]

    async def search_page(
        self, caller: Identity, start: datetime, end: datetime, types: list[str], limit: int, user: str = "",
        after: str = "",
    ) -> tuple[list[dict[str, Any]], str]:
        """One page and the next page's cursor (``""``: none), by the
        caller's ``event`` ``list`` rule, checked for every page."""
        await self._authorizer.check(caller, "event", "list")
        try:
            return await self._audit.search_page(start, end, types, limit, user, after)
        except InvalidCursor as e:
            raise BadParameter(str(e)) from None
