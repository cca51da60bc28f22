"""The ``access_request`` resource: a user's request for more roles, or for
named Kubernetes resources, for a while, and the reviews that settle it.

As Teleport writes it: ``metadata.name`` is the request id, ``metadata.expires``
when a request nobody settled lapses, ``spec.expires`` when the access it
grants ends. Requested resources are Teleport resource ids,
``/<teleport-cluster>/<kind>/<kube-cluster>[/<namespace>[/<pod>]]``.
"""
from __future__ import annotations

from datetime import datetime

import attrs

from teleport_py.resource_ids import ResourceID
from teleport_py.resources.role import RequestThreshold

PENDING = "PENDING"
APPROVED = "APPROVED"
DENIED = "DENIED"
EXPIRED = "EXPIRED"
STATES = (PENDING, APPROVED, DENIED, EXPIRED)
#: The states a review may propose.
REVIEW_STATES = (APPROVED, DENIED)


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
