"""Roles, stored as ``/roles/<name>``; the built-in ones are written on
first start (``create``: an edited built-in role is never overwritten)."""
from __future__ import annotations

import json
from typing import Any, Iterable

import attr

from teleport_py.auth.errors import BadParameter
from teleport_py.auth.services.common import to_json
from teleport_py.resources import BUILTIN_ROLES, Role, resource_from_dict, resource_to_dict

PREFIX = "/roles/"


@attr.s(frozen=True, auto_attribs=True)
class Roles:
    _backend: Any

    async def install_builtin(self) -> None:
        for role in BUILTIN_ROLES.values():
            await self._backend.create(PREFIX + role.name, to_json(resource_to_dict(role)))

    async def get_many(self, names: Iterable[str]) -> list[Role]:
        """The roles that exist among ``names`` (a role deleted since a
        certificate named it grants nothing)."""
        roles = []
        for name in names:
            item = await self._backend.get(PREFIX + name)
            if item is not None:
                roles.append(resource_from_dict(json.loads(item.value)))
        return roles

    async def require_exist(self, names: Iterable[str]) -> None:
        for name in names:
            if await self._backend.get(PREFIX + name) is None:
                raise BadParameter(f'role "{name}" does not exist')

    async def count(self) -> int:
        return len(await self._backend.get_range(PREFIX))
