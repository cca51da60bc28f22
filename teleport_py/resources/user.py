"""The ``user`` resource (kind ``user``, version ``v2``) as a value object.

A user's roles say what it may do; its traits (``kubernetes_groups``,
``kubernetes_users``, ``logins``, or anything an identity provider sent) fill
the ``{{internal.x}}`` / ``{{external.x}}`` templates of those roles. Password
hashes and MFA devices are credentials, not part of this resource: they never
travel through ``tctl get``.
"""
from __future__ import annotations

from typing import Mapping

import attrs


@attrs.frozen
class User:
    name: str
    roles: tuple[str, ...] = ()
    traits: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, hash=False)
    labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)
