"""Access requests (Teleport's just-in-time access), stored as
``/access_requests/<id>``.

A user asks for roles their roles' ``allow.request.roles`` name (and no
``deny.request.roles`` names), or for Kubernetes resources (Teleport
resource ids) a role they may search as (``allow.request.search_as_roles``)
grants, which become the request's roles; users whose ``allow.review_requests.roles``
cover every requested role review it, never the requester; enough
approvals (the requester's roles' ``thresholds``, one by default) approve
it, enough denials deny it. ``tctl requests approve|deny`` sets the state
outright. An approved request lets its user reissue certificates carrying
its roles, and its resource ids as the only resources they reach
(``user_certificates``), until ``access_expires``.

Time decides two states on its own: a request nobody settled lapses at
``expires``, approved access ends at ``access_expires``. Both read as
EXPIRED at once; ``expire_due`` (run every few seconds by the Auth service)
writes that down and audits ``access_request.expire``. A request stays
readable for ``RETAIN`` seconds after its access would have ended.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any, Iterable

import attrs
from twisted.logger import Logger

from teleport_py import events
from teleport_py.auth.audit import AuditLog
from teleport_py.auth.authorizer import Authorizer
from teleport_py.auth.errors import AccessDenied, BadParameter, NotFound
from teleport_py.auth.services.common import Identity, to_json, utc_now
from teleport_py.auth.services.kube_servers import KubeServers
from teleport_py.auth.services.locks import Locks
from teleport_py.auth.services.roles import Roles
from teleport_py.auth.services.users import Users
from teleport_py.pki import UserIdentity
from teleport_py.rbac import AccessChecker
from teleport_py.rbac.match import InvalidPattern, match_any
from teleport_py.resources import Role, resource_from_dict, resource_to_dict
from teleport_py.resources.access_request import (
    APPROVED,
    DENIED,
    EXPIRED,
    PENDING,
    REVIEW_STATES,
    AccessRequest,
    AccessReview,
)
from teleport_py.resource_ids import ResourceID, resource_ids
from teleport_py.resources.role import RequestThreshold, allowed_search_as_roles

PREFIX = "/access_requests/"
#: Seconds a request stays readable after its access (or its wait) ended.
RETAIN = 3600.0
#: How long a request may wait for its reviews at most (Teleport: one week).
MAX_PENDING = 7 * 24 * 3600.0
MAX_REQUESTED_ROLES = 32
MAX_REQUESTED_RESOURCES = 32
#: How often the Auth service writes down requests that time has expired.
EXPIRY_INTERVAL = 2.0


def _matches(patterns: Iterable[str], value: str) -> bool:
    """Fail closed: a broken pattern matches on the deny side (callers ask
    ``allowed and not denied``), so treat it as matching everywhere."""
    try:
        return match_any(tuple(patterns), value)
    except InvalidPattern:
        return True


def _allows(roles: list[Role], field: str, wanted: str) -> bool:
    """Whether ``allow.<field>.roles`` of some role names ``wanted`` and no
    ``deny.<field>.roles`` does (deny wins; an invalid allow pattern allows nothing)."""
    denied = any(_matches(getattr(r.deny, field).roles, wanted) for r in roles)
    allowed = False
    for role in roles:
        try:
            allowed = allowed or match_any(getattr(role.allow, field).roles, wanted)
        except InvalidPattern:
            pass
    return allowed and not denied


def current_state(request: AccessRequest, now: datetime) -> str:
    """The state as time has it: a lapsed wait or ended access is EXPIRED."""
    if request.state == PENDING and now >= request.expires:
        return EXPIRED
    if request.state == APPROVED and now >= request.access_expires:
        return EXPIRED
    return request.state


@attrs.frozen
class AccessRequests:
    log = Logger()

    _reactor: Any
    _backend: Any
    _authorizer: Authorizer
    _roles: Roles
    _users: Users
    _locks: Locks
    _audit: AuditLog
    _kube_servers: KubeServers
    #: This Teleport cluster's name: the only one resource ids may name.
    _cluster_name: str

    # -- storage ------------------------------------------------------------

    async def _load(self, request_id: str) -> tuple[AccessRequest, bytes]:
        if not request_id or "/" in request_id:
            raise BadParameter(f"invalid access request id {request_id!r}")
        item = await self._backend.get(PREFIX + request_id)
        if item is None:
            raise NotFound(f'access request "{request_id}" not found')
        return resource_from_dict(json.loads(item.value)), item.value

    async def _store(self, request: AccessRequest, expected: bytes | None) -> bool:
        value = to_json(resource_to_dict(request))
        expires = request.access_expires.timestamp() + RETAIN
        if expected is None:
            return await self._backend.create(PREFIX + request.name, value, expires=expires) is not None
        return await self._backend.compare_and_swap(PREFIX + request.name, expected, value, expires=expires) is not None

    def _view(self, request: AccessRequest) -> dict[str, Any]:
        doc = resource_to_dict(request)
        doc["spec"]["state"] = current_state(request, utc_now(self._reactor))
        return doc

    # -- for the other services -----------------------------------------------

    async def approved(self, username: str, request_ids: Iterable[str]) -> list[AccessRequest]:
        """The named requests, each the user's own and approved now; anything
        else refuses the whole certificate."""
        now = utc_now(self._reactor)
        requests = []
        for request_id in request_ids:
            try:
                request, _ = await self._load(request_id)
            except NotFound:
                raise AccessDenied(f'access request "{request_id}" not found') from None
            if request.user != username:
                raise AccessDenied(f'access request "{request_id}" belongs to another user')
            state = current_state(request, now)
            if state != APPROVED:
                raise AccessDenied(f'access request "{request_id}" is {state}, not APPROVED')
            requests.append(request)
        return requests

    # -- callers ---------------------------------------------------------------

    async def create(self, caller: Identity, roles: list[str], reason: str,
                     resources: list[str] | tuple = ()) -> dict[str, Any]:
        """``tsh request create``: a PENDING request for ``roles`` (each one
        the caller's ``allow.request.roles`` name) and/or for ``resources``
        (Teleport resource ids, each one a role the caller may search as,
        ``allow.request.search_as_roles``, would grant; those roles become the
        request's roles, and the certificate it gives reaches only those
        resources)."""
        if not isinstance(caller, UserIdentity):
            raise AccessDenied("only users can request access")
        if not roles and not resources:
            raise BadParameter("name at least one role (--roles) or resource (--resource) to request")
        if len(roles) > MAX_REQUESTED_ROLES:
            raise BadParameter(f"roles: at most {MAX_REQUESTED_ROLES} roles in one request")
        if len(resources) > MAX_REQUESTED_RESOURCES:
            raise BadParameter(f"resources: at most {MAX_REQUESTED_RESOURCES} resources in one request")
        try:
            wanted_resources = resource_ids(resources)
        except (ValueError, TypeError) as e:
            raise BadParameter(f"resources: {e}") from None
        user = await self._users.get(caller.username)
        await self._locks.check(user.name, (*user.roles, *caller.roles))
        held = await self._roles.get_many(user.roles)
        wanted = sorted(set(roles))
        for name in wanted:
            if name in user.roles:
                raise BadParameter(f'you already hold role "{name}"')
            if not _allows(held, "request", name):
                raise AccessDenied(f'your roles do not allow requesting role "{name}"')
        await self._roles.require_exist(wanted)
        search_roles = await self._search_roles_for(user, held, wanted_resources)
        granting = [r for r in held
                    if any(_matches(r.allow.request.roles, name) for name in wanted)
                    or any(name in r.allow.request.search_as_roles for name in search_roles)]
        thresholds = tuple(t for r in granting for t in r.allow.request.thresholds) or (RequestThreshold(),)
        now = utc_now(self._reactor)
        durations = [r.allow.request.max_duration for r in granting if r.allow.request.max_duration]
        access_expires = now + timedelta(seconds=min(durations)) if durations else caller.expires
        access_expires = max(access_expires, now + timedelta(seconds=1)).replace(microsecond=0)
        request = AccessRequest(
            name=str(uuid.uuid4()),
            user=caller.username,
            state=PENDING,
            created=now.replace(microsecond=0),
            expires=min(access_expires, caller.expires, now + timedelta(seconds=MAX_PENDING)),
            access_expires=access_expires,
            roles=tuple(wanted + [name for name in search_roles if name not in wanted]),
            resource_ids=wanted_resources,
            request_reason=reason,
            thresholds=thresholds,
        )
        await self._store(request, None)
        await self._audit.emit(
            events.ACCESS_REQUEST_CREATE, user=caller.username, id=request.name, roles=list(request.roles),
            resource_ids=[str(r) for r in wanted_resources] or None,
            reason=reason or None, state=PENDING, expires=request.access_expires.isoformat(),
        )
        return self._view(request)

    async def _search_roles_for(self, user, held: list[Role], wanted: tuple[ResourceID, ...]) -> list[str]:
        """The roles the user may search as that grant something on each
        wanted resource (Teleport prunes a resource request's roles the
        same way); refused when some resource no such role grants."""
        if not wanted:
            return []
        names = allowed_search_as_roles(held)
        if not names:
            raise AccessDenied("your roles allow no resource requests (no allow.request.search_as_roles)")
        search_roles = await self._roles.get_many(names)
        clusters = await self._kube_servers.clusters()
        granting: set[str] = set()
        for resource in wanted:
            if resource.cluster != self._cluster_name:
                raise BadParameter(f'resource "{resource}": this is Teleport cluster "{self._cluster_name}", '
                                   f'not "{resource.cluster}"')
            labels = clusters.get(resource.name)
            found = [] if labels is None else [
                role.name for role in search_roles
                if AccessChecker(user.name, [role], user.traits).requestable(resource, labels)]
            if not found:
                # The same answer for a missing cluster or pod: reveal nothing.
                raise AccessDenied(f'your roles do not allow requesting resource "{resource}" '
                                   "(see 'tsh request search')")
            granting.update(found)
        return sorted(granting)

    async def _may_review(self, caller: Identity, request: AccessRequest) -> bool:
        if not isinstance(caller, UserIdentity) or caller.username == request.user:
            return False
        held = await self._roles.get_many(caller.roles)
        return all(_allows(held, "review_requests", name) for name in request.roles)

    async def _may_see_all(self, caller: Identity, verb: str) -> bool:
        try:
            await self._authorizer.check(caller, "access_request", verb)
        except AccessDenied:
            return False
        return True

    async def list(self, caller: Identity) -> list[dict[str, Any]]:
        """Everything for admins and holders of an ``access_request`` list
        rule; otherwise the caller's own requests and those they may review."""
        return (await self.listing(caller))["items"]

    async def listing(self, caller: Identity) -> dict[str, Any]:
        """``list``'s items, oldest first, and ``reviewable``: the ids of
        those the caller may review now (PENDING, not their own, their
        ``review_requests`` cover every role), by the rules ``review`` applies,
        so a web page offers only the reviews Auth would take."""
        see_all = await self._may_see_all(caller, "list")
        now = utc_now(self._reactor)
        items, reviewable = [], []
        for item in await self._backend.get_range(PREFIX):
            request = resource_from_dict(json.loads(item.value))
            mine = isinstance(caller, UserIdentity) and request.user == caller.username
            may_review = await self._may_review(caller, request)
            if see_all or mine or may_review:
                items.append(self._view(request))
                already = isinstance(caller, UserIdentity) and any(
                    r.author == caller.username for r in request.reviews)
                if may_review and not already and current_state(request, now) == PENDING:
                    reviewable.append(request.name)
        items.sort(key=lambda doc: doc["spec"]["created"])
        return {"items": items, "reviewable": reviewable}

    async def get(self, caller: Identity, request_id: str) -> dict[str, Any]:
        request, _ = await self._load(request_id)
        mine = isinstance(caller, UserIdentity) and request.user == caller.username
        if not (mine or await self._may_see_all(caller, "read") or await self._may_review(caller, request)):
            raise NotFound(f'access request "{request_id}" not found')
        return self._view(request)

    async def review(self, caller: Identity, request_id: str, proposed: str, reason: str) -> dict[str, Any]:
        """``tsh request review``: one reviewer's approval or denial; the
        request is settled once the thresholds are met."""
        if proposed not in REVIEW_STATES:
            raise BadParameter(f"state: must be one of {', '.join(REVIEW_STATES)}")
        while True:
            request, stored = await self._load(request_id)
            if isinstance(caller, UserIdentity) and caller.username == request.user:
                raise AccessDenied("you cannot review your own access request")
            if not await self._may_review(caller, request):
                raise AccessDenied(f'your roles do not allow reviewing requests for {", ".join(request.roles)}')
            state = current_state(request, utc_now(self._reactor))
            if state != PENDING:
                raise BadParameter(f'access request "{request_id}" is already {state}')
            if any(r.author == caller.username for r in request.reviews):
                raise BadParameter(f'you have already reviewed access request "{request_id}"')
            now = utc_now(self._reactor).replace(microsecond=0)
            reviews = request.reviews + (AccessReview(caller.username, proposed, reason, now),)
            updated = attrs.evolve(request, reviews=reviews)
            needed_approvals = max(t.approve for t in request.thresholds or (RequestThreshold(),))
            needed_denials = min(t.deny for t in request.thresholds or (RequestThreshold(),))
            if updated.count(DENIED) >= needed_denials:
                updated = attrs.evolve(updated, state=DENIED, resolve_reason=reason)
            elif updated.count(APPROVED) >= needed_approvals:
                updated = attrs.evolve(updated, state=APPROVED, resolve_reason=reason)
            if await self._store(updated, stored):
                break
        await self._audit.emit(
            events.ACCESS_REQUEST_REVIEW, user=caller.username, id=request_id, requester=request.user,
            proposed_state=proposed, reason=reason or None, state=updated.state,
        )
        return self._view(updated)

    async def resolve(self, caller: Identity, request_id: str, state: str, reason: str) -> dict[str, Any]:
        """``tctl requests approve|deny``: set the state outright (an
        ``access_request`` update rule, or tctl's admin identity)."""
        if state not in REVIEW_STATES:
            raise BadParameter(f"state: must be one of {', '.join(REVIEW_STATES)}")
        await self._authorizer.check(caller, "access_request", "update")
        while True:
            request, stored = await self._load(request_id)
            if isinstance(caller, UserIdentity) and caller.username == request.user and state == APPROVED:
                raise AccessDenied("you cannot approve your own access request")
            current = current_state(request, utc_now(self._reactor))
            if current != PENDING:
                raise BadParameter(f'access request "{request_id}" is already {current}')
            updated = attrs.evolve(request, state=state, resolve_reason=reason)
            if await self._store(updated, stored):
                break
        await self._audit.emit(
            events.ACCESS_REQUEST_UPDATE, user=self._authorizer.actor(caller), id=request_id, requester=request.user,
            state=state, reason=reason or None,
        )
        return self._view(updated)

    async def expire_due(self) -> int:
        """Write EXPIRED on every request time has expired, audit each once."""
        now = utc_now(self._reactor)
        expired = 0
        for item in await self._backend.get_range(PREFIX):
            request = resource_from_dict(json.loads(item.value))
            if request.state == EXPIRED or current_state(request, now) != EXPIRED:
                continue
            if await self._store(attrs.evolve(request, state=EXPIRED), item.value):
                expired += 1
                await self._audit.emit(
                    events.ACCESS_REQUEST_EXPIRE, user=request.user, id=request.name, roles=list(request.roles),
                    resource_ids=[str(r) for r in request.resource_ids] or None, previous_state=request.state,
                )
        return expired


def expires_at(requests: Iterable[AccessRequest]) -> datetime | None:
    """When the earliest of ``requests`` ends its access."""
    ends = [r.access_expires for r in requests]
    return min(ends) if ends else None
