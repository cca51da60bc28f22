"""A browser's terminal, relayed by the proxy as an exec to the agent.

Two protocols, joined once the agent accepted the exec:

- `BrowserTerminal` serves the browser's WebSocket on the proxy's web port
  (the HTTP channel hands the connection over after the 101). Every message
  is checked (``terminal_protocol.BrowserMessages``) before it goes on.
- `AgentExec` is the proxy's own exec, a WebSocket upgrade over a ``kube``
  tunnel stream carrying the user's certificate, spoken to the agent exactly
  as kubectl's is: the agent verifies the certificate, authorizes the exec
  by the user's roles, impersonates, audits and records it. Nothing here
  judges what the user may do; a refusal comes back as the agent's Status,
  whose message the browser shows.

Each transport throttles the other (registered as each other's streaming
producer, as in ``tunnel.splice``). The terminal ends when either side
closes, when nothing passed either way for ``idle_timeout``, when the web
session ends (its certificate's expiry; a sign-out within
``session_check`` seconds: sessions are kept by Auth, so it is asked
then, not per keystroke; a check Auth does not answer keeps the terminal
for a while, so that an Auth server failing over does not cut live
terminals, but not past ``session_unconfirmed`` seconds without an answer:
then it ends, failing closed) and on a protocol error (that connection
only). Each end tells the
browser why, as a Status on the error channel, unless the exec's own exit
status already did.
"""
from __future__ import annotations

import base64
import os
from typing import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from teleport_py.websocket import (
    CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, Message,
    WebSocketError, encode_close, encode_frame,
)
from teleport_py.web.terminal_protocol import (
    ERROR, AgentMessages, BrowserMessages, Refused, Switched, UpgradeAnswer, exec_request, status_message,
)

log = Logger()

#: A terminal with no message either way for this long is closed.
IDLE_TIMEOUT = 600.0
#: How often a terminal asks whether its web session still exists.
SESSION_CHECK = 10.0
#: How long a terminal stays open while Auth answers none of those checks.
SESSION_UNCONFIRMED = 60.0


class ExecRefused(Exception):
    """The agent did not start the exec; the message says why."""


class AgentExec(Protocol):
    """The proxy's exec on a ``kube`` tunnel stream: the upgrade, then the
    agent's channel messages to ``browser``."""

    def __init__(self, request: bytes, answer: UpgradeAnswer, decided: Callable[[Switched | Refused], None]):
        self._request = request
        self._answer: UpgradeAnswer | None = answer
        self._decided = decided
        self._messages = AgentMessages()
        self.browser: BrowserTerminal | None = None
        #: Messages that came with the 101, before the browser was attached.
        self._held: list[Message] = []
        self.closing = False
        self.relaying = False

    @classmethod
    def for_target(cls, target, decided) -> "AgentExec":
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        return cls(exec_request(target, key), UpgradeAnswer(key), decided)

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        try:
            if self._answer is not None:
                decided = self._answer.feed(data)
                if decided is None:
                    return
                self._answer = None
                self._decided(decided)
                if isinstance(decided, Refused):
                    self.transport.loseConnection()
                    return
                data = decided.rest
            for message in self._messages.feed(data):
                if self.browser is not None:
                    self.browser.from_agent(message)
                else:
                    self._held.append(message)
        except WebSocketError as e:
            log.info("web terminal: malformed exec stream from the agent error={error}", error=str(e))
            if self._answer is not None:
                self._answer = None
                self._decided(Refused(502, "the Kubernetes service answered the exec with something unreadable"))
            elif self.browser is not None:
                self.browser.end("the exec stream from the Kubernetes service was malformed", 502)
            self.transport.abortConnection()

    def attach(self, browser: "BrowserTerminal") -> None:
        self.browser = browser
        held, self._held = self._held, []
        for message in held:
            browser.from_agent(message)
        if self.closing:
            browser.agent_gone()

    def send(self, message: Message) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(encode_frame(message.opcode, message.payload, mask=os.urandom(4)))

    def close(self, code: int = CLOSE_NORMAL) -> None:
        if self.transport is None or self.closing:
            return
        self.send(Message(OP_CLOSE, encode_close(code)))
        self.closing = True
        if self.relaying:  # each transport is the other's producer
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self.closing = True
        if self._answer is not None:
            answer, self._answer = self._answer, None
            self._decided(answer.connection_lost())
        if self.browser is not None:
            self.browser.agent_gone()


class BrowserTerminal(Protocol):
    """The browser's WebSocket after the 101. ``start(terminal)`` is called
    once connected and must end in ``joined(agent)`` or ``end(message)``;
    until then nothing is read from the browser."""

    def __init__(self, reactor, start: Callable[["BrowserTerminal"], None], *, expires: float,
                 still_signed_in: Callable[[], Awaitable[bool]], idle_timeout: float = IDLE_TIMEOUT,
                 session_check: float = SESSION_CHECK, session_unconfirmed: float = SESSION_UNCONFIRMED,
                 describe: str = "") -> None:
        self._reactor = reactor
        self._start = start
        self._expires = expires
        self._still_signed_in = still_signed_in
        self._idle_timeout = idle_timeout
        self._session_check = session_check
        self._session_unconfirmed = session_unconfirmed
        #: When the first of the checks Auth has not answered since its last answer was asked.
        self._unanswered_since: float | None = None
        self._describe = describe
        self._messages = BrowserMessages()
        self.agent: AgentExec | None = None
        self._status_sent = False
        self._ended = False
        self._close_sent = False
        self._idle = None
        self._expiry = None
        self._check = None

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        self._idle = self._reactor.callLater(self._idle_timeout, self._idled)
        self._expiry = self._reactor.callLater(max(0.0, self._expires - self._reactor.seconds()), self.end,
                                               "your web session has ended; sign in again", 401)
        self._check = self._reactor.callLater(self._session_check, self._check_session)
        self._start(self)

    def joined(self, agent: AgentExec) -> None:
        """The agent accepted the exec: relay both ways."""
        if self._ended:
            agent.close(CLOSE_GOING_AWAY)
            return
        self.agent = agent
        if agent.closing:
            agent.attach(self)
            return
        self.transport.registerProducer(agent.transport, True)
        agent.transport.registerProducer(self.transport, True)
        agent.relaying = True
        self.transport.resumeProducing()
        log.info("web terminal started {describe}", describe=self._describe)
        agent.attach(self)

    # -- browser -> agent --------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            return
        try:
            messages = self._messages.feed(data)
        except WebSocketError as e:
            log.info("web terminal: malformed message from the browser error={error}", error=str(e))
            self.end(f"the browser sent something the terminal does not accept: {e}", 400, close=CLOSE_PROTOCOL_ERROR)
            return
        for message in messages:
            self._active()
            if message.opcode == OP_PING:
                self._send(Message(OP_PONG, message.payload))
            elif message.opcode == OP_CLOSE:
                self.end()
                return
            elif message.opcode == OP_BINARY and self.agent is not None:
                self.agent.send(message)

    # -- agent -> browser --------------------------------------------------------
    def from_agent(self, message: Message) -> None:
        if message.opcode == OP_PING:
            self.agent.send(Message(OP_PONG, message.payload))
        elif message.opcode == OP_CLOSE:
            self.end("the Kubernetes service ended the session", 503)
        elif message.opcode == OP_BINARY:
            self._active()
            if message.payload[:1] == bytes([ERROR]):
                self._status_sent = True
            self._send(message)

    def agent_gone(self) -> None:
        self.end("the connection to the Kubernetes service was lost", 503)

    # -- the end -------------------------------------------------------------------
    def end(self, message: str | None = None, code: int = 500, *, close: int = CLOSE_NORMAL) -> None:
        """End the terminal; ``message`` tells the browser why, unless the
        exec's exit status already did."""
        if self._ended:
            return
        self._ended = True
        self._cancel_timers()
        if message is not None and not self._status_sent:
            self._send(Message(OP_BINARY, status_message(message, code)))
            log.info("web terminal ended {describe} reason={reason}", describe=self._describe, reason=message)
        self._send(Message(OP_CLOSE, encode_close(close)))
        if self.transport is not None:
            if self.agent is not None and self.agent.relaying:
                self.transport.unregisterProducer()
            self.transport.resumeProducing()
            self.transport.loseConnection()
        if self.agent is not None:
            self.agent.close()

    def connectionLost(self, reason=None) -> None:
        self._ended = True
        self._cancel_timers()
        if self.agent is not None:
            self.agent.close(CLOSE_GOING_AWAY)

    def _send(self, message: Message) -> None:
        if self.transport is not None and not self._close_sent:
            self._close_sent = message.opcode == OP_CLOSE
            self.transport.write(encode_frame(message.opcode, message.payload, mask=None))

    def _active(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_timeout)

    def _check_session(self) -> None:
        self._check = None
        asked = self._reactor.seconds()
        Deferred.fromCoroutine(self._still_signed_in()).addCallbacks(self._checked, self._check_failed,
                                                                     errbackArgs=(asked,))

    def _checked(self, signed_in: bool) -> None:
        if self._ended:
            return
        self._unanswered_since = None
        if not signed_in:
            self.end("your web session has ended; sign in again", 401)
        else:
            self._next_check()

    def _check_failed(self, failure, asked: float) -> None:
        if self._ended:
            return
        log.info("web terminal: the session check failed error={error}", error=failure.getErrorMessage())
        if self._unanswered_since is None:
            self._unanswered_since = asked
        if self._reactor.seconds() - self._unanswered_since >= self._session_unconfirmed:
            self.end(f"the proxy could not confirm your web session with Auth for {self._session_unconfirmed:g} s;"
                     " sign in again", 503)
        else:
            self._next_check()

    def _next_check(self) -> None:
        self._check = self._reactor.callLater(self._session_check, self._check_session)

    def _idled(self) -> None:
        self._idle = None
        self.end(f"the terminal was idle for {self._idle_timeout:g} s", 408)

    def _cancel_timers(self) -> None:
        for call in (self._idle, self._expiry, self._check):
            if call is not None and call.active():
                call.cancel()
        self._idle = self._expiry = self._check = None
