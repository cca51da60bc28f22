"""Teleport resource ids: what a resource access request names and what an
elevated certificate allows, ``/<teleport-cluster>/<kind>/<kube-cluster>[/...]``.

As Teleport writes them for Kubernetes: ``/<tc>/kube_cluster/<kube>`` (the
whole cluster, as the requester's roles allow it), ``/<tc>/namespace/<kube>/<ns>``
(everything in one namespace) and ``/<tc>/pod/<kube>/<ns>/<pod>`` (one pod).
Names are literal: no globs, no regular expressions.
"""
from __future__ import annotations

import re

import attrs

KUBE_CLUSTER = "kube_cluster"
NAMESPACE = "namespace"
POD = "pod"
#: Kinds a resource request may name, and how many path parts follow the
#: kube cluster name: ``kube_cluster`` none, ``namespace`` one, ``pod`` two.
RESOURCE_KINDS = {KUBE_CLUSTER: 0, NAMESPACE: 1, POD: 2}
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_MAX_PART = 253
FORM = "expected /<teleport-cluster>/pod/<kube-cluster>/<namespace>/<pod> (or kind namespace or kube_cluster)"


@attrs.frozen
class ResourceID:
    """One requested resource; ``sub_resource`` is ``<namespace>`` for a
    namespace and ``<namespace>/<pod>`` for a pod, as Teleport stores it."""

    cluster: str
    kind: str
    name: str
    sub_resource: str = ""

    def __str__(self) -> str:
        text = f"/{self.cluster}/{self.kind}/{self.name}"
        return f"{text}/{self.sub_resource}" if self.sub_resource else text

    @property
    def namespace(self) -> str:
        return self.sub_resource.split("/", 1)[0] if self.sub_resource else ""

    @property
    def pod(self) -> str:
        return self.sub_resource.split("/", 1)[1] if self.kind == POD else ""


def parse_resource_id(text: str) -> ResourceID:
    """``/<teleport-cluster>/<kind>/<kube-cluster>[/...]`` as a ResourceID;
    ValueError naming what is wrong and the form expected."""
    if not isinstance(text, str) or not text.startswith("/"):
        raise ValueError(f"resource id must start with '/': {FORM}")
    parts = text[1:].split("/")
    if len(parts) < 3:
        raise ValueError(f"resource id {text!r} is too short: {FORM}")
    cluster, kind, name, rest = parts[0], parts[1], parts[2], parts[3:]
    if kind not in RESOURCE_KINDS:
        raise ValueError(f"resource kind {kind!r} cannot be requested (use one of: {', '.join(RESOURCE_KINDS)})")
    if len(rest) != RESOURCE_KINDS[kind]:
        raise ValueError(f"resource id {text!r}: {FORM}")
    for part in (cluster, name, *rest):
        if len(part) > _MAX_PART or not _PART.fullmatch(part):
            raise ValueError(f"resource id {text!r}: invalid name {part[:64]!r}")
    return ResourceID(cluster=cluster, kind=kind, name=name, sub_resource="/".join(rest))


def resource_ids(values) -> tuple[ResourceID, ...]:
    """Ids or their text, as ResourceIDs, duplicates dropped, order kept; ValueError on any bad one."""
    if isinstance(values, (str, bytes)):
        raise TypeError("expected a sequence of resource ids, not a single string")
    parsed = (v if isinstance(v, ResourceID) else parse_resource_id(v) for v in values)
    return tuple(dict.fromkeys(parsed))


def requested_resources(spec: dict) -> list[str]:
    """The resource ids of an ``access_request`` document's spec
    (``requested_resource_ids``, Teleport's layout) as text, for listings;
    anything that is not such an entry is skipped."""
    ids = []
    for item in spec.get("requested_resource_ids") or []:
        if isinstance(item, dict):
            text = "/" + "/".join(str(item.get(k, "")) for k in ("cluster", "kind", "name"))
            ids.append(f"{text}/{item['sub_resource']}" if item.get("sub_resource") else text)
    return ids
