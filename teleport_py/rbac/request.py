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
        verb = _VERB_BY_METHOD.get(method.upper(), "")
    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0]
    name = parts[1] if len(parts) > 1 else ""
    subresource = parts[2] if len(parts) > 2 and verb != "proxy" else ""
    if not name and verb == "get":
        verb = "watch" if _is_watch(query) else "list"
        name = _name_from_field_selector(query)
    if not name and verb == "delete":
        verb = "deletecollection"
    if resource == "pods" and api_group == "" and subresource in _SUBRESOURCE_VERBS:
        verb = _SUBRESOURCE_VERBS[subresource]
    return attrs.evolve(
        info, verb=verb, resource=resource, subresource=subresource, namespace=namespace, name=name
    )


def _is_watch(query: Mapping[str, Sequence[str]]) -> bool:
    """Kubernetes' bool query conversion: only ``false`` and ``0`` mean false."""
    values = query.get("watch", ())
    return bool(values) and values[0].lower() not in _FALSE_VALUES


def _name_from_field_selector(query: Mapping[str, Sequence[str]]) -> str:
    """``kubectl get pod x -w`` lists with ``fieldSelector=metadata.name=x``.

    Kubernetes narrows such a list to one name; so do we, so that a rule for
    that one object allows the watch.
    """
    values = query.get("fieldSelector", ())
    if not values:
        return ""
    for term in values[0].split(","):
        for operator in ("==", "="):
            key, found, value = term.partition(operator)
            if found:
                if key.strip() == "metadata.name" and _is_path_segment(value.strip()):
                    return value.strip()
                break
    return ""


def _is_path_segment(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "%" not in name
