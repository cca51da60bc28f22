"""The cluster's audit log, stored in the backend.

Events are keyed by day and then by time, ``/events/2026-11-23/<ns>-<uid>``,
so that a time-range search reads only the days it covers, in order, and an
event written by a retried upload (same ``uid``) lands on the same key instead
of appearing twice.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from twisted.logger import Logger

from teleport_py.backend import MAX_PUT_ALL
from teleport_py.events import make_event

PREFIX = "/events/"
MAX_SEARCH_LIMIT = 10000


def _parse_time(value: str) -> datetime:
    text = value.replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _key(event: dict[str, Any]) -> str:
    when = _parse_time(event["time"])
    ns = int(when.timestamp() * 1_000_000) * 1000
    return f"{PREFIX}{when:%Y-%m-%d}/{ns:020d}-{event['uid']}"


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
        wanted = set(event_types)
        limit = max(1, min(limit, MAX_SEARCH_LIMIT))
        results: list[dict[str, Any]] = []
        day = start.astimezone(timezone.utc).date()
        while day <= end.astimezone(timezone.utc).date() and len(results) < limit:
            for item in await self._backend.get_range(f"{PREFIX}{day:%Y-%m-%d}/"):
                event = json.loads(item.value)
                when = _parse_time(event["time"])
                if start <= when < end and (not wanted or event["event"] in wanted) and (
                    not user or event.get("user") == user
                ):
                    results.append(event)
                    if len(results) >= limit:
                        break
            day += timedelta(days=1)
        return results
