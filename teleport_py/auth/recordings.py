"""Session recordings in Auth: chunked, idempotent uploads and who may read them.

Agents upload a recording in chunks, each at the byte offset it starts at;
Auth accepts only the next offset (or a repeat of a chunk it already has, a
no-op), so an upload interrupted anywhere resumes exactly where Auth's copy
ends. The first chunk's first line (``session.start``) gives the metadata
``ls`` shows, the ``final`` chunk marks the recording complete.

Layout: the bytes in an ``IRecordingStore``, by default
``<directory>/<session id>.rec`` (written at their offset and fsync'd, on a
thread; with several Auth servers a directory they all mount, set by
``teleport.storage.audit_sessions_uri``), the metadata in the backend::

    /recording_meta/<session id>            JSON metadata, incl. size and complete

The metadata's ``size`` is what Auth holds: it is written after the bytes,
so bytes past it (a crash between the two) are overwritten by the retry.
Files, not backend values, because storing a MiB in SQLite cost Auth about
12 ms of CPU. Recordings stored before that keep their bytes in
``/recording_data/<session id>/<offset>`` (their metadata lists the
``chunks``) and still play.

Readers: users whose roles allow ``session`` ``list``/``read`` (e.g. editor),
and each session's own participant. Anyone else is refused (access denied,
as in Teleport); an unknown id is not found.
"""
from __future__ import annotations

import bisect
import json
import os
from typing import Any

from twisted.logger import Logger
from zope.interface import Interface, implementer

from teleport_py import disk
from teleport_py.auth.errors import AccessDenied, AlreadyExists, BadParameter, NotFound
from teleport_py.pki import HostIdentity, UserIdentity, make_private_dirs
from teleport_py.recording.format import SESSION_ID, START, RecordingFormatError, decode_header, last_ms

META = "/recording_meta/"
DATA = "/recording_data/"
#: Raw bytes a single chunk may carry (the API's 1 MiB body limit).
MAX_CHUNK = 1024 * 1024
#: Raw bytes one read returns; readers page with ``offset``.
MAX_READ = 512 * 1024
#: Metadata copied from the session.start line.
START_FIELDS = ("session_id", "user", "kube_cluster", "cluster_name", "kind", "namespace", "pod",
                "container", "command", "tty", "protocol", "transport", "time", "participants")


def _check_id(session_id: str) -> None:
    if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
        raise BadParameter("session id: must be a UUID")


class IRecordingStore(Interface):
    """Where recording bytes live: somewhere every Auth server reaches (a
    directory, shared over NFS when there are several; object storage can
    implement the same two calls). Calls block; Recordings runs them on its
    file thread."""

    def write(session_id: str, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset``, durably on return, dropping anything
        stored past ``offset`` (bytes whose metadata a crash lost)."""

    def read(session_id: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``."""


@implementer(IRecordingStore)
class RecordingFiles:
    """The blocking file operations, one recording per file in one directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        make_private_dirs(directory)

    def _path(self, session_id: str) -> str:
        _check_id(session_id)
        return os.path.join(self.directory, session_id + ".rec")

    def write(self, session_id: str, offset: int, data: bytes) -> None:
        """``data`` at ``offset``, durable on return; anything past ``offset``
        (bytes whose metadata a crash lost) is dropped first."""
        disk.write_at(self._path(session_id), offset, data)
        if offset == 0:  # a new file: its directory entry must survive a crash too
            disk.sync_directory(self.directory)

    def read(self, session_id: str, offset: int, size: int) -> bytes:
        with open(self._path(session_id), "rb") as f:
            f.seek(offset)
            return f.read(size)


class Recordings:
    log = Logger()

    def __init__(self, auth, directory: str, *, run_blocking=None, store: IRecordingStore | None = None) -> None:
        self.auth = auth
        self.backend = auth.backend
        self.files = store if store is not None else RecordingFiles(directory)
        self._run = run_blocking or disk.file_thread(auth.reactor, "auth-recordings")

    async def _meta(self, session_id: str) -> dict[str, Any] | None:
        item = await self.backend.get(META + session_id)
        return json.loads(item.value) if item is not None else None

    # -- agents ---------------------------------------------------------------

    async def stored(self, caller, session_id: str) -> dict[str, Any]:
        """How much of a recording Auth holds (size 0 for an unknown one)."""
        self.auth.authorizer.require_system_role(caller, "kube")
        _check_id(session_id)
        meta = await self._meta(session_id)
        return {"size": meta["size"] if meta else 0, "complete": bool(meta and meta["complete"])}

    async def append(self, caller, session_id: str, offset: int, data: bytes, final: bool) -> dict[str, Any]:
        host: HostIdentity = self.auth.authorizer.require_system_role(caller, "kube")
        _check_id(session_id)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise BadParameter("offset: must be a non-negative integer")
        if len(data) > MAX_CHUNK:
            raise BadParameter("data: chunk too large")
        meta = await self._meta(session_id)
        size = meta["size"] if meta else 0
        if meta is not None and meta["server_id"] != host.host_id:
            raise AccessDenied("this recording belongs to another agent")
        if offset + len(data) <= size and (final is False or meta["complete"]):
            return {"size": size}  # a chunk we already stored: the agent retried
        if offset != size:
            raise AlreadyExists(f"recording {session_id} has {size} bytes, not {offset}", size=size)
        if meta is None:
            meta = {"server_id": host.host_id, "size": 0, "complete": False, **self._start_fields(data)}
        if data and "chunks" in meta:  # begun before recordings moved to files: stays in the backend
            await self.backend.put(f"{DATA}{session_id}/{offset:016d}", data)
            meta["chunks"].append(offset)
        elif data:
            await self._run(self.files.write, session_id, offset, data)
        meta["size"] = offset + len(data)
        meta["complete"] = bool(final)
        ms = last_ms(data) if data else None
        if ms is not None:  # the session's length so far: what the web UI lists
            meta["duration_ms"] = ms
        await self.backend.put(META + session_id, json.dumps(meta, sort_keys=True).encode("utf-8"))
        if final:
            self.log.info("recording stored session={session} bytes={size}", session=session_id, size=meta["size"])
        return {"size": meta["size"]}

    @staticmethod
    def _start_fields(first_chunk: bytes) -> dict[str, Any]:
        line = first_chunk.split(b"\n", 1)[0]
        try:
            event = decode_header(line)
        except RecordingFormatError as e:
            raise BadParameter(f"data: a recording must start with a session.start line ({e})") from None
        if event["type"] != START:
            raise BadParameter("data: a recording must start with a session.start line")
        return {field: event[field] for field in START_FIELDS if field in event}

    # -- users ----------------------------------------------------------------

    async def _may(self, caller, verb: str) -> bool:
        try:
            await self.auth.authorizer.check(caller, "session", verb)
        except AccessDenied:
            return False
        return True

    @staticmethod
    def _participant(caller, meta: dict[str, Any]) -> bool:
        return isinstance(caller, UserIdentity) and (
            caller.username == meta.get("user") or caller.username in meta.get("participants", ()))

    async def list(self, caller) -> list[dict[str, Any]]:
        everything = await self._may(caller, "list")
        metas = [json.loads(item.value) for item in await self.backend.get_range(META)]
        visible = [self._public(m) for m in metas if everything or self._participant(caller, m)]
        return sorted(visible, key=lambda m: m.get("time", ""))

    @staticmethod
    def _public(meta: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in meta.items() if k != "chunks"}

    async def get(self, caller, session_id: str) -> dict[str, Any]:
        _check_id(session_id)
        meta = await self._meta(session_id)
        if meta is None:
            raise NotFound(f"recording {session_id} not found")
        if self._participant(caller, meta) or await self._may(caller, "read"):
            return self._public(meta)
        # Teleport answers access denied here too. Ids are random UUIDs, so
        # telling "not yours" from "none" reveals nothing one could guess.
        raise AccessDenied(f"you may not view recording {session_id}: it is another user's session "
                           "and your roles do not allow reading sessions (rule: session read)")

    async def read(self, caller, session_id: str, offset: int) -> dict[str, Any]:
        """Bytes from ``offset`` (at most MAX_READ), and where to go on."""
        await self.get(caller, session_id)
        meta = await self._meta(session_id)
        if offset < 0 or offset > meta["size"]:
            raise BadParameter("offset: outside the recording")
        if "chunks" in meta:
            data = await self._read_chunks(session_id, meta["chunks"], offset)
        else:
            data = await self._run(self.files.read, session_id, offset, min(MAX_READ, meta["size"] - offset))
        return {"data": data, "next_offset": offset + len(data), "size": meta["size"], "complete": meta["complete"]}

    async def _read_chunks(self, session_id: str, starts: list[int], offset: int) -> bytes:
        """From a recording stored in the backend, chunk by chunk."""
        out = bytearray()
        for start in starts[max(0, bisect.bisect_right(starts, offset) - 1):]:
            item = await self.backend.get(f"{DATA}{session_id}/{start:016d}")
            if item is None:
                raise NotFound(f"recording {session_id} is missing data at {start}")
            out += item.value[max(0, offset - start):]
            if len(out) >= MAX_READ:
                break
        return bytes(out[:MAX_READ])
