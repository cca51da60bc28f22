"""Users' certificates: password login (relayed by the proxy, throttled by
``auth.ratelimit``) and reissue for a user who already holds one. A
certificate lives no longer than the user's roles allow (``max_session_ttl``)
and names a kube cluster only if the roles reach it."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attr
from twisted.internet import threads
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from teleport_py import events
from teleport_py.auth.audit import AuditLog
from teleport_py.auth.authorizer import Authorizer
from teleport_py.auth.errors import AccessDenied, BadParameter, LimitExceeded, NotFound
from teleport_py.auth.password_hashing import verify_password
from teleport_py.auth.ratelimit import LoginLimiter, Throttled
from teleport_py.auth.services.access_requests import AccessRequests
from teleport_py.auth.services.authorities import CertificateAuthorities
from teleport_py.auth.services.common import Identity, load_public_key, utc_now
from teleport_py.auth.services.kube_servers import KubeServers
from teleport_py.auth.services.locks import Locks
from teleport_py.auth.services.roles import Roles
from teleport_py.auth.services.users import Users
from teleport_py.pki import UserIdentity, certificate_pem
from teleport_py.resources import User

DEFAULT_USER_CERT_TTL = 12 * 3600.0


@attr.s(frozen=True, auto_attribs=True)
class UserCertificates:
    log = Logger()

    _reactor: Any
    _authorizer: Authorizer
    _authorities: CertificateAuthorities
    _users: Users
    _roles: Roles
    _kube_servers: KubeServers
    _access_requests: AccessRequests
    _locks: Locks
    _audit: AuditLog
    #: Shared by every login this Auth process answers (a LoginLimiter), or
    #: by every Auth server on a shared backend (a SharedLoginLimiter).
    limiter: Any = attr.ib(default=attr.Factory(lambda self: LoginLimiter(self._reactor), takes_self=True))

    async def login(
        self, caller: Identity, username: str, password: str, public_key_pem: str, *,
        ttl: float | None = None, kube_cluster: str = "", client_addr: str = "", otp_code: str = "",
    ) -> dict[str, Any]:
        """Password login on behalf of a user, relayed by the proxy; with
        ``second_factor: otp`` also a code of the user's OTP device, each code
        taken once.

        Unknown user, wrong password, wrong or reused code and a locked
        account all answer the same ``access denied`` after the same amount
        of work, and each counts as a failed attempt."""
        self._authorizer.require_system_role(caller, "proxy")
        otp = self._users.second_factor == "otp"
        message = "invalid username, password or OTP code" if otp else "invalid username or password"
        denied = AccessDenied(message)
        throttled = await maybeDeferred(self.limiter.attempt, username, client_addr)
        if throttled is not None:
            await self._audit_throttled(throttled, username, client_addr)
            raise LimitExceeded("too many login attempts; try again later")
        encoded = await self._users.password_hash(username)
        ok = await threads.deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), verify_password, password, encoded
        )
        user = None
        if ok:
            try:
                user = await self._users.get(username)
            except NotFound:
                ok = False
        if ok and otp:
            ok = await self._users.otp_devices.take(username, otp_code)
        if not ok:
            await maybeDeferred(self.limiter.failed, username)
            await self._audit.emit(
                events.USER_LOGIN, success=False, user=username, method="local", addr_remote=client_addr,
                error=message,
            )
            raise denied
        await maybeDeferred(self.limiter.succeeded, username)
        await self._locks.check(user.name, user.roles)
        if kube_cluster:
            await self._kube_servers.check_access(user, kube_cluster)
        result = await self._issue(user, public_key_pem, ttl, kube_cluster)
        await self._audit.emit(events.USER_LOGIN, user=username, method="local", addr_remote=client_addr)
        return result

    async def _audit_throttled(self, throttled: Throttled, username: str, client_addr: str) -> None:
        """One event when a network or a user starts being refused; the rest of
        that episode only at debug level, so a flood of refused attempts
        cannot turn into a flood of audit writes."""
        if not throttled.first:
            self.log.debug("login throttled limit={limit} key={key}", limit=throttled.limit, key=throttled.key)
            return
        self.log.warn("login throttled limit={limit} key={key}", limit=throttled.limit, key=throttled.key)
        await self._audit.emit(
            events.LOGIN_THROTTLED, user=username, method="local", addr_remote=client_addr,
            limit=throttled.limit, key=throttled.key, until=events.rfc3339(throttled.until),
        )

    async def reissue(
        self, caller: Identity, public_key_pem: str, kube_cluster: str, ttl: float | None,
        access_requests: tuple[str, ...] | None = None,
    ):
        """A new certificate for the calling user, e.g. routed to another kube
        cluster. It never outlives the certificate that asked for it.

        With ``access_requests`` (ids of the user's approved requests) it also
        carries their roles and ends when the first of them ends; with an
        empty list, the user's own roles only; with None, the requests the
        calling certificate carries (checked again: still approved), so a
        kube certificate keeps its login's elevation."""
        if not isinstance(caller, UserIdentity):
            raise AccessDenied("only users can reissue their certificates")
        if access_requests is None:
            access_requests = caller.access_requests
        user = await self._users.get(caller.username)
        requests = await self._access_requests.approved(user.name, sorted(set(access_requests)))
        not_after = min([caller.expires, *(r.access_expires for r in requests)])
        extra = tuple(role for r in requests for role in r.roles if role not in user.roles)
        roles = tuple(dict.fromkeys(user.roles + extra))
        # Resource requests restrict the whole certificate to their resources
        # (Teleport's AllowedResourceIDs): their union when several.
        allowed_resources = tuple(dict.fromkeys(rid for r in requests for rid in r.resource_ids))
        await self._locks.check(user.name, roles)
        if kube_cluster:
            await self._kube_servers.check_access(attr.evolve(user, roles=roles), kube_cluster,
                                                  allowed_resources=allowed_resources)
        return await self._issue(
            user, public_key_pem, ttl, kube_cluster, not_after=not_after, roles=roles,
            request_ids=tuple(r.name for r in requests), allowed_resources=allowed_resources,
        )

    async def _issue(
        self, user: User, public_key_pem: str, ttl: float | None, kube_cluster: str, not_after: datetime | None = None,
        roles: tuple[str, ...] | None = None, request_ids: tuple[str, ...] = (), allowed_resources: tuple = (),
    ) -> dict[str, Any]:
        role_names = tuple(user.roles) if roles is None else roles
        roles = await self._roles.get_many(role_names)
        cap = min([r.options.max_session_ttl for r in roles] or [DEFAULT_USER_CERT_TTL])
        ttl = min(ttl or DEFAULT_USER_CERT_TTL, cap)
        if ttl <= 0:
            raise BadParameter("ttl must be positive")
        now = utc_now(self._reactor)
        expires = now + timedelta(seconds=ttl)
        if not_after is not None:
            expires = min(expires, not_after)
        authorities = self._authorities
        identity = UserIdentity(
            username=user.name,
            roles=role_names,
            access_requests=request_ids,
            allowed_resources=allowed_resources,
            traits=tuple(sorted((k, tuple(v)) for k, v in user.traits.items())),
            kube_cluster=kube_cluster,
            teleport_cluster=authorities.cluster_name,
            expires=expires.replace(microsecond=0),
        )
        cert = authorities.user_ca.issue_user_certificate(load_public_key(public_key_pem), identity, now)
        await self._audit.emit(
            events.CERT_CREATE, user=user.name, cert_type="user", kube_cluster=kube_cluster or None,
            expires=identity.expires.isoformat(), access_requests=list(request_ids) or None,
            allowed_resources=[str(r) for r in allowed_resources] or None,
        )
        return {
            "cert": certificate_pem(cert).decode(),
            "cas": authorities.cas_pem(),
            "cluster_name": authorities.cluster_name,
            "username": user.name,
            "roles": list(role_names),
            "access_requests": list(request_ids),
            "allowed_resources": [str(r) for r in allowed_resources],
            "expires": identity.expires.isoformat(),
        }
