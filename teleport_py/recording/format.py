"""The session recording format: JSON lines, one self-contained event a line.

Lines and not a binary container because a recording is appended to while
the session runs and may be cut anywhere by a crash: every complete line is
an event, an incomplete last line is dropped, and a chunk boundary never has
to be understood by anyone. Output bytes are base64 so that a line is plain
ASCII. Format and fields: docs/recordings.md.
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any

#: The session's identity and what it runs; always the first line.
START = "session.start"
#: Terminal or command output (``stream``: stdout or stderr, ``data``: base64).
PRINT = "print"
RESIZE = "resize"
EXIT = "exit"
PORT_OPEN = "port.open"
PORT_CLOSE = "port.close"
PORT_ERROR = "port.error"
END = "session.end"
TYPES = frozenset({START, PRINT, RESIZE, EXIT, PORT_OPEN, PORT_CLOSE, PORT_ERROR, END})

#: A line longer than this is not ours (the writer cuts output into pieces).
MAX_LINE = 1 << 20


class RecordingFormatError(Exception):
    """The bytes are not a recording; the one error this module raises."""


def encode(event: dict[str, Any]) -> bytes:
    """One line; ``data`` (bytes) is stored as base64."""
    if event.get("type") not in TYPES or not isinstance(event.get("ms"), int):
        raise RecordingFormatError("an event needs a known type and integer ms")
    doc = dict(event)
    if "data" in doc:
        doc["data"] = base64.b64encode(doc["data"]).decode("ascii")
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("ascii") + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """The event on one line (without its newline), ``data`` back to bytes."""
    try:
        event = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise RecordingFormatError("a recording line is not JSON") from None
    if not isinstance(event, dict) or event.get("type") not in TYPES:
        raise RecordingFormatError("a recording line is not an event of a known type")
    if type(event.get("ms")) is not int or event["ms"] < 0:
        raise RecordingFormatError("an event's ms must be a non-negative integer")
    if "data" in event:
        if not isinstance(event["data"], str):
            raise RecordingFormatError("event data must be base64 text")
        try:
            event["data"] = base64.b64decode(event["data"], validate=True)
        except (binascii.Error, ValueError):
            raise RecordingFormatError("event data is not base64") from None
    return event


class RecordingReader:
    """Bytes in any pieces -> events; sans-IO so tsh, Auth and tests share it.

    ``feed`` returns the events completed by the new bytes. ``close`` says the
    recording ended: a torn last line (a crash mid-write) is dropped there,
    never an error, since everything before it is intact.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._first = True

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._pending += data
        events = []
        while True:
            end = self._pending.find(b"\n")
            if end < 0:
                break
            line = bytes(self._pending[:end])
            del self._pending[:end + 1]
            events.append(self._event(line))
        if len(self._pending) > MAX_LINE:
            raise RecordingFormatError("a recording line is too long")
        return events

    def _event(self, line: bytes) -> dict[str, Any]:
        event = decode(line)
        if self._first and event["type"] != START:
            raise RecordingFormatError("a recording starts with session.start")
        self._first = False
        return event

    def close(self) -> bytes:
        """The torn tail that was dropped (empty when the recording was whole)."""
        tail, self._pending = bytes(self._pending), bytearray()
        return tail


def read_all(data: bytes) -> list[dict[str, Any]]:
    reader = RecordingReader()
    events = reader.feed(data)
    reader.close()
    return events


def complete_prefix(data: bytes) -> bytes:
    """The part of ``data`` up to and including its last newline: what may be
    uploaded from a file another thread is still appending to."""
    return data[:data.rfind(b"\n") + 1]
