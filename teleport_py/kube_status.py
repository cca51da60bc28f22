"""Kubernetes ``Status`` answers: the one place their body and head are built.

kubectl and the other clients print ``message`` from a ``metav1.Status``
body, so a refusal written this way reads like one from the API server
itself. The proxy (no agent for a cluster) and the agent (denials, bad
requests, an unreachable API server) answer with it, over HTTP/1.1 and
HTTP/2.

Every answer carries the status code's HTTP reason phrase on HTTP/1.1
(``403 Forbidden``): clients built on urllib3, such as the official Python
client, show it as the error's ``reason`` and have nothing else to show
when the body is not read.

A refusal of a discovery request is sent as plain text instead (``text``):
client-go reads discovery answers raw and shows an error's body only when
its type is ``text/*``; for JSON, the API server's own Status included,
kubectl prints ``Error from server (Forbidden): unknown``.
"""
from __future__ import annotations

import json
from http import HTTPStatus

import attrs
import h11

#: Kubernetes' ``StatusReason`` for the codes we answer with (what
#: ``k8s.io/apimachinery/pkg/api/errors`` gives each code).
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "RequestEntityTooLarge",
    429: "TooManyRequests",
    500: "InternalError",
    502: "ServiceUnavailable",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def _default_reason(code: int) -> str:
    return _REASONS.get(code, "Unknown")


def reason_phrase(code: int) -> bytes:
    """The HTTP reason phrase of ``code`` (``Forbidden``), for HTTP/1.1
    status lines: HTTP/2 carries none, so a response relayed from it needs one."""
    try:
        return HTTPStatus(code).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


@attrs.frozen
class KubeStatus:
    """One ``Status`` answer: ``status: Failure``, ``code``, ``reason``, ``message``.

    ``details`` says which object was refused, as the API server's own
    Forbidden answers do (``{"name", "group", "kind"}``)."""

    code: int
    message: str
    #: Kubernetes' StatusReason; by default the one the API server gives ``code``.
    reason: str | None = None
    details: dict | None = None
    #: The message alone as ``text/plain``, for clients that show only text.
    text: bool = False

    @property
    def phrase(self) -> bytes:
        return reason_phrase(self.code)

    def body(self) -> bytes:
        """The ``Status`` object as UTF-8 JSON (the message line, when ``text``)."""
        if self.text:
            return self.message.encode("utf-8") + b"\n"
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason or _default_reason(self.code),
            "code": self.code,
        }
        if self.details is not None:
            status["details"] = self.details
        return json.dumps(status).encode("utf-8")

    def headers(self, body: bytes) -> list[tuple[bytes, bytes]]:
        """What the API server sends with a Status: the JSON content type,
        the length, ``X-Content-Type-Options: nosniff``, and ``Retry-After``
        when the details say when to retry (client-go then retries by itself)."""
        content_type = b"text/plain; charset=utf-8" if self.text else b"application/json"
        headers = [(b"content-type", content_type), (b"x-content-type-options", b"nosniff"),
                   (b"content-length", b"%d" % len(body))]
        retry_after = (self.details or {}).get("retryAfterSeconds")
        if isinstance(retry_after, int) and retry_after > 0:
            headers.append((b"retry-after", b"%d" % retry_after))
        return headers

    def h11_events(self) -> tuple:
        """The answer as h11 events (a front end writes them in its protocol)."""
        body = self.body()
        return (h11.Response(status_code=self.code, reason=self.phrase, headers=self.headers(body)),
                h11.Data(data=body), h11.EndOfMessage())

    def http11(self, *, close: bool = True) -> bytes:
        """A complete HTTP/1.1 response, ``Connection: close`` unless told otherwise."""
        body = self.body()
        headers = self.headers(body) + ([(b"connection", b"close")] if close else [])
        head = b"HTTP/1.1 %d %s\r\n" % (self.code, self.phrase)
        return head + b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n" + body

    def h2_headers(self, body: bytes) -> list[tuple[bytes, bytes]]:
        """The HTTP/2 header list (no reason phrase exists in HTTP/2)."""
        return [(b":status", b"%d" % self.code), *self.headers(body)]
