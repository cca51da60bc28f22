"""The ``access_request`` resource: a user's request for more roles, or for
named Kubernetes resources, for a while, and the reviews that settle it.

As Teleport writes it: ``metadata.name`` is the request id, ``metadata.expires``
when a request nobody settled lapses, ``spec.expires`` when the access it
grants ends. Requested resources are Teleport resource ids,
``/<teleport-cluster>/<kind>/<kube-cluster>[/<namespace>[/<pod>]]``.
"""
from __future__ import annotations

import re
from datetime import datetime

import attrs

from teleport_py.resources.role import RequestThreshold

PENDING = "PENDING"
APPROVED = "APPROVED"
DENIED = "DENIED"
EXPIRED = "EXPIRED"
STATES = (PENDING, APPROVED, DENIED, EXPIRED)
#: The states a review may propose.
REVIEW_STATES = (APPROVED, DENIED)

#: Kinds a resource request may name, and how many path parts follow the
#: kube cluster name: ``kube_cluster`` none, ``namespace`` one, ``pod`` two.
RESOURCE_KINDS = {"kube_cluster": 0, "namespace": 1, "pod": 2}
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_MAX_PART = 253


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
        return self.sub_resource.split("/", 1)[1] if self.kind == "pod" else ""


def parse_resource_id(text: str) -> ResourceID:
    """``/<teleport-cluster>/<kind>/<kube-cluster>[/...]`` as a ResourceID;
    ValueError naming what is wrong and the form expected."""
    form = "expected /<teleport-cluster>/pod/<kube-cluster>/<namespace>/<pod> (or kind namespace or kube_cluster)"
    if not isinstance(text, str) or not text.startswith("/"):
        raise ValueError(f"resource id must start with '/': {form}")
    parts = text[1:].split("/")
    if len(parts) < 3:
        raise ValueError(f"resource id {text!r} is too short: {form}")
    cluster, kind, name, rest = parts[0], parts[1], parts[2], parts[3:]
    if kind not in RESOURCE_KINDS:
        raise ValueError(f"resource kind {kind!r} cannot be requested (use one of: {', '.join(RESOURCE_KINDS)})")
    if len(rest) != RESOURCE_KINDS[kind]:
        raise ValueError(f"resource id {text!r}: {form}")
    for part in (cluster, name, *rest):
        if len(part) > _MAX_PART or not _PART.fullmatch(part):
            raise ValueError(f"resource id {text!r}: invalid name {part[:64]!r}")
    return ResourceID(cluster=cluster, kind=kind, name=name, sub_resource="/".join(rest))


@attrs.frozen
class AccessReview:
    author: str
    proposed_state: str
    reason: str
    created: datetime


@attrs.frozen
class AccessRequest:
    name: str
    user: str
    state: str
    created: datetime
    #: When the request lapses if nobody settles it.
    expires: datetime
    #: When the access it grants ends.
    access_expires: datetime
    roles: tuple[str, ...] = ()
    resource_ids: tuple[ResourceID, ...] = ()
    request_reason: str = ""
    resolve_reason: str = ""
    reviews: tuple[AccessReview, ...] = ()
    #: The reviews needed to settle it, from the requester's roles.
    thresholds: tuple[RequestThreshold, ...] = ()

    def count(self, state: str) -> int:
        return sum(1 for review in self.reviews if review.proposed_state == state)
