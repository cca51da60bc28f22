"""The two sides of one forwarded request, as each sees the other.

A front end (kube/http1.py: one HTTP/1.1 connection; kube/http2.py: one
HTTP/2 stream) is the `Downstream` of an exchange with the API server
(kube/upstream.py, kube/upstream_h2.py); the exchange is the front end's
`Upstream`. Events are h11's; each front end writes them in its own
protocol. Kept apart from both so neither imports the other.
"""
from __future__ import annotations

from typing import Protocol as Interface, Sequence

import h11

from teleport_py.kube.bodyframing import ChunkedBody, ContentLengthBody
from teleport_py.kube_status import KubeStatus


class Upstream(Interface):
    """One request's exchange with the API server, as kubectl's side drives it."""

    def request_data(self, data: bytes) -> None:
        """Request body bytes from kubectl."""

    def request_done(self) -> None:
        """kubectl's request ended."""

    def downstream_lost(self) -> None:
        """kubectl has gone: cancel the exchange."""


class Downstream(Interface):
    """kubectl's side of one request, as its upstream exchange sees it."""

    upstream: Upstream | None
    #: kubectl has gone: nothing more is written.
    closed: bool
    #: An unfiltered body may go as the API server framed it (HTTP/1.1 only).
    passes_framing: bool
    #: Part of a response has been written: a Status can no longer replace it.
    response_started: bool

    def send(self, *events) -> None: ...

    def send_framed(self, head: Sequence, body: bytes, framing: ChunkedBody | ContentLengthBody,
                    end: bool) -> None: ...

    def respond_status(self, status: KubeStatus) -> None:
        """Answer with ``status`` (or cut kubectl off if a response has started)."""

    def throttle(self, upstream_transport) -> None:
        """Each side pauses the other while it cannot take more."""

    def unthrottle(self) -> None:
        """The exchange no longer reads or writes: undo ``throttle``."""

    def abort(self) -> None:
        """Cut kubectl off: its response cannot be completed."""

    def upstream_finished(self) -> None: ...

    def switch_to_relay(self, upstream, response: h11.InformationalResponse, pending: bytes) -> None:
        """After a 101 (HTTP/1.1 only: HTTP/2 requests never upgrade)."""

    def session_ended(self) -> None:
        """The API server's side of a relayed session closed."""
