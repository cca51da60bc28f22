"""Audit events spooled to local disk before they go to Auth.

An event is durable on the agent (JSON line, fsync) before anyone tries to
upload it, and deleted only after Auth stored it; so losing the tunnel or
restarting the agent loses nothing. Auth stores events idempotently by
``uid``, so a batch uploaded again after a crash between "stored" and
"deleted" is harmless.

Events are committed in groups (group commit): an event emitted while no
write runs starts one at the end of this reactor turn; events emitted while
a write (its ``fsync``) runs wait and go together in the next. Under
concurrency that is one thread hand-off and one fsync per group, not per
event. ``durable()`` says when the events emitted so far are on disk: the
agent holds each response to kubectl until its event is
(kube/durable_responses.py), so a request that got an answer keeps its event
even if the agent is killed right after.

Layout: ``<dir>/<sequence>.jsonl`` segments. New events go to the newest
open segment; an upload first seals it (new events start a new segment), then
sends sealed segments oldest first, one batch per segment.
"""
from __future__ import annotations

import json
import os
from collections import deque
from typing import Awaitable, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from teleport_py import disk
from teleport_py.pki import make_private_dirs
from teleport_py.uploader import Uploader

log = Logger()

MAX_SEGMENT_EVENTS = 500


class SpoolFiles:
    """The blocking file operations, run one at a time on the spool's thread."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        make_private_dirs(directory)
        existing = self._segments()
        self._current = (existing[-1] + 1) if existing else 1
        self._current_count = 0

    def _segments(self) -> list[int]:
        return sorted(int(n[:-6]) for n in os.listdir(self.directory) if n.endswith(".jsonl") and n[:-6].isdigit())

    def _path(self, sequence: int) -> str:
        return os.path.join(self.directory, f"{sequence:012d}.jsonl")

    def append(self, lines: list[bytes]) -> None:
        """Durable when this returns."""
        if self._current_count >= MAX_SEGMENT_EVENTS:
            self.seal()
        disk.append(self._path(self._current), b"".join(lines))
        self._current_count += len(lines)

    def seal(self) -> None:
        """Later events go to a new segment, so the sealed ones never change."""
        if os.path.exists(self._path(self._current)):
            self._current += 1
            self._current_count = 0

    def sealed(self) -> list[int]:
        return [s for s in self._segments() if s < self._current]

    def read(self, sequence: int) -> list[dict]:
        """Events of one segment; a torn last line (crash mid-write) is dropped."""
        events = []
        with open(self._path(sequence), "rb") as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    log.warn("dropping unreadable audit spool line in {segment}", segment=sequence)
        return events

    def remove(self, sequence: int) -> None:
        os.unlink(self._path(sequence))


class EventSpool:
    """``emit(event)`` from the reactor; uploads happen in the background."""

    def __init__(
        self,
        reactor,
        directory: str,
        upload: Callable[[list[dict]], Awaitable],
        *,
        run_blocking: Callable[..., Deferred] | None = None,
        delay: float = 1.0,
        max_backoff: float = 30.0,
        commit_delay: float = 0.0,
    ) -> None:
        self._reactor = reactor
        self._upload = upload
        # Before shutdown the open window is committed, so a clean stop loses nothing.
        self._run = run_blocking or disk.file_thread(reactor, "kube-audit-spool", before_stop=self.flush)
        self._delay = delay
        self._uploader = Uploader(reactor, self._upload_all, what="audit", interval=delay, max_backoff=max_backoff)
        self._commit_delay = commit_delay
        self._files = SpoolFiles(directory)
        self._pending: list[bytes] = []
        #: The next group's commit, while its window is open.
        self._commit = None
        self._writing: Deferred | None = None
        self._write_failing = False
        #: Events emitted, and written durably, since the spool started.
        self._emitted = 0
        self._durable = 0
        #: ``durable()`` callers: (how many events must be durable, fired then).
        self._waiters: deque[tuple[int, Deferred]] = deque()

    def emit(self, event: dict) -> None:
        """Encoded here, so that an event that is not JSON fails its caller."""
        self.emit_line(json.dumps(event, separators=(",", ":")).encode("utf-8") + b"\n")

    def emit_line(self, line: bytes) -> None:
        """An event already encoded: one JSON object and its newline."""
        self._pending.append(line)
        self._emitted += 1
        if self._commit is None and self._writing is None:
            self._commit_after(self._commit_delay)

    def _commit_after(self, delay: float) -> None:
        self._commit = self._reactor.callLater(delay, self._write)

    def _write(self) -> None:
        self._commit = None
        lines, self._pending = self._pending, []
        self._writing = self._run(self._files.append, lines)
        self._writing.addCallbacks(self._written, self._write_failed, callbackArgs=(len(lines),),
                                   errbackArgs=(lines,))

    def _written(self, _, count: int) -> None:
        self._writing = None
        self._write_failing = False
        self._durable += count
        while self._waiters and self._waiters[0][0] <= self._durable:
            self._waiters.popleft()[1].callback(None)
        if self._pending:
            self._commit_after(self._commit_delay)
        self.schedule_upload(self._delay)

    def _write_failed(self, failure, lines) -> None:
        log.failure("cannot write the audit spool; retrying", failure)
        self._pending[:0] = lines
        self._writing = None
        self._write_failing = True
        self._commit_after(self._delay)

    def durable(self) -> Deferred | None:
        """``None`` when every event emitted so far is on disk; else a
        Deferred that fires once they are. It never fails: while the spool
        cannot write, it retries and the Deferred waits."""
        if self._durable == self._emitted:
            return None
        done = Deferred()
        self._waiters.append((self._emitted, done))
        return done

    def flush(self) -> Deferred:
        """Commit now what waits for its window. Fires when every event
        emitted so far is durable, or when writing it has failed (it stays
        pending and is retried)."""
        if self._commit is not None:
            self._commit.cancel()
            self._write()
        if self._writing is None:
            return succeed(None)
        done = Deferred()

        def next_group(_):
            (succeed(None) if self._write_failing else self.flush()).chainDeferred(done)

        self._writing.addBoth(next_group)
        return done

    def schedule_upload(self, delay: float = 0.0) -> None:
        self._uploader.soon(delay)

    async def _upload_all(self) -> None:
        await self._run(self._files.seal)
        for sequence in await self._run(self._files.sealed):
            batch = await self._run(self._files.read, sequence)
            if batch:
                await self._upload(batch)
            await self._run(self._files.remove, sequence)

    def stop(self) -> None:
        self._uploader.stop()
