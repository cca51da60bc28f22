"""Filter LIST and WATCH response bodies down to the items a user may see.

A ``kubernetes_resources`` rule can grant part of a collection (pods in
``dev`` only), but ``kubectl get pods -A`` asks the API server for all of
them; the agent therefore removes, item by item, what the user's roles do not
allow. Sans-IO: bytes in, bytes out, no Twisted.

Formats: JSON ``*List`` objects (``items``), ``meta.k8s.io`` ``Table``
objects (``rows[].object.metadata``, what ``kubectl get`` asks for), and JSON
watch streams (one compact JSON event per line, as the API server writes
them; ``kubectl get -w`` receives a one-row Table per event). Protobuf and
YAML bodies cannot be filtered: ``response_filter`` returns ``None`` and the
agent sends ``filterable_accept(accept)`` upstream instead of the client's
Accept header.

Content encoding: ``gzip`` bodies are inflated, filtered and deflated again,
so the output has the same ``Content-Encoding`` as the input (only the length
changes: the agent drops ``Content-Length``). Watches stay streaming under
gzip: every batch of emitted events ends with a sync flush.

Apply filters to 2xx responses only: error responses are ``Status`` objects
(possibly pretty-printed) that hold no item to hide.
"""
from __future__ import annotations

import json
import zlib
from typing import Any, Callable, Protocol

#: Refuse list bodies (and single watch events) larger than this, inflated.
DEFAULT_MAX_BODY = 256 * 1024 * 1024
#: A gzip list body is inflated at most this much at a time, so what it
#: holds is reserved (``ListFilter``'s ``reserve``) before it grows by more.
INFLATE_STEP = 1 << 20

#: Whether the item in (namespace, name) may be shown; ``""`` namespace for
#: cluster-scoped objects and namespaces themselves.
Allow = Callable[[str, str], bool]

_TABLE_API_VERSIONS = frozenset({"meta.k8s.io/v1", "meta.k8s.io/v1beta1"})
_OBJECT_EVENTS = frozenset({"ADDED", "MODIFIED", "DELETED"})
_PASSING_EVENTS = frozenset({"BOOKMARK", "ERROR"})
#: gzip framing for zlib (header and CRC trailer).
_GZIP_WBITS = 16 + zlib.MAX_WBITS
#: The API server's own gzip level: speed over ratio.
_GZIP_LEVEL = 1


class FilterError(Exception):
    """The body is malformed, truncated or too large: send none of it.

    The only exception the filters raise; the agent answers a 500 ``Status``
    (or, mid-watch, closes the stream).
    """


class ResponseFilter(Protocol):
    def feed(self, chunk: bytes) -> bytes:
        """Take the next piece of the upstream body; return what may be sent now."""

    def finish(self) -> bytes:
        """The upstream body ended; return the rest, or raise ``FilterError``."""


def response_filter(
    content_type: str,
    content_encoding: str | None,
    allow: Allow,
    *,
    watch: bool = False,
    max_body: int = DEFAULT_MAX_BODY,
    reserve: Callable[[int], None] | None = None,
) -> ResponseFilter | None:
    """A filter for this response, or ``None`` when it cannot be filtered safely.

    ``watch`` says the request was a watch: a JSON watch stream has the same
    ``Content-Type`` as a JSON list, so only the request tells them apart.
    ``None`` (protobuf, YAML, an encoding other than gzip) means the agent must
    not forward the body to a user whose list is filtered. ``reserve`` is
    told each size a list is about to hold (see ``ListFilter``).
    """
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        return None
    encoding = (content_encoding or "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        return None
    if watch:
        return WatchFilter(allow, gzipped=encoding == "gzip", max_body=max_body)
    return ListFilter(allow, gzipped=encoding == "gzip", max_body=max_body, reserve=reserve)


def filterable_accept(accept_header: str) -> str:
    """The client's Accept header narrowed to the JSON forms we can filter.

    Keeps every ``application/json`` media range with its parameters (so
    ``as=Table`` survives and kubectl still prints server-side columns) in the
    client's order; falls back to plain JSON when none was asked for.
    """
    ranges = [
        media_range.strip()
        for media_range in accept_header.split(",")
        if media_range.split(";", 1)[0].strip().lower() == "application/json"
    ]
    return ",".join(ranges) or "application/json"


def namespace_and_name(obj: Any) -> tuple[str, str]:
    """``(namespace, name)`` of an object, or of a Table row's object.

    Table rows carry the object (``PartialObjectMetadata`` by default) under
    ``object``; a row without one (``includeObject=None``) cannot be
    attributed to anything, so it is an error rather than a guess.
    """
    if isinstance(obj, dict) and "cells" in obj:
        obj = obj.get("object")
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(metadata, dict):
        raise FilterError("item without metadata")
    namespace = metadata.get("namespace", "")
    name = metadata.get("name", "")
    if not (isinstance(namespace, str) and isinstance(name, str)):
        raise FilterError("item metadata with a non-string namespace or name")
    return namespace, name


class ListFilter:
    """Filters one LIST response body; the whole body is needed to rewrite it.

    ``feed`` buffers (and inflates) and returns ``b""``; ``finish`` returns the
    filtered body. The list's ``metadata`` (``resourceVersion``, ``continue``)
    is kept; ``remainingItemCount`` is dropped because it counts hidden items.
    ``reserve(size)``, if given, is called before the buffer grows by
    ``size`` bytes (gzip bodies in steps of at most ``INFLATE_STEP``); what
    it raises ends the feed with nothing stored.
    """

    def __init__(self, allow: Allow, *, gzipped: bool = False, max_body: int = DEFAULT_MAX_BODY,
                 reserve: Callable[[int], None] | None = None) -> None:
        self._allow = allow
        self._max_body = max_body
        self._inflater = _Inflater() if gzipped else None
        self._reserve = reserve
        self._body = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        if self._inflater is None:
            self._store(chunk)
            return b""
        data = chunk
        while True:
            step = min(self._max_body - len(self._body), INFLATE_STEP) + 1
            piece = self._inflater.inflate(data, step)
            data = b""
            self._store(piece)
            if not self._inflater.has_tail and len(piece) < step:  # a full step may have more inside zlib
                return b""

    def _store(self, data: bytes) -> None:
        if len(data) > self._max_body - len(self._body):
            raise FilterError(f"response body larger than {self._max_body} bytes")
        if self._reserve is not None and data:
            self._reserve(len(data))
        self._body += data

    def finish(self) -> bytes:
        if self._inflater is None:
            return _filter_list(self._body, self._allow)
        self._inflater.finish()
        return zlib.compress(_filter_list(self._body, self._allow), _GZIP_LEVEL, _GZIP_WBITS)


class WatchFilter:
    """Filters a watch stream event by event, as the events arrive.

    ``feed`` returns every complete allowed event at once: nothing waits for
    the end of the stream. ``ERROR`` and ``BOOKMARK`` events pass; object
    events pass when ``allow`` accepts their object (or, for Table events,
    keep only the allowed rows and vanish when none is left).
    """

    def __init__(self, allow: Allow, *, gzipped: bool = False, max_body: int = DEFAULT_MAX_BODY) -> None:
        self._allow = allow
        self._max_event = max_body
        self._inflater = _Inflater() if gzipped else None
        self._deflater = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS) if gzipped else None
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        if self._inflater is None:
            return self._events(chunk)
        events = bytearray()
        data = chunk
        while True:
            # Inflate in bounded pieces so a gzip bomb cannot fill memory.
            events += self._events(self._inflater.inflate(data, self._max_event + 1))
            data = b""
            if not self._inflater.has_tail:
                break
        return self._deflate(events)

    def finish(self) -> bytes:
        if self._inflater is not None:
            self._inflater.finish()
        if self._pending.strip():
            raise FilterError("watch stream ended inside an event")
        if self._deflater is None:
            return b""
        return self._deflater.flush(zlib.Z_FINISH)

    def _deflate(self, events: bytes) -> bytes:
        """Compress and sync-flush, so the client can read the events now."""
        if self._deflater is None or not events:
            return bytes(events)
        return self._deflater.compress(events) + self._deflater.flush(zlib.Z_SYNC_FLUSH)

    def _events(self, data: bytes) -> bytes:
        """Append ``data``; filter every event it completes."""
        scan_from = len(self._pending)
        self._pending += data
        out = bytearray()
        start = 0
        while (end := self._pending.find(b"\n", scan_from)) != -1:
            out += self._filter_event(bytes(self._pending[start:end]))
            start = scan_from = end + 1
        del self._pending[:start]
        if len(self._pending) > self._max_event:
            raise FilterError(f"watch event larger than {self._max_event} bytes")
        return bytes(out)

    def _filter_event(self, line: bytes) -> bytes:
        if not line.strip():
            return b""
        event = _loads(line)
        if not isinstance(event, dict):
            raise FilterError("watch event is not a JSON object")
        event_type, obj = event.get("type"), event.get("object")
        if event_type in _PASSING_EVENTS:
            return line + b"\n"
        if event_type not in _OBJECT_EVENTS or not isinstance(obj, dict):
            raise FilterError("watch event without a known type and an object")
        if not _is_table(obj):
            return line + b"\n" if self._allow(*namespace_and_name(obj)) else b""
        if not _filter_rows(obj, self._allow):
            return line + b"\n"
        if not obj["rows"]:
            return b""
        return _dumps(event) + b"\n"


def _filter_list(body: bytearray, allow: Allow) -> bytes:
    """The list in ``body`` without the items ``allow`` refuses."""
    listing = _loads(body)
    if not isinstance(listing, dict):
        raise FilterError("response body is not a JSON object")
    if listing.get("kind") == "Status":
        return bytes(body)
    if _is_table(listing):
        changed = _filter_rows(listing, allow)
    elif "items" in listing:
        changed = _filter_items(listing, "items", allow)
    else:
        raise FilterError("response body is neither a list nor a Table")
    metadata = listing.get("metadata")
    if isinstance(metadata, dict) and metadata.pop("remainingItemCount", None) is not None:
        changed = True
    return _dumps(listing) if changed else bytes(body)


def _is_table(obj: dict) -> bool:
    # A CRD may be called Table too: only meta.k8s.io's Table has rows.
    return obj.get("kind") == "Table" and obj.get("apiVersion") in _TABLE_API_VERSIONS


def _filter_rows(table: dict, allow: Allow) -> bool:
    return _filter_items(table, "rows", allow)


def _filter_items(container: dict, key: str, allow: Allow) -> bool:
    """Keep the allowed entries of ``container[key]``; whether any went."""
    items = container.get(key)
    if items is None:  # Go encodes an empty nil slice as null
        return False
    if not isinstance(items, list):
        raise FilterError(f"{key} is not a JSON array")
    kept = [item for item in items if allow(*namespace_and_name(item))]
    if len(kept) == len(items):
        return False
    container[key] = kept
    return True


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:
        raise FilterError(f"malformed JSON: {error}") from None


def _dumps(obj: Any) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii")
    except (ValueError, RecursionError) as error:
        # Numbers beyond float range parse as inf, which JSON cannot carry.
        raise FilterError(f"cannot re-encode the body: {error}") from None


class _Inflater:
    """Incremental gunzip with a bound on each call's output."""

    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(_GZIP_WBITS)

    @property
    def has_tail(self) -> bool:
        return bool(self._zlib.unconsumed_tail)

    def inflate(self, data: bytes, max_length: int) -> bytes:
        """Up to ``max_length`` inflated bytes; input not yet inflated stays in the tail."""
        try:
            out = self._zlib.decompress(self._zlib.unconsumed_tail + data, max_length)
        except zlib.error as error:
            raise FilterError(f"malformed gzip body: {error}") from None
        if self._zlib.unused_data:
            raise FilterError("data after the end of the gzip body")
        return out

    def finish(self) -> None:
        if not self._zlib.eof:
            raise FilterError("truncated gzip body")
