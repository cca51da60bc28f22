"""A strict HTTP/1.1 request head parser (sans-IO), for kubectl's requests.

h11 parses a proxied GET's head in tens of microseconds of Python per
request; kubectl's heads are a handful of well-formed lines, so a parser
that accepts only the plain form of HTTP/1.1 and refuses everything else
costs a fraction of that (bench/request_head.py). It accepts a subset of
what h11 accepts and, for anything it accepts, yields what h11's Request
event carries (tests/test_kube_request_head.py checks both against h11
with hypothesis). Refused, beyond what h11 refuses: bare LF or CR line
ends, obs-fold continuation lines, header values with control bytes, more
than one Content-Length (even equal ones, or a comma list), Content-Length
together with Transfer-Encoding, versions other than 1.0 and 1.1, and a
head longer than ``max_head`` however it arrives.

Only the head: the body's framing (``content_length``, ``chunked``) is
for the caller to follow (kube/bodyframing.py).
"""
from __future__ import annotations

import re

import attrs

from teleport_py.kube.bodyframing import FramingError

#: As h11's default limit on an incomplete event.
MAX_HEAD = 16 * 1024

_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/(1\.[01])")
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A value after its surrounding blanks are stripped: visible bytes (and
#: obs-text) separated by single runs of SP or HTAB; no control bytes.
_FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,20}")
#: A CR not followed by LF, or an LF not preceded by CR, in an incomplete head.
_BARE_CR_OR_LF = re.compile(rb"\r(?=[^\n])|(?<!\r)\n")


class HeadError(Exception):
    """The request head is malformed or ambiguous: answer 400 and close."""


class ProtocolError(Exception):
    """The peer's bytes are not HTTP/1.1 we accept: the connection ends."""


class LocalError(Exception):
    """We were about to write what HTTP/1.1 does not allow (a bug, or a
    value such as a user name that cannot be a header): nothing is written."""


class PeerReader:
    """What reads a peer's HTTP/1.1 (kube/http1_server.py, kube/http1_client.py):
    ``next_event`` raises ProtocolError for malformed, ambiguous or
    over-long input, and again on every later call."""

    _failed: ProtocolError | None = None

    def next_event(self):
        if self._failed is not None:
            raise self._failed
        try:
            return self._next_event()
        except (HeadError, FramingError) as e:
            self._failed = ProtocolError(str(e))
            raise self._failed from None

    def _next_event(self):
        raise NotImplementedError


@attrs.frozen
class RequestHead:
    """One request's head as h11's ``Request`` event carries it: header
    names lower case, values stripped of surrounding blanks, in order."""

    method: bytes
    target: bytes
    http_version: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    #: The body's framing: its length (0 when none is declared) or chunked.
    content_length: int
    chunked: bool

    def header(self, name: bytes) -> bytes | None:
        """The value of the header ``name`` (lower case), if present."""
        return next((value for key, value in self.headers if key == name), None)


def parse_request_head(buffer: bytes | bytearray, max_head: int = MAX_HEAD) -> tuple[RequestHead, int] | None:
    """The request head at the start of ``buffer`` and the bytes it took,
    or None while it is incomplete. Raises HeadError when it is malformed,
    ambiguous or longer than ``max_head`` (complete or not)."""
    end = find_head_end(buffer, max_head)
    if end is None:
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        raise HeadError("illegal request line")
    method, target, version = request_line.groups()
    headers, content_length, chunked, hosts = parse_fields(lines[1:])
    if hosts > 1:
        raise HeadError("more than one Host header")
    if version == b"1.1" and not hosts:
        raise HeadError("no Host header")
    head = RequestHead(method, target, version, headers, content_length or 0, chunked)
    return head, end + 4


def started_request_line(received: bytes | bytearray) -> tuple[bytes, bytes]:
    """The method and target of a request head received only in part, as
    far as they arrived (the target may be cut short), for the audit of a
    head that never finished; ``(b"", b"")`` while the method has not ended."""
    line = bytes(received[:MAX_HEAD]).partition(b"\r")[0]
    method, space, rest = line.partition(b" ")
    if not space or not method:
        return b"", b""
    return method, rest.partition(b" ")[0]


def find_head_end(buffer: bytes | bytearray, max_head: int) -> int | None:
    """Where the head at the start of ``buffer`` ends (its blank line), or
    None while it is incomplete; HeadError when it is too long or an
    incomplete head already has a bare CR or LF."""
    end = buffer.find(b"\r\n\r\n", 0, max_head + 4)
    if end >= 0:
        return end
    if len(buffer) > max_head:
        raise HeadError("head too long")
    if (buffer and buffer[0] < 0x21) or _BARE_CR_OR_LF.search(buffer):
        raise HeadError("malformed head")
    return None


def parse_fields(lines: list[bytes], *, keep_case: bool = False
                 ) -> tuple[tuple[tuple[bytes, bytes], ...], int | None, bool, int]:
    """Header lines as h11 reads them (names lower case unless ``keep_case``, values stripped),
    the body's declared length (None if none), whether it is chunked, and
    how many Host headers there are. HeadError for anything malformed or
    ambiguous: a bad name or value, more than one Content-Length,
    Transfer-Encoding other than one ``chunked``, or both."""
    headers = []
    content_length: bytes | None = None
    chunked = False
    hosts = 0
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or _FIELD_NAME.fullmatch(name) is None:
            raise HeadError("illegal header line")
        value = value.strip(b" \t")
        if _FIELD_VALUE.fullmatch(value) is None:
            raise HeadError("malformed header value")
        raw, name = name, name.lower()
        if name == b"content-length":
            if content_length is not None or _CONTENT_LENGTH.fullmatch(value) is None:
                raise HeadError("ambiguous or malformed Content-Length")
            content_length = value
        elif name == b"transfer-encoding":
            if chunked or value.lower() != b"chunked":
                raise HeadError("Transfer-Encoding other than one chunked")
            chunked, value = True, b"chunked"
        elif name == b"host":
            hosts += 1
        headers.append((raw if keep_case else name, value))
    if chunked and content_length is not None:
        raise HeadError("both Content-Length and Transfer-Encoding")
    return tuple(headers), None if content_length is None else int(content_length), chunked, hosts


def is_valid_field(name: bytes, value: bytes) -> bool:
    """A header we write is one h11 would write: a token name and a value
    of visible bytes and inner blanks (no CR, LF or other control byte)."""
    return _FIELD_NAME.fullmatch(name) is not None and _FIELD_VALUE.fullmatch(value) is not None


def comma_values(headers, name: bytes) -> list[bytes]:
    """The comma-separated values of every ``name`` header, lower case (as h11 reads them)."""
    out = []
    for header, value in headers:
        if header == name:
            out += [v for v in (part.strip() for part in value.lower().split(b",")) if v]
    return out
