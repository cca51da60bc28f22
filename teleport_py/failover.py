"""A client endpoint over several addresses of one service (the Auth servers
of ``teleport.auth_servers``): each connection goes to the address that
answered last, and to the next ones in turn when it does not connect.

Only connecting fails over: a request sent on a connection that then broke
is its caller's to retry, since it may have been applied.
"""
from __future__ import annotations

from typing import Sequence

from twisted.internet import error
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

#: A dead address must not hold a connection up for long before the next is tried.
CONNECT_TIMEOUT = 5.0


@implementer(IStreamClientEndpoint)
class FailoverEndpoint:
    def __init__(self, reactor, addresses: Sequence[tuple[str, int]], timeout: float = CONNECT_TIMEOUT):
        if not addresses:
            raise ValueError("a failover endpoint needs at least one address")
        self._endpoints = [(f"{host}:{port}", HostnameEndpoint(reactor, host, port, timeout=timeout))
                           for host, port in addresses]
        self._preferred = 0

    async def _connect(self, factory):
        failures = []
        count = len(self._endpoints)
        # Read once: a concurrent connection may change the preference
        # meanwhile, and reading it again would skip an address and try
        # a failed one twice.
        first = self._preferred
        for step in range(count):
            index = (first + step) % count
            name, endpoint = self._endpoints[index]
            try:
                protocol = await endpoint.connect(factory)
            except (error.ConnectError, error.DNSLookupError, error.TimeoutError) as failure:
                failures.append(f"{name}: {failure}")
                continue
            if index != self._preferred:
                log.warn("{name} answered; it is used from now on", name=name)
                self._preferred = index
            return protocol
        raise error.ConnectError(string="no address answered: " + "; ".join(failures))

    def connect(self, factory):
        return ensureDeferred(self._connect(factory))
