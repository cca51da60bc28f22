"""etcd v3's JSON gateway (grpc-gateway) over treq: unary calls and the watch
stream, to a list of peers, optionally with a TLS client certificate.

Keys and values travel base64-encoded and 64-bit integers as strings; this
module only moves JSON objects, ``etcd.py`` gives them meaning. A call that
could not connect to one peer is tried on the next (nothing was sent, so
nothing can apply twice). A read (``call(..., read=True)``) that got no
answer, or etcd's "unavailable" (code 14: leader changed, no leader), is
tried again on the next peer after a short wait, for longer than an etcd
election takes; any other failure, and any failure of a write (it may have
applied), is the caller's to see.
"""

from __future__ import annotations

import json
from typing import Sequence
from urllib.parse import urlsplit

import attrs
from cryptography import x509
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import error as internet_error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.web.client import Agent, ResponseFailed, ResponseNeverReceived
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from teleport_py.backend.interface import BackendUnavailableError
from teleport_py.bounded_body import BodyTooLarge, read_bounded
from teleport_py.pki import client_tls_options
from teleport_py.quiet import QuietHTTPConnectionPool

#: No unary call may hang forever (the watch stream has no deadline).
DEFAULT_TIMEOUT = 30.0
#: A unary answer larger than this is refused (a get_range of a huge prefix
#: is the only thing that could come near).
MAX_RESPONSE = 256 << 20

#: etcd's (gRPC's) code for "unavailable": no leader, or the leader changed
#: while the request was proposed.
UNAVAILABLE = 14
#: Waits before each retry of a read: together (3.85 s) longer than an etcd
#: election (at most two election timeouts, 2 s with etcd's defaults).
READ_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0)

_NOT_CONNECTED = (
    internet_error.ConnectError,
    internet_error.ConnectingCancelledError,
    internet_error.DNSLookupError,
)


class EtcdError(Exception):
    """etcd answered with an error: ``code`` is the gRPC status code."""

    def __init__(self, code: int, message: str):
        super().__init__(f"etcd: {message} (code {code})")
        self.code = code
        self.message = message


class EtcdUnavailable(BackendUnavailableError):
    """etcd cannot answer now: no peer could be reached, a peer gave no
    answer, or it has no leader (code 14). ``retryable`` is false for a
    refused TLS handshake: trying again cannot help."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


@attrs.frozen
class EtcdTLS:
    """What a client shows etcd and trusts it with (parsed, not paths)."""

    trusted_cas: tuple[x509.Certificate, ...]
    certificate: x509.Certificate
    private_key: object = attrs.field(repr=False)


@implementer(IPolicyForHTTPS)
class _PeerTLSPolicy:
    """Each peer must chain to the configured CA and carry its own host name
    or IP address; our client certificate goes with every connection."""

    def __init__(self, tls: EtcdTLS):
        self._tls = tls

    def creatorForNetloc(self, hostname, port):
        return client_tls_options(
            hostname.decode("ascii"),
            trusted_cas=self._tls.trusted_cas,
            certificate=self._tls.certificate,
            private_key=self._tls.private_key,
        )


def check_peer(peer: str, tls: EtcdTLS | None) -> str:
    """A peer URL without a trailing slash; https needs ``tls``."""
    parts = urlsplit(peer)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"etcd peer {peer!r} is not http(s)://host:port")
    if parts.scheme == "https" and tls is None:
        raise ValueError(f"etcd peer {peer!r} is https but no TLS certificates were given")
    if parts.scheme == "http" and tls is not None:
        raise ValueError(f"etcd peer {peer!r} is plain http although TLS certificates were given")
    return peer.rstrip("/")


async def _read(response, limit: int) -> bytes:
    try:
        return await read_bounded(response, limit)
    except BodyTooLarge:
        raise EtcdError(8, f"answer larger than {limit} bytes") from None


class Gateway:
    """JSON calls to the first peer that answers; the peer that last
    connected is tried first next time."""

    def __init__(self, reactor, peers: Sequence[str], tls: EtcdTLS | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, max_response: int = MAX_RESPONSE):
        if not peers:
            raise ValueError("etcd needs at least one peer")
        self._reactor = reactor
        self._peers = [check_peer(peer, tls) for peer in peers]
        self._pool = QuietHTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 4
        agent = Agent(reactor, contextFactory=_PeerTLSPolicy(tls), pool=self._pool) if tls else Agent(reactor, pool=self._pool)
        self._http = HTTPClient(agent)
        self._timeout = timeout
        self._max_response = max_response

    async def _post(self, path: str, body: dict, **kwargs):
        last: Exception | None = None
        for attempt in range(len(self._peers)):
            peer = self._peers[0]
            try:
                return await self._http.post(peer + path, data=json.dumps(body).encode(), **kwargs)
            except _NOT_CONNECTED as failure:
                last = failure
                self._peers.append(self._peers.pop(0))
            except (ResponseNeverReceived, ResponseFailed) as failure:
                # Maybe applied, so not tried elsewhere; a refused TLS
                # handshake ends here too, and says so.
                reasons = "; ".join(str(reason.value) for reason in failure.reasons)
                refused = any(reason.check(SSL.Error) for reason in failure.reasons)
                raise EtcdUnavailable(f"etcd peer {peer} gave no answer: {reasons[:300]}", retryable=not refused) from None
        raise EtcdUnavailable(f"no etcd peer reachable ({last})")

    async def call(self, path: str, body: dict, *, read: bool = False) -> dict:
        """POST ``body`` to ``/v3/<path>``; the answer as a dict, or
        EtcdError (EtcdUnavailable). ``read``: the call changes nothing, so
        one that etcd could not answer is tried again (READ_RETRY_DELAYS)."""
        for delay in (*READ_RETRY_DELAYS, None) if read else (None,):
            try:
                return await self._call_once(path, body)
            except EtcdUnavailable as failure:
                if delay is None or not failure.retryable:
                    raise
                self._peers.append(self._peers.pop(0))
                await deferLater(self._reactor, delay)
        raise AssertionError("unreachable")

    async def _call_once(self, path: str, body: dict) -> dict:
        response = await self._post("/v3/" + path, body, timeout=self._timeout)
        return _answer(response.code, await _read(response, self._max_response))

    async def stream(self, path: str, body: dict, on_data) -> "Stream":
        """POST ``body`` and feed the streamed answer to ``on_data``; fires
        once the answer began (an exception raised by ``on_data`` aborts the
        stream and fails ``Stream.ended``)."""
        response = await self._post("/v3/" + path, body, unbuffered=True)
        if response.code != 200:
            _answer(response.code, await _read(response, 1 << 16))
            raise EtcdError(2, f"stream answered HTTP {response.code}")
        stream = Stream(on_data)
        response.deliverBody(stream)
        return stream

    def close(self) -> Deferred:
        return self._pool.closeCachedConnections()


def _answer(status: int, body: bytes) -> dict:
    try:
        answer = json.loads(body)
    except ValueError:
        raise EtcdError(2, f"unreadable answer (HTTP {status})") from None
    if not isinstance(answer, dict):
        raise EtcdError(2, f"unexpected answer (HTTP {status})")
    if status != 200 or "error" in answer:
        code = answer.get("code")
        message = answer.get("message") or answer.get("error")
        if code == UNAVAILABLE:
            raise EtcdUnavailable(f"etcd: {str(message)[:500]} (code {code})")
        raise EtcdError(code if isinstance(code, int) else 2, str(message)[:500])
    return answer


class Stream(Protocol):
    """A streamed answer: ``ended`` fires when it ends; ``abort()`` ends it."""

    def __init__(self, on_data):
        self._on_data = on_data
        self.ended: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.ended.called:
            return
        try:
            self._on_data(data)
        except Exception:
            self.ended.errback()
            self.transport.stopProducing()

    def connectionLost(self, reason=connectionDone) -> None:
        if not self.ended.called:
            self.ended.errback(reason)

    def abort(self, reason: Exception | None = None) -> None:
        if not self.ended.called:
            self.ended.errback(reason or CancelledError("stream aborted"))
        if self.transport is not None:
            self.transport.stopProducing()
