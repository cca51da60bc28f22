"""The cluster's audit log, stored in the backend.

Events are keyed by day and then by time, ``/events/2026-11-23/<ns>-<uid>``,
so that a time-range search reads only the days it covers, in order, and an
event written by a retried upload (same ``uid``) lands on the same key instead
of appearing twice.

A search is paged in the backend: it starts at the key of its ``from`` time
(or just after the cursor of the page before, the key of that page's last
event) and reads in batches the size of the page, stopping at its ``to``
time. An unfiltered page costs about its own size on every backend; with
type or user filters, what it skips is read too (there is no index by type
or user).
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from twisted.logger import Logger

from teleport_py.backend import MAX_PUT_ALL
from teleport_py.events import make_event

PREFIX = "/events/"
MAX_SEARCH_LIMIT = 10000
#: Keys read per backend round trip at least (a small filtered page still
#: moves through the log in reasonable steps), and at most.
MIN_BATCH, MAX_BATCH = 64, 1000
#: A page's cursor: its last event's key under PREFIX (the uid is whatever
#: the uploading agent gave; only the day and time are read from it).
_CURSOR = re.compile(r"^(\d{4}-\d{2}-\d{2})/\d{20}-.", re.DOTALL)
MAX_CURSOR = 1024


class InvalidCursor(ValueError):
    """A cursor this log did not hand out."""


def _parse_time(value: str) -> datetime:
    text = value.replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _time_key(when: datetime) -> str:
    """Where the events at ``when`` (UTC) begin: every key of an event at or
    after it, that day, sorts at or after this one."""
    ns = int(when.timestamp() * 1_000_000) * 1000
    return f"{PREFIX}{when:%Y-%m-%d}/{ns:020d}"


def _key(event: dict[str, Any]) -> str:
    return f"{_time_key(_parse_time(event['time']))}-{event['uid']}"


def _day_prefix(key: str) -> str:
    return key[:len(PREFIX) + len("2026-01-01/")]


class AuditLog:
    log = Logger()

    def __init__(self, backend, clock, cluster_name: str):
        self._backend = backend
        self._clock = clock
        self.cluster_name = cluster_name

    async def emit(self, event_type: str, *, success: bool = True, **fields: Any) -> dict[str, Any]:
        """Build and store an event; returns it once it is durable."""
        event = make_event(event_type, self._clock.seconds(), success=success, cluster_name=self.cluster_name, **fields)
        await self.append(event)
        return event

    async def append(self, event: dict[str, Any]) -> None:
        """Store an event built elsewhere; idempotent by uid."""
        await self.append_all([event])

    async def append_all(self, events: list[dict[str, Any]]) -> None:
        """Store a batch (an agent's spool segment) in one durable write: all
        of it or, when one event is malformed (ValueError), none of it.
        Idempotent by uid, so a batch uploaded twice is stored once."""
        entries = []
        for event in events:
            for field in ("event", "time", "uid"):
                if not isinstance(event.get(field), str) or not event[field]:
                    raise ValueError(f"audit event needs a string field {field!r}")
            event.setdefault("cluster_name", self.cluster_name)
            entries.append((_key(event), json.dumps(event, sort_keys=True).encode("utf-8"), None))
        # Checked whole above, stored in transactions the backend allows; a
        # retry after a failure between two stores nothing twice (keys are uids).
        for start in range(0, len(entries), MAX_PUT_ALL):
            await self._backend.put_all(entries[start:start + MAX_PUT_ALL])
        # One line per batch: the events themselves are in the audit log, and
        # formatting a log line per event cost Auth more CPU than storing it.
        self.log.debug("stored audit events count={count}", count=len(events))

    async def search(
        self,
        start: datetime,
        end: datetime,
        event_types: Iterable[str] = (),
        limit: int = 1000,
        user: str = "",
    ) -> list[dict[str, Any]]:
        """Events with start <= time < end, oldest first, optionally of some
        types and of one user (the limit counts only matching events)."""
        events, _ = await self.search_page(start, end, event_types, limit, user)
        return events

    async def search_page(
        self,
        start: datetime,
        end: datetime,
        event_types: Iterable[str] = (),
        limit: int = 1000,
        user: str = "",
        after: str = "",
    ) -> tuple[list[dict[str, Any]], str]:
        """One page of ``search``, after the page whose cursor is ``after``
        (``""``: the first page); returns the page and the next page's
        cursor, ``""`` when this was the last. Pages read one after another
        hold every matching event once, in order (keys are unique and
        ordered, and the next page starts just after this one's last key).
        ``InvalidCursor`` for a cursor this log did not hand out."""
        wanted = set(event_types)
        limit = max(1, min(limit, MAX_SEARCH_LIMIT))
        start, end = start.astimezone(timezone.utc), end.astimezone(timezone.utc)
        first = _time_key(start)
        if after:
            matched = _CURSOR.match(after)
            try:
                if matched is None or len(after) > MAX_CURSOR:
                    raise ValueError(after)
                datetime.strptime(matched.group(1), "%Y-%m-%d")
            except ValueError:
                raise InvalidCursor("after: not a cursor of this audit log (start again from the first page)") from None
            first = max(first, f"{PREFIX}{after}\x00")
        stop = _time_key(end)
        batch = max(MIN_BATCH, min(limit + 1, MAX_BATCH))
        results: list[tuple[str, dict[str, Any]]] = []
        day = datetime.strptime(_day_prefix(first)[len(PREFIX):-1], "%Y-%m-%d").date()
        # One matching event more than the page tells whether another page exists.
        while day <= end.date() and len(results) <= limit:
            prefix = f"{PREFIX}{day:%Y-%m-%d}/"
            cursor = first if first.startswith(prefix) else prefix
            while len(results) <= limit:
                items = await self._backend.get_range(prefix, batch, start=cursor)
                for item in items:
                    if item.key >= stop:
                        return self._page(results, limit)
                    event = json.loads(item.value)
                    if (not wanted or event["event"] in wanted) and (not user or event.get("user") == user):
                        results.append((item.key, event))
                        if len(results) > limit:
                            break
                if len(items) < batch:
                    break
                cursor = items[-1].key + "\x00"
            day += timedelta(days=1)
        return self._page(results, limit)

    @staticmethod
    def _page(results: list[tuple[str, dict[str, Any]]], limit: int) -> tuple[list[dict[str, Any]], str]:
        page = results[:limit]
        more = len(results) > limit
        return [event for _, event in page], page[-1][0][len(PREFIX):] if more else ""
