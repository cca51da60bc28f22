"""
SPDY/3 name/value header blocks and their zlib compression.

Each direction of a SPDY connection has ONE zlib stream, primed with the
SPDY/3 dictionary and flushed with Z_SYNC_FLUSH after every block; a reader
that skips a block cannot decode any later one. So a compressor or
decompressor here lives exactly as long as one direction of one connection.
"""

import struct
import zlib


class SpdyError(Exception):
    """The one exception SPDY parsing raises on bad bytes."""

# Header names that the draft expects in HTTP-over-SPDY, each as a
# length-prefixed string, exactly as in the header-block encoding.
_DICTIONARY_WORDS = (
    "options head post put delete trace accept accept-charset accept-encoding"
    " accept-language accept-ranges age allow authorization cache-control"
    " connection content-base content-encoding content-language content-length"
    " content-location content-md5 content-range content-type date etag expect"
    " expires from host if-match if-modified-since if-none-match if-range"
    " if-unmodified-since last-modified location max-forwards pragma"
    " proxy-authenticate proxy-authorization range referer retry-after server"
    " te trailer transfer-encoding upgrade user-agent vary via warning"
    " www-authenticate method get status"
).split() + ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie",
             "keep-alive", "origin"]

# ...followed by status codes, reason phrases, dates and common values, raw.
_DICTIONARY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414"
    "415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently"
    "400 Bad Request401 Unauthorized403 Forbidden404 Not Found"
    "500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00"
    " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,"
    "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)

#: The zlib dictionary of SPDY draft 3, section 2.6.10.1 (1423 bytes).
SPDY3_DICTIONARY = b"".join(
    struct.pack("!I", len(word)) + word.encode("ascii")
    for word in _DICTIONARY_WORDS
) + _DICTIONARY_TAIL.encode("ascii")

#: Largest decompressed header block we accept: headers are a few hundred
#: bytes in practice, and a small block may inflate enormously (zlib bomb).
MAX_HEADER_BLOCK = 256 * 1024

HeaderMap = dict[str, list[str]]


def encode_header_block(headers: HeaderMap) -> bytes:
    """Serialize headers uncompressed; several values are NUL-joined."""
    parts = [struct.pack("!I", len(headers))]
    for name, values in headers.items():
        if name != name.lower() or not name:
            raise SpdyError(f"header name must be non-empty lowercase: {name!r}")
        if not values or any("\0" in value for value in values):
            raise SpdyError(f"header {name!r} needs values without NUL")
        encoded_name = name.encode("utf-8")
        value = "\0".join(values).encode("utf-8")
        parts += [struct.pack("!I", len(encoded_name)), encoded_name,
                  struct.pack("!I", len(value)), value]
    return b"".join(parts)


def decode_header_block(block: bytes) -> HeaderMap:
    """Parse an uncompressed header block, as strictly as spdystream does."""
    view = memoryview(block)
    offset = 0

    def take(size: int) -> bytes:
        nonlocal offset
        if offset + size > len(view):
            raise SpdyError("truncated header block")
        chunk = bytes(view[offset:offset + size])
        offset += size
        return chunk

    def take_string() -> str:
        (length,) = struct.unpack("!I", take(4))
        try:
            return take(length).decode("utf-8")
        except UnicodeDecodeError as e:
            raise SpdyError("header block is not UTF-8") from e

    (count,) = struct.unpack("!I", take(4))
    headers: HeaderMap = {}
    for _ in range(count):
        name = take_string()
        if not name or name != name.lower():
            raise SpdyError(f"invalid header name {name!r}")
        if name in headers:
            raise SpdyError(f"duplicate header name {name!r}")
        headers[name] = take_string().split("\0")
    if offset != len(view):
        raise SpdyError("trailing bytes after header block")
    return headers


class HeaderCompressor:
    """Compresses the header blocks of one direction of one connection."""

    def __init__(self) -> None:
        self._zlib = zlib.compressobj(9, zdict=SPDY3_DICTIONARY)

    def compress(self, headers: HeaderMap) -> bytes:
        raw = encode_header_block(headers)
        return self._zlib.compress(raw) + self._zlib.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """Decompresses the header blocks of one direction of one connection.

    Every block of that direction must go through here, in order.
    """

    def __init__(self, max_block: int = MAX_HEADER_BLOCK) -> None:
        self._zlib = zlib.decompressobj(zdict=SPDY3_DICTIONARY)
        self._max_block = max_block

    def decompress(self, compressed: bytes) -> HeaderMap:
        try:
            raw = self._zlib.decompress(compressed, self._max_block + 1)
        except zlib.error as e:
            raise SpdyError(f"corrupt header block: {e}") from e
        if self._zlib.unconsumed_tail or len(raw) > self._max_block:
            raise SpdyError("header block too large")
        if self._zlib.eof:
            raise SpdyError("header compression stream ended")
        return decode_header_block(raw)
