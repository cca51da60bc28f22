"""One canonical request: what the agent classifies, authorizes and forwards.

kubectl's request target arrives as bytes, in an HTTP/1.1 request line or
an HTTP/2 ``:path``. Only origin-form (RFC 9112 3.2.1: an absolute path and
an optional query) is a Kubernetes request; every other spelling is refused
here, before anything reads it as a path:

- absolute-form (``https://x/api/v1/...``): kube-apiserver reads the full
  URL and serves the resource, while a path classifier sees a first segment
  that is not ``api``: the request would be authorized as one thing and
  executed as another;
- authority-form (``host:443``), asterisk-form (``*``), a path starting with
  ``//`` (read as a network-path reference by URL parsers), anything else
  that does not start with ``/``;
- a fragment (``#``), which no client sends;
- control bytes, spaces and bytes above 0x7E, raw or percent-encoded in the
  path (a name never holds them); in the query they are data and only
  allowed percent-encoded;
- a malformed percent-escape, or escapes that do not decode to UTF-8.

The path is percent-decoded once, as the API server's URL parser does, and
classified (``rbac.classify``); the query is split on ``&`` into ordered
pairs. What goes upstream is rebuilt from these values (``target``), never
the bytes received: whatever spelling came in, the API server parses the
path that was classified and the query values that were read (a ``;``, for
instance, is re-encoded, so an API server that splits queries on it too
cannot see a parameter we did not).

Sans-IO and pure: bytes in, a ``CanonicalRequest`` or ``BadRequestTarget``
out.
"""
from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import quote

import attrs

from teleport_py.rbac import RequestInfo, classify

#: Characters left as they are in a rebuilt path: RFC 3986 ``pchar`` and ``/``.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
#: Characters left as they are in a rebuilt query key or value (never
#: ``&`` ``=`` ``+`` ``;`` ``#`` ``%``, which would change how it splits or decodes).
_QUERY_SAFE = ":@!$'()*,/?-._~"
_HEX = re.compile(rb"%[0-9A-Fa-f]{2}")
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://")
#: HTTP method token characters (RFC 9110 5.6.2).
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_AUTHORITY = re.compile(rb"[A-Za-z0-9._~!$&'()*+,;=:\[\]%-]*")


class BadRequestTarget(ValueError):
    """The request is not one the agent forwards; the message says why, for
    the 400 Status kubectl prints."""


@attrs.frozen
class CanonicalRequest:
    """A request as classified: method, decoded path, ordered query pairs,
    the authority it was addressed to, its header fields (names lowercase),
    and what it does (``info``)."""

    method: bytes
    path: str
    query: tuple[tuple[str, str], ...]
    authority: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    info: RequestInfo

    @property
    def target(self) -> bytes:
        """The origin-form target sent upstream, rebuilt from ``info.path``
        (the path that was classified) and ``query``."""
        path = quote(self.info.path, safe=_PATH_SAFE)
        if not self.query:
            return path.encode("ascii")
        query = "&".join(quote(key, safe=_QUERY_SAFE) + "=" + quote(value, safe=_QUERY_SAFE)
                         for key, value in self.query)
        return f"{path}?{query}".encode("ascii")

    @property
    def upgrade(self) -> bool:
        """An HTTP/1.1 upgrade (exec, attach, port-forward)."""
        return any(name == b"connection" and b"upgrade" in value.lower() for name, value in self.headers)

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or ``None``."""
        return next((value for n, value in self.headers if n == name), None)

    @property
    def names_object_in_body(self) -> bool:
        """A create without a name in the path: the name is in the body."""
        info = self.info
        return (self.method == b"POST" and not self.upgrade and info.is_resource_request
                and info.verb == "create" and not info.name)


def canonical_request(method: bytes, target: bytes, authority: bytes,
                      headers: Iterable[tuple[bytes, bytes]]) -> CanonicalRequest:
    """Parse and classify one request; raises ``BadRequestTarget``."""
    if not _TOKEN.fullmatch(method):
        raise BadRequestTarget("malformed request method")
    if not _AUTHORITY.fullmatch(authority):
        raise BadRequestTarget("malformed request authority (Host or :authority)")
    path, query = parse_target(target)
    encoded = quote(path, safe=_PATH_SAFE)
    values: dict[str, list[str]] = {}
    for key, value in query:
        values.setdefault(key, []).append(value)
    info = classify(method.decode("ascii"), encoded, values)
    if info.path != path:  # classify decodes what we encoded: the same path, or we refuse
        raise BadRequestTarget("request path could not be read unambiguously")
    return CanonicalRequest(method=method, path=path, query=query, authority=authority,
                            headers=tuple(headers), info=info)


def parse_target(target: bytes) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``(decoded path, ((key, value), ...))`` of an origin-form target."""
    if not target:
        raise BadRequestTarget("empty request target")
    if any(byte < 0x21 or byte > 0x7E for byte in target):
        raise BadRequestTarget("request target holds control, space or non-ASCII bytes")
    if not target.startswith(b"/"):
        if target == b"*":
            raise BadRequestTarget("asterisk-form request target (*) is not supported")
        if _SCHEME.match(target):
            raise BadRequestTarget("absolute-form request target (a full URL) is not supported: "
                                   "send the path only, as kubectl does")
        raise BadRequestTarget("request target must be a path starting with /")
    if target.startswith(b"//"):
        raise BadRequestTarget("request target must not start with //")
    if b"#" in target:
        raise BadRequestTarget("request target holds a fragment (#)")
    raw_path, _, raw_query = target.partition(b"?")
    path = _decode(raw_path, "path")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise BadRequestTarget("request path holds percent-encoded control bytes")
    return path, _query_pairs(raw_query)


def _query_pairs(raw: bytes) -> tuple[tuple[str, str], ...]:
    pairs = []
    for piece in raw.split(b"&"):
        if not piece:
            continue
        key, _, value = piece.partition(b"=")
        pairs.append((_decode(key.replace(b"+", b" "), "query"), _decode(value.replace(b"+", b" "), "query")))
    return tuple(pairs)


def _decode(raw: bytes, part: str) -> str:
    """Strict percent-decoding: every ``%`` starts an escape, and the result is UTF-8."""
    if raw.count(b"%") != len(_HEX.findall(raw)):
        raise BadRequestTarget(f"malformed percent-encoding in the request {part}")
    decoded = _HEX.sub(lambda m: bytes([int(m.group()[1:], 16)]), raw)
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestTarget(f"request {part} is not UTF-8 once percent-decoded") from None

