"""Browser sessions, kept by Auth in the backend so that any proxy of the
cluster honours a cookie another proxy set (as Teleport's web sessions).

A session is what a browser's cookie names: the user, the certificate Auth
issued at sign-in (the proxy forwards it to Auth on each of the session's
calls, exactly as it forwards a tsh user's own certificate, so Auth applies
the same role rules), and when it ends: no later than that certificate (Auth
refuses an expired forwarded certificate anyway, and the record expires at
the same moment). The certificate's private key is never kept: Auth checks
the certificate, not possession of its key, and nothing else is done with it.

The session id is 256 random bits (``secrets``) and never leaves the proxy
but in the cookie: Auth stores and is asked for the SHA-256 of it
(``session_key``). The CSRF token is derived from the id (another SHA-256,
with its own label), so every proxy computes the same one and nothing more
is stored; the page reads it, and it reveals nothing of the HttpOnly cookie.

How many sessions live at once is bounded by Auth's login throttle and the
certificates' lifetime, not by a proxy's memory.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import attr

from teleport_py.auth.errors import NotFound

_CSRF_LABEL = b"teleport_py web session csrf\x00"


def session_key(session_id: str) -> str:
    """What Auth stores a session under: the SHA-256 of its id, in hex."""
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


def csrf_token_for(session_id: str) -> str:
    digest = hashlib.sha256(_CSRF_LABEL + session_id.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@attr.s(frozen=True, auto_attribs=True)
class WebSession:
    user: str
    #: PEM of the user certificate Auth issued at sign-in.
    certificate_pem: bytes
    #: When the certificate (and so the session) ends, reactor seconds.
    expires: float
    csrf_token: str

    def csrf_matches(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode("utf-8", "replace"),
                                                          self.csrf_token.encode("ascii"))


class WebSessions:
    """``store`` is the proxy's Auth client (``create_web_session``,
    ``get_web_session``, ``delete_web_session``)."""

    def __init__(self, clock, store) -> None:
        self._clock = clock
        self._store = store

    async def create(self, certificate_pem: bytes) -> tuple[str, WebSession]:
        """A new session for the certificate's user (Auth reads the user and the end from it)."""
        session_id = secrets.token_urlsafe(32)
        record = await self._store.create_web_session(session_key(session_id), certificate_pem.decode("ascii"))
        return session_id, self._session(session_id, record)

    async def get(self, session_id: str | None) -> WebSession | None:
        """The live session with this id, or None (unknown, ended or expired)."""
        if not session_id:
            return None
        try:
            record = await self._store.get_web_session(session_key(session_id))
        except NotFound:
            return None
        session = self._session(session_id, record)
        if session.expires <= self._clock.seconds():
            return None
        return session

    async def end(self, session_id: str | None) -> None:
        if session_id:
            await self._store.delete_web_session(session_key(session_id))

    @staticmethod
    def _session(session_id: str, record: dict) -> WebSession:
        return WebSession(record["user"], record["cert"].encode("ascii"), float(record["expires"]),
                          csrf_token_for(session_id))
