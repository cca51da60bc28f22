"""The session recording format: one JSON header line per event, output
bytes raw right after their header.

Records and not one container because a recording is appended to while the
session runs and may be cut anywhere by a crash: every complete record is an
event, an incomplete last one is dropped, and an upload chunk always ends on
a record boundary. Output is raw (a ``print`` header says ``size``, that
many bytes follow) because base64 inside JSON cost the agent as much CPU as
relaying the session. Version 1 recordings (``data`` as base64 inside the
line, no ``version`` field) are still read. Format: docs/recordings.md.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

#: The version the writer produces (``version`` on the session.start line).
VERSION = 2
#: A session id (a UUID): what names a recording, on the agent and in Auth.
SESSION_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

#: The session's identity and what it runs; always the first record.
START = "session.start"
#: Terminal or command output (``stream``: stdout or stderr; ``size`` raw bytes follow).
PRINT = "print"
RESIZE = "resize"
EXIT = "exit"
PORT_OPEN = "port.open"
PORT_CLOSE = "port.close"
PORT_ERROR = "port.error"
END = "session.end"
TYPES = frozenset({START, PRINT, RESIZE, EXIT, PORT_OPEN, PORT_CLOSE, PORT_ERROR, END})

#: A header line longer than this is not ours (version 1 lines carried up to
#: 16 KiB of output as base64).
MAX_LINE = 1 << 20
#: Output records the writer produces are at most this big.
MAX_PRINT = 64 * 1024
#: The most raw bytes one record may carry (under the uploader's chunk size,
#: so that every record fits in one upload).
MAX_PAYLOAD = 256 * 1024


class RecordingFormatError(Exception):
    """The bytes are not a recording; the one error this module raises."""


#: The streams output comes from.
STREAMS = ("stdout", "stderr")


def print_header(ms: int, stream: str, size: int) -> bytes:
    """The header line ``encode`` writes for ``size`` bytes of output, without
    building a dict or calling json.dumps: the writer makes one per record."""
    if stream not in STREAMS or type(ms) is not int or not 0 <= size <= MAX_PAYLOAD:
        raise RecordingFormatError("a print needs a known stream, integer ms and a size up to MAX_PAYLOAD")
    return b'{"type":"print","ms":%d,"stream":"%s","size":%d}\n' % (ms, stream.encode("ascii"), size)


def encode(event: dict[str, Any]) -> bytes:
    """One record: the header line, then ``data`` (bytes) raw, if any."""
    if event.get("type") not in TYPES or not isinstance(event.get("ms"), int):
        raise RecordingFormatError("an event needs a known type and integer ms")
    header = dict(event)
    data = header.pop("data", b"")
    if "data" in event:
        if len(data) > MAX_PAYLOAD:
            raise RecordingFormatError("event data is too large for one record")
        header["size"] = len(data)
    return json.dumps(header, separators=(",", ":")).encode("ascii") + b"\n" + data


def decode_header(line: bytes) -> dict[str, Any]:
    """The event on one header line (without its newline). Version 1 ``data``
    comes back as bytes; a version 2 ``size`` stays for the caller to read."""
    try:
        event = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RecordingFormatError("a recording line is not JSON") from None
    if not isinstance(event, dict) or event.get("type") not in TYPES:
        raise RecordingFormatError("a recording line is not an event of a known type")
    if type(event.get("ms")) is not int or event["ms"] < 0:
        raise RecordingFormatError("an event's ms must be a non-negative integer")
    if "size" in event:
        if "data" in event or type(event["size"]) is not int or not 0 <= event["size"] <= MAX_PAYLOAD:
            raise RecordingFormatError("an event's size must be an integer up to MAX_PAYLOAD")
    elif "data" in event:
        if not isinstance(event["data"], str):
            raise RecordingFormatError("event data must be base64 text")
        try:
            event["data"] = base64.b64decode(event["data"], validate=True)
        except (binascii.Error, ValueError):
            raise RecordingFormatError("event data is not base64") from None
    return event


class RecordingReader:
    """Bytes in any pieces -> events; sans-IO so tsh, Auth and tests share it.

    ``feed`` returns the events completed by the new bytes, each with its
    output as ``data`` (bytes). ``close`` says the recording ended: a torn
    last record (a crash mid-write) is dropped there, never an error, since
    everything before it is intact.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._header: dict[str, Any] | None = None  # waiting for its payload
        self._first = True

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._pending += data
        events = []
        while (event := self._next()) is not None:
            events.append(event)
        if self._header is None and len(self._pending) > MAX_LINE:
            raise RecordingFormatError("a recording line is too long")
        return events

    def _next(self) -> dict[str, Any] | None:
        if self._header is None:
            end = self._pending.find(b"\n")
            if end < 0:
                return None
            header = decode_header(bytes(self._pending[:end]))
            del self._pending[:end + 1]
            if self._first and header["type"] != START:
                raise RecordingFormatError("a recording starts with session.start")
            self._first = False
            if "size" not in header:
                return header
            self._header = header
        size = self._header["size"]
        if len(self._pending) < size:
            return None
        event, self._header = self._header, None
        del event["size"]
        event["data"] = bytes(self._pending[:size])
        del self._pending[:size]
        return event

    def close(self) -> bool:
        """Whether the recording was whole (False: a torn tail was dropped)."""
        whole = not self._pending and self._header is None
        self._pending, self._header = bytearray(), None
        return whole


def read_all(data: bytes) -> list[dict[str, Any]]:
    reader = RecordingReader()
    events = reader.feed(data)
    reader.close()
    return events


def _whole_records(data: bytes):
    """``(header, end offset)`` of each whole record of ``data`` (which starts
    on a record boundary), stopping at the first torn or unreadable one."""
    view = memoryview(data)
    at = 0
    while True:
        end = data.find(b"\n", at)
        if end < 0:
            return
        try:
            header = decode_header(view[at:end].tobytes())
        except RecordingFormatError:
            return
        size = header.get("size", 0)
        if end + 1 + size > len(data):
            return
        at = end + 1 + size
        yield header, at


def complete_prefix(data: bytes) -> bytes:
    """The longest prefix of ``data`` (which starts on a record boundary) that
    holds only whole records: what may be uploaded from a file another thread
    is still appending to. Bytes that are not records end the prefix too, so
    a corrupt file is uploaded up to its last good record."""
    at = 0
    for _header, at in _whole_records(data):
        pass
    return data[:at]


def last_ms(data: bytes) -> int | None:
    """The ``ms`` of the last whole record in ``data`` (a chunk starting on a
    record boundary), or None: a finished recording's duration."""
    ms = None
    for header, _at in _whole_records(data):
        ms = header["ms"]
    return ms
