"""A recording as asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/),
so any asciinema player plays it: what ``tsh play --format=asciicast`` writes
and what the web UI's download serves, written once here.

Sans-IO: ``AsciicastWriter`` takes recording events (``format.RecordingReader``
output) and returns the asciicast lines they complete. The header needs the
terminal size, which a kube session learns only from its first ``resize``; so
the header waits until the first resize or the first output, whichever comes
first (80x24 when output comes first, asciinema's default). Later resizes are
``"r"`` events. Output bytes become text through one incremental UTF-8 decoder,
so a character split across two records stays whole. Port-forward sessions and
a non-interactive exec's exit have no terminal output of their own: they are
written as ``"m"`` (marker) events with a label saying what happened, which
players show on the timeline and never print into the terminal.
"""
from __future__ import annotations

import codecs
import json
from datetime import datetime
from typing import Any

from teleport_py.recording import format as rec

DEFAULT_WIDTH, DEFAULT_HEIGHT = 80, 24
MEDIA_TYPE = "application/x-asciicast"


def convert(events) -> str:
    """A whole recording's events as one asciicast document."""
    writer = AsciicastWriter()
    return "".join(writer.feed(event) for event in events) + writer.close()


def _line(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": ")) + "\n"


def _timestamp(start: dict[str, Any]) -> int | None:
    try:
        return int(datetime.fromisoformat(str(start.get("time", "")).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def title(start: dict[str, Any]) -> str:
    """What the session was, in one line: ``alice: exec dev/web-0 [app] sh -c ...``."""
    where = f"{start.get('namespace', '')}/{start.get('pod', '')}"
    if start.get("container"):
        where += f" [{start['container']}]"
    command = " ".join(str(c) for c in start.get("command") or [])
    return " ".join(p for p in (f"{start.get('user', '')}:", str(start.get("kind", "")), where, command) if p)


def marker(event: dict[str, Any]) -> str | None:
    """The label of an event that is not terminal output, or None."""
    kind = event["type"]
    if kind == rec.PORT_OPEN:
        return f"port-forward to port {event.get('port')} opened"
    if kind == rec.PORT_CLOSE:
        return (f"port-forward to port {event.get('port')} closed "
                f"({event.get('bytes_in', 0)} bytes in, {event.get('bytes_out', 0)} bytes out)")
    if kind == rec.PORT_ERROR:
        return f"port-forward to port {event.get('port')} failed: {event.get('message', '')}"
    if kind == rec.EXIT:
        return f"exited with code {event.get('code')}" + (f": {event['message']}" if event.get("message") else "")
    if kind == rec.END and event.get("error"):
        return f"session ended: {event['error']}"
    return None


class AsciicastWriter:
    def __init__(self) -> None:
        self._start: dict[str, Any] | None = None
        self._header_written = False
        self._size: tuple[int, int] | None = None
        self._held: list[list[Any]] = []
        self._last = 0.0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, event: dict[str, Any]) -> str:
        """The asciicast lines ``event`` completes (possibly none)."""
        kind, seconds = event["type"], round(event["ms"] / 1000.0, 6)
        self._last = seconds
        if kind == rec.START:
            self._start = event
            return ""
        if kind == rec.RESIZE:
            size = (int(event.get("width", 0)), int(event.get("height", 0)))
            if not self._header_written and self._size is None:
                self._size = size
                return ""
            return self._emit([seconds, "r", f"{size[0]}x{size[1]}"])
        if kind == rec.PRINT:
            text = self._decoder.decode(event.get("data", b""))
            return self._emit([seconds, "o", text]) if text else self._emit()
        label = marker(event)
        if label is None:
            return ""
        text = self._decoder.decode(b"", final=True)
        lines = self._emit([seconds, "o", text]) if text else ""
        if self._header_written:
            return lines + _line([seconds, "m", label])
        self._held.append([seconds, "m", label])  # a port-forward may have no output at all
        return lines

    def _emit(self, *items: list[Any]) -> str:
        out = ""
        if not self._header_written:
            out += self._header()
        return out + "".join(_line(item) for item in items)

    def _header(self) -> str:
        start = self._start or {}
        width, height = self._size or (DEFAULT_WIDTH, DEFAULT_HEIGHT)
        header: dict[str, Any] = {"version": 2, "width": width, "height": height}
        timestamp = _timestamp(start)
        if timestamp is not None:
            header["timestamp"] = timestamp
        header["title"] = title(start)
        header["env"] = {"TERM": "xterm"}
        self._header_written = True
        held, self._held = self._held, []
        return _line(header) + "".join(_line(item) for item in held)

    def close(self) -> str:
        """The rest: text held by the decoder, and the header of a recording
        that had no output."""
        text = self._decoder.decode(b"", final=True)
        out = "" if self._header_written else self._header()
        return out + (_line([self._last, "o", text]) if text else "")
