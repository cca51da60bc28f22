"""The ``proxy`` resource (kind ``proxy``, version ``v2``) as a value object.

Each proxy heartbeats one of these (Teleport's proxy heartbeat): its host id
as the name, the address agents dial for a reverse tunnel and the address
users reach. Agents learn the cluster's proxies from them (through a proxy's
``discovery`` stream) and keep a tunnel to each; ``tctl get proxies`` lists
them. A record expires with its TTL, so a proxy that stopped heartbeating
leaves the list.
"""
from __future__ import annotations

from datetime import datetime

import attrs


@attrs.frozen
class ProxyServer:
    #: The proxy's host id, as its host certificate names it.
    name: str
    hostname: str
    #: ``host:port`` agents dial for a reverse tunnel to this proxy.
    tunnel_addr: str
    #: ``host:port`` users and tsh reach (a load balancer in front of several proxies, or this proxy).
    public_addr: str
    version: str = ""
    expires: datetime | None = None
