"""Client connections that do not log at info level.

Twisted's factories log "Starting factory ..." and "Stopping factory ..." at
info level for every connection they make (``Factory.noisy``): an agent
makes one per API server connection and per connection to Auth, which
buried every other line of its log. These are the same things, quiet.
"""
from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory


class _OneProtocol(Factory):
    noisy = False

    def __init__(self, protocol):
        self._protocol = protocol

    def buildProtocol(self, addr):
        return self._protocol


def factory_for(protocol) -> Factory:
    """A factory that hands out this one protocol instance."""
    return _OneProtocol(protocol)


def connect_protocol(endpoint, protocol) -> Deferred:
    """``twisted.internet.endpoints.connectProtocol``, without its log lines."""
    return endpoint.connect(_OneProtocol(protocol))


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    noisy = False


class QuietHTTPConnectionPool(HTTPConnectionPool):
    """An HTTPConnectionPool whose connections are made without log lines
    (``_factory`` is the pool's documented hook for its connection factory)."""

    _factory = _QuietHTTP11ClientFactory
