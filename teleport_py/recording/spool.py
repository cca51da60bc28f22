"""Session recordings on the agent's disk, and their upload to Auth.

A recording is written to ``<dir>/<session id>.part`` while its session runs
(appended at least every ``flush_interval`` seconds, so a kill -9 loses at
most that much) and fsync'd and renamed to ``<session id>.rec`` when it ends.
The uploader sends both kinds to Auth in chunks that end on a record boundary,
starting at the size Auth says it has (so uploads resume after a restart of
either side and a repeated chunk is harmless), and deletes a ``.rec`` once
Auth holds all of it. A ``.part`` left by a previous process is a session
that died with it: it is closed as it is, torn last record dropped.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from teleport_py import disk
from teleport_py.pki import make_private_dirs
from teleport_py.recording.format import MAX_PRINT, PRINT, SESSION_ID, complete_prefix, encode, print_header
from teleport_py.uploader import Uploader

log = Logger()

#: Raw bytes per upload request: Auth's limit (fewer requests and
#: transactions per MiB than smaller chunks).
CHUNK_SIZE = 1024 * 1024
#: Recorded bytes held in memory before the relay is asked to pause.
MAX_BACKLOG = 4 * 1024 * 1024
OPEN, CLOSED = ".part", ".rec"


class RecordingFiles:
    """The blocking operations on the spool directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        make_private_dirs(directory)

    def _path(self, session_id: str, suffix: str) -> str:
        if not SESSION_ID.match(session_id):
            raise ValueError(f"not a session id: {session_id!r}")
        return os.path.join(self.directory, session_id + suffix)

    def append(self, session_id: str, data: bytes) -> None:
        disk.append(self._path(session_id, OPEN), data, sync=False)

    def close(self, session_id: str, data: bytes = b"") -> None:
        """Append the last bytes, make the file durable, mark it complete."""
        path = self._path(session_id, OPEN)
        disk.append(path, data)
        os.rename(path, self._path(session_id, CLOSED))
        disk.sync_directory(self.directory)

    def recover(self) -> list[str]:
        """Close what a previous process left open; call before recording."""
        orphans = [name[:-len(OPEN)] for name in os.listdir(self.directory) if name.endswith(OPEN)]
        for session_id in orphans:
            if SESSION_ID.match(session_id):
                self.close(session_id)
        return orphans

    def listing(self) -> list[tuple[str, bool]]:
        """(session id, complete) for every recording still on disk."""
        found = []
        for name in sorted(os.listdir(self.directory)):
            stem, suffix = os.path.splitext(name)
            if suffix in (OPEN, CLOSED) and SESSION_ID.match(stem):
                found.append((stem, suffix == CLOSED))
        return found

    def read(self, session_id: str, complete: bool, offset: int, size: int) -> bytes:
        """An open recording may have been closed (renamed) since it was
        listed: it is then read from its closed file."""
        try:
            f = open(self._path(session_id, CLOSED if complete else OPEN), "rb")
        except FileNotFoundError:
            if complete:
                raise
            f = open(self._path(session_id, CLOSED), "rb")
        with f:
            f.seek(offset)
            return f.read(size)

    def remove(self, session_id: str) -> None:
        os.unlink(self._path(session_id, CLOSED))


class RecordingWriter:
    """One session's recording: ``record(event)`` from the reactor.

    Consecutive output of one stream in the same millisecond becomes one
    ``print`` record (up to MAX_PRINT): a terminal writing a byte at a time
    would otherwise cost a header per byte, and no timing is lost. Records are
    buffered and handed to the file thread every ``flush_interval``,
    or at once when half the backlog is waiting (a busy session must not be
    limited to one backlog per interval); ``on_backlog(True)`` asks the relay
    to pause while more than ``max_backlog`` bytes wait for the disk,
    ``on_backlog(False)`` to resume.
    """

    def __init__(self, spool: "RecordingSpool", session_id: str, *, flush_interval: float, max_backlog: int):
        self.session_id = session_id
        self._spool = spool
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._print: tuple[str, int, bytearray] | None = None  # the last print (stream, ms, data), still growing
        self._in_flight = 0
        self._max_backlog = max_backlog
        self._writing: Deferred | None = None
        self._closing: Deferred | None = None
        self._throttled = False
        self.on_backlog: Callable[[bool], None] = lambda paused: None
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = spool.reactor
        self._flusher.start(flush_interval, now=False).addErrback(
            lambda f: log.failure("recording flush loop failed", f))

    def record(self, event: dict[str, Any]) -> None:
        if event["type"] == PRINT:
            self.output(event["stream"], event["ms"], event["data"])
            return
        self._seal_print()
        self._append(encode(event))
        self._recorded()

    def output(self, stream: str, ms: int, data: bytes) -> None:
        """Output of any size: what the relay calls for every read of it, so
        no event dict is built; it fills print records of up to MAX_PRINT."""
        view = memoryview(data)
        while view:
            last = self._print
            if last is None or last[0] != stream or last[1] != ms or len(last[2]) >= MAX_PRINT:
                self._seal_print()
                last = self._print = (stream, ms, bytearray())
            room = MAX_PRINT - len(last[2])
            last[2].extend(view[:room])
            view = view[room:]
        self._pending_size += len(data)
        self._recorded()

    def _recorded(self) -> None:
        if self._pending_size > self._max_backlog // 2 and self._closing is None:
            self.flush()
        self._check_backlog()

    def _append(self, record: bytes) -> None:
        self._pending.append(record)
        self._pending_size += len(record)

    def _seal_print(self) -> None:
        if self._print is not None:
            (stream, ms, data), self._print = self._print, None
            self._pending_size -= len(data)
            self._append(print_header(ms, stream, len(data)))
            self._append(data)

    def _check_backlog(self) -> None:
        throttled = self._pending_size + self._in_flight > self._max_backlog
        if throttled != self._throttled:
            self._throttled = throttled
            self.on_backlog(throttled)

    def flush(self) -> None:
        if self._writing is None:
            self._seal_print()
        if self._writing is None and self._pending:
            data = b"".join(self._pending)
            self._pending, self._pending_size, self._in_flight = [], 0, len(data)
            self._writing = self._spool.run(self._spool.files.append, self.session_id, data)
            self._writing.addCallbacks(self._written, self._write_failed, errbackArgs=(data,))

    def _written(self, _) -> None:
        self._writing, self._in_flight = None, 0
        self._check_backlog()
        if self._closing is not None:
            self._finish()
        elif self._pending_size > self._max_backlog // 2:
            self.flush()

    def _write_failed(self, failure, data: bytes) -> None:
        log.failure("cannot write recording {session}; will retry", failure, session=self.session_id)
        self._pending.insert(0, data)
        self._pending_size += len(data)
        self._writing, self._in_flight = None, 0
        if self._closing is not None:
            self._spool.reactor.callLater(1.0, self._finish)

    def close(self) -> Deferred:
        """Fires once the whole recording is fsync'd on disk and complete."""
        if self._closing is None:
            self._closing = Deferred()
            if self._flusher.running:
                self._flusher.stop()
            if self._writing is None:
                self._finish()
        return self._closing

    def _finish(self) -> None:
        self._seal_print()
        data = b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        self._writing = self._spool.run(self._spool.files.close, self.session_id, data)
        self._writing.addCallbacks(self._closed, self._write_failed, errbackArgs=(data,))

    def _closed(self, _) -> None:
        self._writing = None
        self._closing.callback(self.session_id)
        self._spool.upload_soon()


class RecordingSpool:
    """The agent's recordings directory and its background uploader.

    ``upload(session_id, offset, data, final)`` sends one chunk and returns
    (a Deferred of) the size Auth now holds; ``stored(session_id)`` returns
    that size without sending anything (0 for a recording Auth never saw).
    """

    def __init__(self, reactor, directory: str, *, upload, stored, run_blocking=None,
                 flush_interval: float = 1.0, max_backlog: int = MAX_BACKLOG,
                 upload_interval: float = 5.0, max_backoff: float = 60.0) -> None:
        self.reactor = reactor
        self.files = RecordingFiles(directory)
        self.run = run_blocking or disk.file_thread(reactor, "kube-recordings")
        self._upload = upload
        self._stored = stored
        self._flush_interval = flush_interval
        self._max_backlog = max_backlog
        self._offsets: dict[str, int] = {}
        self._uploader = Uploader(reactor, self._upload_once, what="recording", interval=upload_interval,
                                  max_backoff=max_backoff, periodic=True)
        self._recovered = self.run(self.files.recover)
        self._recovered.addErrback(lambda f: log.failure("cannot recover open recordings", f))

    def open(self, session_id: str) -> RecordingWriter:
        """A new session's recording. Auth cannot hold bytes of a session id
        we just made, so its first upload skips asking (a 409 would correct us)."""
        self._offsets[session_id] = 0
        return RecordingWriter(self, session_id, flush_interval=self._flush_interval,
                               max_backlog=self._max_backlog)

    def upload_soon(self, delay: float = 0.0) -> None:
        self._uploader.soon(delay)

    async def _upload_once(self) -> None:
        try:
            await self.upload_all()
        except BaseException:
            self._offsets.clear()  # ask Auth again: it may have stored more or less than we think
            raise

    async def upload_all(self) -> None:
        """Send every byte on disk that Auth lacks; delete what is complete."""
        await self._recovered
        for session_id, complete in await self.run(self.files.listing):
            offset = self._offsets.get(session_id)
            if offset is None:
                offset = await self._stored(session_id)
            while True:
                data = await self.run(self.files.read, session_id, complete, offset, CHUNK_SIZE)
                final = complete and len(data) < CHUNK_SIZE
                data = data if final else complete_prefix(data)
                if not data and not final:
                    break
                offset = await self._upload(session_id, offset, data, final)
                self._offsets[session_id] = offset
                if final:
                    await self.run(self.files.remove, session_id)
                    del self._offsets[session_id]
                    log.info("recording uploaded session={session} bytes={size}", session=session_id, size=offset)
                    break

    def stop(self) -> None:
        self._uploader.stop()
