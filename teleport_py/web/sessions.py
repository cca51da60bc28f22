"""Browser sessions, held by the proxy in memory.

A session is what a browser's cookie names: the user, the certificate Auth
issued at sign-in (the proxy forwards it to Auth on each of the session's
calls, exactly as it forwards a tsh user's own certificate, so Auth applies
the same role rules), when it ends and its CSRF token. It ends no later than
that certificate: Auth refuses an expired forwarded certificate anyway, and
the session is dropped here at the same moment. The certificate's private key
is never kept: Auth checks the certificate, not possession of its key, and
nothing else is done with it.

Ids and CSRF tokens are 256 random bits (``secrets``). A restart of the
proxy ends every session (users sign in again), as sessions are not stored.
The number of sessions is bounded; when full, sign-in is refused rather than
ending someone else's session.
"""
from __future__ import annotations

import hmac
import secrets

import attr

MAX_SESSIONS = 10000


class TooManySessions(Exception):
    """The proxy holds MAX_SESSIONS live sessions."""


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
    def __init__(self, clock, max_sessions: int = MAX_SESSIONS) -> None:
        self._clock = clock
        self._max = max_sessions
        self._sessions: dict[str, WebSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, user: str, certificate_pem: bytes, expires: float) -> tuple[str, WebSession]:
        if len(self._sessions) >= self._max:
            self.prune()
            if len(self._sessions) >= self._max:
                raise TooManySessions()
        session_id = secrets.token_urlsafe(32)
        session = WebSession(user, certificate_pem, expires, secrets.token_urlsafe(32))
        self._sessions[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> WebSession | None:
        """The live session with this id, or None (unknown, ended or expired)."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is not None and session.expires <= self._clock.seconds():
            del self._sessions[session_id]
            return None
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def prune(self) -> None:
        now = self._clock.seconds()
        for session_id in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[session_id]
