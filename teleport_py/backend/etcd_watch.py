"""One etcd watch over a key range that survives disconnects: it resumes
from the revision after the last one delivered, so no event is missed or
delivered twice; when etcd has compacted that revision away it asks its owner
to re-read (``on_compacted``) and resumes after the re-read.

``WatchDecoder`` is the sans-IO part: the gateway's stream is newline-
separated JSON objects (``{"result": WatchResponse}`` or ``{"error": ...}``),
each line bounded, fragments of one response joined (bounded too).
"""

from __future__ import annotations

import base64
import json
import random

import attrs
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger

log = Logger()

#: One line is one WatchResponse (or a fragment of one): with ``fragment``
#: set etcd keeps each near its request limit (1.5 MiB by default), which
#: base64 and JSON grow by about half.
MAX_LINE = 8 << 20
#: The fragments of one response, joined.
MAX_RESPONSE = 64 << 20
RETRY_FIRST = 0.1
RETRY_CAP = 5.0


class WatchStreamError(Exception):
    """The stream said something that is not a watch response, or too much."""


@attrs.frozen
class WatchResponse:
    """``events`` are the gateway's event dicts; ``revision`` is the header's;
    ``compact_revision`` is set when the watch was cancelled by compaction."""

    revision: int
    events: tuple = ()
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""


def _int(value, what: str) -> int:
    # int64 travels as a JSON string; absent means 0.
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise WatchStreamError(f"watch {what} is not an integer")
    try:
        return int(value)
    except ValueError:
        raise WatchStreamError(f"watch {what} is not an integer") from None


class WatchDecoder:
    """Bytes in, complete ``WatchResponse`` objects out."""

    def __init__(self, max_line: int = MAX_LINE, max_response: int = MAX_RESPONSE):
        self._max_line = max_line
        self._max_response = max_response
        self._buffer = b""
        self._fragments: list[dict] = []
        self._fragment_bytes = 0

    def feed(self, data: bytes) -> list[WatchResponse]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > self._max_line:
            raise WatchStreamError(f"watch line longer than {self._max_line} bytes")
        responses = []
        for line in lines:
            if len(line) > self._max_line:
                raise WatchStreamError(f"watch line longer than {self._max_line} bytes")
            if line.strip():
                response = self._line(line)
                if response is not None:
                    responses.append(response)
        return responses

    def _line(self, line: bytes) -> WatchResponse | None:
        try:
            message = json.loads(line)
        except ValueError:
            raise WatchStreamError("watch line is not JSON") from None
        if not isinstance(message, dict):
            raise WatchStreamError("watch line is not an object")
        if "result" not in message:
            error = message.get("error")
            detail = error.get("message") if isinstance(error, dict) else None
            raise WatchStreamError(f"watch failed: {str(detail)[:300]}")
        result = message["result"]
        if not isinstance(result, dict):
            raise WatchStreamError("watch result is not an object")
        events = result.get("events") or []
        if not isinstance(events, list) or not all(isinstance(event, dict) for event in events):
            raise WatchStreamError("watch events are not a list of objects")
        if result.get("fragment"):
            self._fragment_bytes += len(line)
            if self._fragment_bytes > self._max_response:
                raise WatchStreamError(f"watch response larger than {self._max_response} bytes")
            self._fragments.append(result)
            return None
        if self._fragments:
            events = [event for part in self._fragments for event in part.get("events") or []] + events
            self._fragments, self._fragment_bytes = [], 0
        header = result.get("header")
        if not isinstance(header, dict):
            header = {}
        return WatchResponse(
            revision=_int(header.get("revision"), "revision"),
            events=tuple(events),
            created=bool(result.get("created")),
            canceled=bool(result.get("canceled")),
            compact_revision=_int(result.get("compact_revision"), "compact_revision"),
            cancel_reason=str(result.get("cancel_reason", ""))[:300],
        )


def event_revision(event: dict) -> int:
    kv = event.get("kv")
    if not isinstance(kv, dict):
        raise WatchStreamError("watch event without kv")
    return _int(kv.get("mod_revision"), "mod_revision")


class ResumingWatch:
    """Watches ``[key, range_end)`` from ``after + 1`` on, for as long as it
    runs. ``on_events(events)`` gets each response's events (one revision is
    never split across calls); ``on_compacted()`` must re-read what the
    watch missed and return (or fire with) the revision it read at."""

    def __init__(self, reactor, gateway, key: bytes, range_end: bytes, after: int, on_events, on_compacted):
        self._reactor = reactor
        self._gateway = gateway
        self._range = (base64.b64encode(key).decode(), base64.b64encode(range_end).decode())
        self.delivered = after
        self._on_events = on_events
        self._on_compacted = on_compacted
        self._waiters: list[tuple[int, Deferred]] = []
        self._running: Deferred | None = None
        self._current: Deferred | None = None
        self._stream = None
        self._stopped = False

    def start(self) -> None:
        self._running = ensureDeferred(self._loop())
        self._running.addErrback(lambda failure: failure.trap(CancelledError))

    def reached(self, revision: int) -> Deferred:
        """Fires once every event up to ``revision`` was delivered."""
        if self.delivered >= revision:
            return succeed(self.delivered)
        waiter: Deferred = Deferred(lambda d: self._waiters.remove((revision, d)))
        self._waiters.append((revision, waiter))
        return waiter

    def _advance(self, revision: int) -> None:
        if revision <= self.delivered:
            return
        self.delivered = revision
        ready = [(wanted, d) for wanted, d in self._waiters if wanted <= revision]
        self._waiters = [(wanted, d) for wanted, d in self._waiters if wanted > revision]
        for _, waiter in ready:
            waiter.callback(revision)

    async def _loop(self) -> None:
        delay = RETRY_FIRST
        while not self._stopped:
            try:
                outcome = await self._watch_once()
                if outcome is _REREAD:
                    continue  # caught up by the re-read: watch again at once
                if outcome:
                    delay = RETRY_FIRST
            except CancelledError:
                raise
            except Exception as failure:
                if self._stopped:
                    return
                log.warn("etcd watch interrupted, resuming after revision {revision}: {error}",
                         revision=self.delivered, error=str(failure)[:300])
            if self._stopped:
                return
            self._current = deferLater(self._reactor, delay * (0.8 + 0.4 * random.random()))
            await self._current
            self._current = None
            delay = min(delay * 2, RETRY_CAP)

    async def _watch_once(self) -> bool:
        """One stream; true once it delivered anything (the retry delay resets)."""
        key, range_end = self._range
        request = {"create_request": {
            "key": key, "range_end": range_end, "start_revision": str(self.delivered + 1),
            "prev_kv": True, "fragment": True, "progress_notify": True,
        }}
        decoder = WatchDecoder()
        progressed = False

        def received(data: bytes) -> None:
            nonlocal progressed
            for response in decoder.feed(data):
                if self._stopped:
                    return
                if response.canceled:
                    raise _Compacted(response.compact_revision) if response.compact_revision else WatchStreamError(
                        f"watch cancelled: {response.cancel_reason}")
                if response.events:
                    self._on_events(response.events)
                    self._advance(event_revision(response.events[-1]))
                    progressed = True
                elif not response.created and response.revision:
                    # A progress notification: everything up to here was sent.
                    self._advance(response.revision)

        self._current = ensureDeferred(self._gateway.stream("watch", request, received))
        stream = await self._current
        self._current = None
        self._stream = stream
        try:
            await stream.ended
        except _Compacted as compacted:
            log.warn("etcd compacted past revision {revision} (now {compacted}); re-reading",
                     revision=self.delivered, compacted=compacted.revision)
            read_at = await ensureDeferred(_as_coroutine(self._on_compacted))
            self._advance(read_at)
            return _REREAD
        finally:
            self._stream = None
        return progressed

    def reopen(self) -> None:
        """Drop the current stream (it resumes after the usual retry delay)."""
        if self._stream is not None:
            self._stream.abort(WatchStreamError("reopened: a write's event was late"))

    def stop(self) -> None:
        self._stopped = True
        if self._current is not None:
            self._current.cancel()
        if self._stream is not None:
            self._stream.abort()
        if self._running is not None:
            self._running.cancel()
        waiters, self._waiters = self._waiters, []
        for _, waiter in waiters:
            waiter.errback(CancelledError("the watch stopped"))


_REREAD = object()


class _Compacted(Exception):
    def __init__(self, revision: int):
        super().__init__(revision)
        self.revision = revision


async def _as_coroutine(function):
    return await function()
