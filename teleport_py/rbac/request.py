"""Classify a kubectl HTTP request the way the Kubernetes API server does.

The agent authorizes what the API server will execute, so this follows
Kubernetes' ``RequestInfoFactory`` path grammar::

    /api/VERSION/...            core group ("")
    /apis/GROUP/VERSION/...     named groups
    .../namespaces/NS/RESOURCE/NAME/SUBRESOURCE

and then maps the Kubernetes verb to the verbs Teleport roles speak
(``exec`` and ``portforward`` are verbs of their own there).

Pure function, never raises: a path it cannot make sense of becomes a resource
request with an empty resource, which the checker refuses.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence
from urllib.parse import unquote

import attrs

_VERB_BY_METHOD = {
    "GET": "get",
    "HEAD": "get",
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
#: Legacy ``/api/v1/watch/...`` and ``/api/v1/proxy/...`` prefixes.
_SPECIAL_VERBS = frozenset({"watch", "proxy"})
#: Subresources of a namespace object (``/api/v1/namespaces/NS/status``).
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
#: Pod subresources that are Teleport verbs rather than HTTP verbs.
_SUBRESOURCE_VERBS = {"exec": "exec", "attach": "exec", "portforward": "portforward"}
_FALSE_VALUES = frozenset({"false", "0"})


@attrs.frozen
class RequestInfo:
    """What a request does, in Kubernetes terms.

    ``namespace`` is set for a namespace object itself (``GET
    /api/v1/namespaces/dev`` has namespace and name ``dev``), as Kubernetes
    does. ``path`` is the decoded path that was classified.
    """

    verb: str
    api_group: str = ""
    api_version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    is_resource_request: bool = False
    path: str = "/"


def classify(method: str, path: str, query: Mapping[str, Sequence[str]]) -> RequestInfo:
    """Classify one request; ``path`` may be percent-encoded, ``query`` is parsed."""
    path = unquote(path)
    parts = path.strip("/").split("/")
    is_api_path = parts[0] in ("api", "apis")
    refused = RequestInfo(verb="", is_resource_request=True, path=path)
    if "." in parts or ".." in parts or (is_api_path and "" in parts):
        # Dot segments or empty segments could make the API server see a
        # different resource than this parser: refuse instead of guessing.
        return refused
    if not is_api_path or len(parts) < (4 if parts[0] == "apis" else 3):
        return RequestInfo(verb=method.lower(), path=path)
    if parts[0] == "apis":
        api_group, parts = parts[1], parts[2:]
    else:
        api_group, parts = "", parts[1:]
    info = attrs.evolve(refused, api_group=api_group, api_version=parts[0])
    parts = parts[1:]
    if parts[0] in _SPECIAL_VERBS:
        if len(parts) < 2:
            return info
        verb, parts = parts[0], parts[1:]
    else:
        verb = _VERB_BY_METHOD.get(method, "")  # methods are case-sensitive (Go switches on req.Method)
    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0]
    name = parts[1] if len(parts) > 1 else ""
    subresource = parts[2] if len(parts) > 2 and verb != "proxy" else ""
    if not name and verb == "get":
        options_valid = _list_options_valid(query)
        verb = "watch" if _is_watch(query, options_valid) else "list"
        if options_valid:
            name = _name_from_field_selector(query)
    if not name and verb == "delete":
        verb = "deletecollection"
    if resource == "pods" and api_group == "" and subresource in _SUBRESOURCE_VERBS:
        verb = _SUBRESOURCE_VERBS[subresource]
    return attrs.evolve(
        info, verb=verb, resource=resource, subresource=subresource, namespace=namespace, name=name
    )


def _is_watch(query: Mapping[str, Sequence[str]], options_valid: bool) -> bool:
    """Kubernetes' bool query conversion: only ``0`` and ``false`` mean
    false, ``false`` compared with Go's ``strings.EqualFold`` (so ``falſe``,
    with a long s, is false too). When the list options do not decode, the
    API server looks at ``watch`` again with ``strings.ToLower`` (there
    ``falſe`` is true)."""
    values = query.get("watch", ())
    if not values:
        return False
    value = values[0]
    if options_valid:
        return not (value == "0" or _equal_fold(value, "false"))
    return value.lower() not in _FALSE_VALUES


#: Go's simple case folding of the letters of "false": each rune matches the
#: runes of its fold orbit (``s``, ``S`` and U+017F LATIN SMALL LETTER LONG S).
_FOLD_ORBITS = {"f": "fF", "a": "aA", "l": "lL", "s": "sS\u017f", "e": "eE"}


def _equal_fold(value: str, ascii_word: str) -> bool:
    return len(value) == len(ascii_word) and all(c in _FOLD_ORBITS[w] for c, w in zip(value, ascii_word))


def _list_options_valid(query: Mapping[str, Sequence[str]]) -> bool:
    """Whether the API server's ListOptions decoding of the query succeeds
    (its RequestInfo takes a name from ``fieldSelector`` only then): the
    integers parse (Go's ``strconv.ParseInt``) and both selectors parse."""
    for key in ("timeoutSeconds", "limit"):
        values = query.get(key, ())
        if values and not _is_go_int64(values[0]):
            return False
    values = query.get("labelSelector", ())
    if values and not _label_selector_valid(values[0]):
        return False
    values = query.get("fieldSelector", ())
    return not values or _parse_field_selector(values[0]) is not None


def _is_go_int64(text: str) -> bool:
    digits = text[1:] if text[:1] in ("+", "-") else text
    return digits.isascii() and digits.isdigit() and -(2**63) <= int(text) < 2**63


#: Kubernetes' label selector lexer: its operator tokens, longest first, and
#: the bytes that end an identifier.
_LABEL_SYMBOLS = ("!=", "==", "=", "!", "(", ")", ",", ">", "<")
_LABEL_SPECIAL = frozenset("=!(),><")
_LABEL_SPACE = frozenset(" \t\r\n")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _label_tokens(selector: str) -> list[str] | None:
    """Tokens of ``labels.Parse``'s lexer (``in``/``notin`` stay words), or
    None on a symbol run it has no token for. Its reader stops at a NUL."""
    selector = selector.split("\0", 1)[0]
    tokens, i = [], 0
    while i < len(selector):
        c = selector[i]
        if c in _LABEL_SPACE:
            i += 1
        elif c in _LABEL_SPECIAL:
            # The longest run of symbols that is a token, as the lexer scans it.
            symbol = next((t for t in _LABEL_SYMBOLS if selector.startswith(t, i)), None)
            if symbol is None:
                return None
            tokens.append(symbol)
            i += len(symbol)
        else:
            start = i
            while i < len(selector) and selector[i] not in _LABEL_SPACE and selector[i] not in _LABEL_SPECIAL:
                i += 1
            tokens.append(selector[start:i])
    return tokens


def _label_selector_valid(selector: str) -> bool:
    """Whether Kubernetes' ``labels.Parse`` accepts ``selector``:
    requirements ``key``, ``!key``, ``key op value`` (``=``, ``==``, ``!=``,
    ``>``/``<`` with an integer), ``key in|notin (v, ...)``, separated by
    commas; keys qualified names, values label values."""
    tokens = _label_tokens(selector)
    if tokens is None:
        return False
    pos, end = 0, len(tokens)

    def word(t: str) -> bool:
        return t not in _LABEL_SYMBOLS
    while pos < end:
        negated = tokens[pos] == "!"
        pos += negated
        if pos >= end or not word(tokens[pos]) or not _is_label_key(tokens[pos]):
            return False
        pos += 1
        if pos == end or tokens[pos] == ",":
            pass  # exists / does not exist
        elif negated:
            return False
        else:
            operator = tokens[pos]
            pos += 1
            if operator in ("in", "notin"):
                if pos >= end or tokens[pos] != "(":
                    return False
                pos += 1
                while pos < end and tokens[pos] != ")":
                    if word(tokens[pos]):
                        if not _is_label_value(tokens[pos]):
                            return False
                        pos += 1
                        if pos < end and tokens[pos] not in (",", ")"):
                            return False
                    elif tokens[pos] == ",":
                        pos += 1
                    else:
                        return False
                if pos >= end:
                    return False
                pos += 1
            elif operator in ("=", "==", "!=", ">", "<"):
                value = ""
                if pos < end and tokens[pos] != ",":
                    if not word(tokens[pos]):
                        return False
                    value = tokens[pos]
                    pos += 1
                if operator in (">", "<") and not _is_go_int64(value):
                    return False
                if not _is_label_value(value):
                    return False
            else:
                return False
        if pos < end:
            if tokens[pos] != "," or pos + 1 >= end or not (word(tokens[pos + 1]) or tokens[pos + 1] == "!"):
                return False
            pos += 1
    return True


def _is_label_key(key: str) -> bool:
    """``validation.IsQualifiedName``: ``[prefix/]name``."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_LABEL_NAME.fullmatch(name))


def _is_label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and bool(_LABEL_NAME.fullmatch(value)))


_FIELD_OPERATORS = ("!=", "==", "=")


def _parse_field_selector(selector: str) -> list[tuple[str, str, str]] | None:
    """``(field, operator, value)`` terms as Kubernetes' ``fields.ParseSelector``
    reads them, in its order (the terms sorted as written), or None where it
    fails. Terms split at commas not escaped by a backslash; each term splits
    at the first operator, looking for ``!=``, ``==`` then ``=`` at each
    position; the field is kept as written (no trimming); the value is
    unescaped (``\\``, ``\,``, ``\=``; any other escape, or a bare ``,``
    or ``=``, fails)."""
    terms, start, escaped = [], 0, False
    for i, c in enumerate(selector):
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == ",":
            terms.append(selector[start:i])
            start = i + 1
    terms.append(selector[start:])
    parsed = []
    for term in sorted(terms):
        if not term:
            continue
        split = next(((term[:i], op, term[i + len(op):]) for i in range(len(term))
                      for op in _FIELD_OPERATORS if term.startswith(op, i)), None)
        if split is None:
            return None
        value = _unescape_field_value(split[2])
        if value is None:
            return None
        parsed.append((split[0], split[1], value))
    return parsed


def _unescape_field_value(value: str) -> str | None:
    out, escaped = [], False
    for c in value:
        if escaped:
            if c not in "\\,=":
                return None
            out.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c in ",=":
            return None
        else:
            out.append(c)
    return None if escaped else "".join(out)


def _name_from_field_selector(query: Mapping[str, Sequence[str]]) -> str:
    """``kubectl get pod x -w`` lists with ``fieldSelector=metadata.name=x``.

    Kubernetes narrows such a list to one name (``RequiresExactMatch``: the
    first ``metadata.name`` term with ``=`` or ``==`` in the parsed order,
    kept if it is a valid path segment name); so do we, so that a rule for
    that one object allows the watch.
    """
    values = query.get("fieldSelector", ())
    terms = _parse_field_selector(values[0]) if values else None
    for field, operator, value in terms or ():
        if field == "metadata.name" and operator != "!=":
            return value if _is_path_segment(value) else ""
    return ""


def _is_path_segment(name: str) -> bool:
    """Kubernetes' ``IsValidPathSegmentName`` (an empty name is no name)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "%" not in name
