"""The join ``token`` resource (kind ``token``, version ``v2``) as a value object.

An agent presents the token's name once to join the cluster and get a host
certificate for the system roles listed here. The name is the secret, so it
is kept out of ``repr`` (and therefore out of logs and tracebacks).
"""
from __future__ import annotations

from datetime import datetime
from typing import Mapping

import attrs

#: Teleport's system roles a join token may grant (we only run ``Kube`` agents).
TOKEN_ROLES = ("Auth", "Node", "Proxy", "Kube", "App", "Db", "WindowsDesktop", "Discovery", "Bot", "Instance")

#: The only join method implemented: present the secret name.
JOIN_METHODS = ("token",)


@attrs.frozen
class Token:
    name: str = attrs.field(repr=lambda _: "'<redacted>'")
    roles: tuple[str, ...]
    expires: datetime
    labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    join_method: str = "token"
