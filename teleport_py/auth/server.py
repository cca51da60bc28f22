"""The Auth service's logic: everything it knows, and who may ask for what.

``AuthServer`` is transport-free: the HTTP API (``api.py``) turns requests into
calls here with the caller's identity, which comes from a verified client
certificate and nothing else. Each public method checks its caller first.

Backend layout (values are JSON unless noted)::

    /authorities/{user,host}       CA certificate + private key (PEM)
    /roles/<name>                  role resource
    /users/<name>                  user resource
    /passwords/<name>              scrypt hash (text)
    /tokens/<token>                join token resource (expires with the token)
    /usertokens/<token>            sign-up token {user, expires}
    /kube_servers/<cluster>/<host> heartbeat (expires with its TTL)
    /events/...                    audit log (audit.py)
"""
from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet import threads
from twisted.logger import Logger

from teleport_py import events
from teleport_py.auth.audit import AuditLog
from teleport_py.auth.errors import (
    AccessDenied,
    AlreadyExists,
    BadParameter,
    LimitExceeded,
    NotFound,
)
from teleport_py.auth.password_hashing import WeakPassword, check_password_policy, hash_password, verify_password
from teleport_py.auth.ratelimit import LoginLimiter
from teleport_py.pki import (
    PROXY_SERVER_NAMES,
    CertAuthority,
    HostIdentity,
    UserIdentity,
    ca_pin,
    certificate_pem,
)
from teleport_py.resources import (
    BUILTIN_ROLES,
    KubeServer,
    Role,
    Token,
    User,
    ValidationError,
    resource_from_dict,
    resource_to_dict,
)

DEFAULT_USER_CERT_TTL = 12 * 3600.0
HOST_CERT_TTL = 365 * 24 * 3600.0
DEFAULT_JOIN_TOKEN_TTL = 30 * 60.0
SIGNUP_TOKEN_TTL = 3600.0
KUBE_SERVER_TTL = 90.0
KINDS = ("role", "user", "token", "kube_server")
JOIN_ROLES = {"kube": "Kube", "proxy": "Proxy"}
RULE_VERBS = ("list", "read", "create", "update", "delete")
RESERVED_DNS_SUFFIX = "teleport.cluster.local"

Identity = UserIdentity | HostIdentity


def _now_dt(clock) -> datetime:
    return datetime.fromtimestamp(clock.seconds(), timezone.utc)


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode("utf-8")


def _load_public_key(pem: str):
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, TypeError, UnicodeError):
        raise BadParameter("public_key: not a PEM-encoded public key") from None
    return key


def _validated(doc: Any, expected_kind: str | None = None):
    if not isinstance(doc, dict):
        raise BadParameter("resource must be a mapping")
    try:
        resource = resource_from_dict(doc)
    except ValidationError as e:
        raise BadParameter(str(e), field=e.path) from None
    if expected_kind and doc.get("kind") != expected_kind:
        raise BadParameter(f"kind: expected {expected_kind}")
    return resource


def _kind_of(resource) -> str:
    return {Role: "role", User: "user", Token: "token", KubeServer: "kube_server"}[type(resource)]


class AuthServer:
    log = Logger()

    def __init__(self, reactor, backend, cluster_name: str, user_ca: CertAuthority, host_ca: CertAuthority):
        self.reactor = reactor
        self.backend = backend
        self.cluster_name = cluster_name
        self.user_ca = user_ca
        self.host_ca = host_ca
        self.audit = AuditLog(backend, reactor, cluster_name)
        self.limiter = LoginLimiter(reactor)

    # -- start-up ---------------------------------------------------------

    @classmethod
    async def initialize(cls, reactor, backend, cluster_name: str) -> "AuthServer":
        """Load the cluster's CAs, creating them on first start.

        ``create`` makes the first writer win, so two auth processes racing on
        one fresh backend still end up with one CA per kind.
        """
        cas = {}
        for kind in ("user", "host"):
            key = f"/authorities/{kind}"
            item = await backend.get(key)
            if item is None:
                ca = CertAuthority.generate(kind, cluster_name, _now_dt(reactor))
                cert_pem, key_pem = ca.to_pem()
                doc = {"cluster_name": cluster_name, "cert": cert_pem.decode(), "key": key_pem.decode()}
                if await backend.create(key, _json(doc)) is None:
                    item = await backend.get(key)
                else:
                    cls.log.info("created {kind} certificate authority for cluster {cluster}", kind=kind, cluster=cluster_name)
                    cas[kind] = ca
                    continue
            doc = json.loads(item.value)
            if doc["cluster_name"] != cluster_name:
                raise RuntimeError(
                    f"the data directory belongs to cluster {doc['cluster_name']!r}, not {cluster_name!r}"
                )
            cas[kind] = CertAuthority.from_pem(kind, cluster_name, doc["cert"].encode(), doc["key"].encode())
        server = cls(reactor, backend, cluster_name, cas["user"], cas["host"])
        for role in BUILTIN_ROLES.values():
            await backend.create(f"/roles/{role.name}", _json(resource_to_dict(role)))
        return server

    # -- authorization ------------------------------------------------------

    async def roles_of(self, names: Iterable[str]) -> list[Role]:
        roles = []
        for name in names:
            item = await self.backend.get(f"/roles/{name}")
            if item is not None:
                roles.append(resource_from_dict(json.loads(item.value)))
        return roles

    async def authorize(self, caller: Identity, kind: str, verb: str) -> None:
        """Admin may do anything; users as their roles' ``rules`` say (deny wins);
        other system roles only through the dedicated methods below."""
        if isinstance(caller, HostIdentity):
            if caller.system_role == "admin":
                return
            # Kube agents authorize each kubectl request against the user's
            # roles (named in the user's certificate, traits too): read only.
            if caller.system_role == "kube" and kind == "role" and verb in ("read", "list"):
                return
            raise AccessDenied(f"{caller.system_role} service may not {verb} {kind} resources")
        roles = await self.roles_of(caller.roles)

        def matches(rules) -> bool:
            return any(
                (kind in r.resources or "*" in r.resources) and (verb in r.verbs or "*" in r.verbs) for r in rules
            )

        if any(matches(r.deny.rules) for r in roles):
            raise AccessDenied(f"access denied to perform action {verb!r} on {kind!r}")
        if not any(matches(r.allow.rules) for r in roles):
            raise AccessDenied(f"access denied to perform action {verb!r} on {kind!r}")

    @staticmethod
    def require_system_role(caller: Identity, *allowed: str) -> HostIdentity:
        if isinstance(caller, HostIdentity) and caller.system_role in allowed + ("admin",):
            return caller
        raise AccessDenied("this call is reserved for cluster services")

    # -- certificates ---------------------------------------------------------

    def cas_pem(self) -> dict[str, list[str]]:
        return {
            "user": [certificate_pem(self.user_ca.certificate).decode()],
            "host": [certificate_pem(self.host_ca.certificate).decode()],
        }

    async def _issue_user_cert(
        self, user: User, public_key_pem: str, ttl: float | None, kube_cluster: str, not_after: datetime | None = None
    ) -> dict[str, Any]:
        roles = await self.roles_of(user.roles)
        cap = min([r.options.max_session_ttl for r in roles] or [DEFAULT_USER_CERT_TTL])
        ttl = min(ttl or DEFAULT_USER_CERT_TTL, cap)
        if ttl <= 0:
            raise BadParameter("ttl must be positive")
        now = _now_dt(self.reactor)
        expires = now + timedelta(seconds=ttl)
        if not_after is not None:
            expires = min(expires, not_after)
        identity = UserIdentity(
            username=user.name,
            roles=tuple(user.roles),
            traits=tuple(sorted((k, tuple(v)) for k, v in user.traits.items())),
            kube_cluster=kube_cluster,
            teleport_cluster=self.cluster_name,
            expires=expires.replace(microsecond=0),
        )
        cert = self.user_ca.issue_user_certificate(_load_public_key(public_key_pem), identity, now)
        await self.audit.emit(
            events.CERT_CREATE, user=user.name, cert_type="user", kube_cluster=kube_cluster or None,
            expires=identity.expires.isoformat(),
        )
        return {
            "cert": certificate_pem(cert).decode(),
            "cas": self.cas_pem(),
            "cluster_name": self.cluster_name,
            "username": user.name,
            "expires": identity.expires.isoformat(),
        }

    def issue_host_identity(self, public_key, host_id: str, nodename: str, system_role: str, dns_names=(), ips=()):
        """A host certificate for a service of this cluster (used at join and for
        the auth/proxy services running in the same process)."""
        now = _now_dt(self.reactor)
        identity = HostIdentity(
            host_id=host_id, nodename=nodename, system_role=system_role, teleport_cluster=self.cluster_name
        )
        return self.host_ca.issue_host_certificate(
            public_key,
            identity,
            now,
            now + timedelta(seconds=HOST_CERT_TTL),
            dns_names=tuple(dns_names),
            ip_addresses=tuple(ips),
        )

    # -- users and login --------------------------------------------------------

    async def get_user(self, name: str) -> User:
        item = await self.backend.get(f"/users/{name}")
        if item is None:
            raise NotFound(f'user "{name}" not found')
        return resource_from_dict(json.loads(item.value))

    async def login(
        self, caller: Identity, username: str, password: str, public_key_pem: str, *,
        ttl: float | None = None, kube_cluster: str = "", client_addr: str = "",
    ) -> dict[str, Any]:
        """Password login on behalf of a user, relayed by the proxy.

        Unknown user, wrong password and a locked account all answer the same
        ``access denied`` after the same amount of work."""
        self.require_system_role(caller, "proxy")
        denied = AccessDenied("invalid username or password")
        throttled = self.limiter.attempt(username, client_addr)
        if throttled is not None:
            await self._audit_throttled(throttled, username, client_addr)
            raise LimitExceeded("too many login attempts; try again later")
        item = await self.backend.get(f"/passwords/{username}")
        encoded = item.value.decode("ascii") if item is not None else None
        ok = await threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), verify_password, password, encoded
        )
        user = None
        if ok:
            try:
                user = await self.get_user(username)
            except NotFound:
                ok = False
        if not ok:
            self.limiter.failed(username)
            await self.audit.emit(
                events.USER_LOGIN, success=False, user=username, method="local", addr_remote=client_addr,
                error="invalid username or password",
            )
            raise denied
        self.limiter.succeeded(username)
        if kube_cluster:
            await self.check_kube_cluster_access(user, kube_cluster)
        result = await self._issue_user_cert(user, public_key_pem, ttl, kube_cluster)
        await self.audit.emit(events.USER_LOGIN, user=username, method="local", addr_remote=client_addr)
        return result

    async def _audit_throttled(self, throttled, username: str, client_addr: str) -> None:
        """One event when a network or a user starts being refused; the rest of
        that episode only at debug level, so a flood of refused attempts
        cannot turn into a flood of audit writes."""
        if not throttled.first:
            self.log.debug("login throttled limit={limit} key={key}", limit=throttled.limit, key=throttled.key)
            return
        self.log.warn("login throttled limit={limit} key={key}", limit=throttled.limit, key=throttled.key)
        await self.audit.emit(
            events.LOGIN_THROTTLED, user=username, method="local", addr_remote=client_addr,
            limit=throttled.limit, key=throttled.key, until=events.rfc3339(throttled.until),
        )

    async def reissue_user_cert(self, caller: Identity, public_key_pem: str, kube_cluster: str, ttl: float | None):
        """A new certificate for the calling user, e.g. routed to another kube
        cluster. It never outlives the certificate that asked for it."""
        if not isinstance(caller, UserIdentity):
            raise AccessDenied("only users can reissue their certificates")
        user = await self.get_user(caller.username)
        if kube_cluster:
            await self.check_kube_cluster_access(user, kube_cluster)
        return await self._issue_user_cert(user, public_key_pem, ttl, kube_cluster, not_after=caller.expires)

    async def create_user(self, caller: Identity, user: User) -> dict[str, Any]:
        """Create a user without a password and return a sign-up token for it."""
        await self.authorize(caller, "user", "create")
        await self._check_roles_exist(user.roles)
        if await self.backend.create(f"/users/{user.name}", _json(resource_to_dict(user))) is None:
            raise AlreadyExists(f'user "{user.name}" already exists')
        token = await self._create_signup_token(user.name)
        await self.audit.emit(events.USER_CREATE, user=self._actor(caller), name=user.name, roles=list(user.roles))
        return token

    async def _create_signup_token(self, username: str) -> dict[str, Any]:
        token = secrets.token_hex(16)
        expires = self.reactor.seconds() + SIGNUP_TOKEN_TTL
        await self.backend.put(
            f"/usertokens/{token}", _json({"user": username, "expires": expires}), expires=expires
        )
        return {"token": token, "user": username, "expires": events.rfc3339(expires), "ttl": SIGNUP_TOKEN_TTL}

    async def reset_user(self, caller: Identity, name: str) -> dict[str, Any]:
        await self.authorize(caller, "user", "update")
        await self.get_user(name)
        await self.backend.delete(f"/passwords/{name}")
        return await self._create_signup_token(name)

    async def complete_signup(self, caller: Identity, token: str, password: str) -> str:
        """Set a password with a sign-up token; the token is single-use."""
        self.require_system_role(caller, "proxy")
        item = await self.backend.get(f"/usertokens/{token}") if token else None
        if item is None:
            raise NotFound("sign-up token not found or expired")
        try:
            check_password_policy(password)
        except WeakPassword as e:
            raise BadParameter(str(e), field="password") from None
        if not await self.backend.delete(f"/usertokens/{token}"):
            raise NotFound("sign-up token not found or expired")
        username = json.loads(item.value)["user"]
        encoded = await threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), hash_password, password)
        await self.backend.put(f"/passwords/{username}", encoded.encode("ascii"))
        await self.audit.emit(events.USER_PASSWORD_CHANGE, user=username)
        return username

    async def update_user(
        self, caller: Identity, name: str, *, roles: list[str] | None = None, traits: dict[str, list[str]] | None = None
    ) -> User:
        await self.authorize(caller, "user", "update")
        while True:
            item = await self.backend.get(f"/users/{name}")
            if item is None:
                raise NotFound(f'user "{name}" not found')
            doc = json.loads(item.value)
            if roles is not None:
                await self._check_roles_exist(roles)
                doc["spec"]["roles"] = list(roles)
            if traits is not None:
                merged = dict(doc["spec"].get("traits") or {})
                merged.update(traits)
                doc["spec"]["traits"] = {k: v for k, v in merged.items() if v}
            user = _validated(doc, "user")
            new = _json(resource_to_dict(user))
            if await self.backend.compare_and_swap(f"/users/{name}", item.value, new) is not None:
                break
        await self.audit.emit(events.USER_UPDATE, user=self._actor(caller), name=name, roles=list(user.roles))
        return user

    async def _check_roles_exist(self, names: Iterable[str]) -> None:
        for name in names:
            if await self.backend.get(f"/roles/{name}") is None:
                raise BadParameter(f'role "{name}" does not exist')

    @staticmethod
    def _actor(caller: Identity) -> str:
        if isinstance(caller, UserIdentity):
            return caller.username
        return f"{caller.system_role}:{caller.host_id}"

    # -- generic resources --------------------------------------------------------

    @staticmethod
    def _key(kind: str, name: str) -> str:
        if kind not in KINDS:
            raise BadParameter(f"unsupported resource kind {kind!r} (supported: {', '.join(KINDS)})")
        if not name or "/" in name:
            raise BadParameter(f"invalid resource name {name!r}")
        return {"role": "/roles/", "user": "/users/", "token": "/tokens/", "kube_server": "/kube_servers/"}[kind] + name

    async def list_resources(self, caller: Identity, kind: str) -> list[dict[str, Any]]:
        await self.authorize(caller, kind, "list")
        prefix = self._key(kind, "x")[:-1]
        return [json.loads(item.value) for item in await self.backend.get_range(prefix)]

    async def get_resource(self, caller: Identity, kind: str, name: str) -> dict[str, Any]:
        await self.authorize(caller, kind, "read")
        if kind == "kube_server":
            found = [json.loads(i.value) for i in await self.backend.get_range(f"/kube_servers/{name}/")]
            if found:
                return found[0]
            raise NotFound(f'kube_server "{name}" not found')
        item = await self.backend.get(self._key(kind, name))
        if item is None:
            raise NotFound(f'{kind} "{name}" not found')
        return json.loads(item.value)

    async def upsert_resource(self, caller: Identity, doc: dict[str, Any], force: bool = False) -> dict[str, Any]:
        """``tctl create``: validate fully, then create (or overwrite with force)."""
        resource = _validated(doc)
        kind = _kind_of(resource)
        if kind == "kube_server":
            raise BadParameter("kube_server resources are created by Kubernetes service heartbeats")
        await self.authorize(caller, kind, "create")
        if force:
            await self.authorize(caller, kind, "update")
        if kind == "user":
            await self._check_roles_exist(resource.roles)
        key = self._key(kind, resource.name)
        value = _json(resource_to_dict(resource))
        expires = resource.expires.timestamp() if kind == "token" else None
        if force:
            existing = await self.backend.get(key)
            await self.backend.put(key, value, expires=expires)
            created = existing is None
        else:
            created = await self.backend.create(key, value, expires=expires) is not None
            if not created:
                raise AlreadyExists(f'{kind} "{resource.name}" already exists; use --force to overwrite it')
        await self._audit_change(caller, kind, resource.name, created)
        return {"kind": kind, "name": resource.name, "created": created}

    async def _audit_change(self, caller: Identity, kind: str, name: str, created: bool) -> None:
        actor = self._actor(caller)
        if kind == "role":
            await self.audit.emit(events.ROLE_CREATED, user=actor, name=name)
        elif kind == "user":
            await self.audit.emit(events.USER_CREATE if created else events.USER_UPDATE, user=actor, name=name)
        elif kind == "token":
            await self.audit.emit(events.JOIN_TOKEN_CREATE, user=actor, name=self._token_hint(name))

    async def delete_resource(self, caller: Identity, kind: str, name: str) -> None:
        await self.authorize(caller, kind, "delete")
        if kind == "role":
            for item in await self.backend.get_range("/users/"):
                user = json.loads(item.value)
                if name in user["spec"].get("roles", []):
                    raise BadParameter(f'role "{name}" is still assigned to user "{user["metadata"]["name"]}"')
        if kind == "kube_server":
            if not await self.backend.delete_range(f"/kube_servers/{name}/"):
                raise NotFound(f'kube_server "{name}" not found')
        elif not await self.backend.delete(self._key(kind, name)):
            raise NotFound(f'{kind} "{name}" not found')
        actor = self._actor(caller)
        if kind == "role":
            await self.audit.emit(events.ROLE_DELETED, user=actor, name=name)
        elif kind == "user":
            await self.backend.delete(f"/passwords/{name}")
            await self.audit.emit(events.USER_DELETE, user=actor, name=name)
        elif kind == "token":
            await self.audit.emit(events.JOIN_TOKEN_DELETE, user=actor, name=self._token_hint(name))

    # -- join tokens and joining ------------------------------------------------------

    @staticmethod
    def _token_hint(token: str) -> str:
        """Tokens are secrets: events and logs show only a prefix."""
        return token[:4] + "..." if len(token) > 8 else "***"

    async def create_join_token(self, caller: Identity, roles: list[str], ttl: float | None) -> dict[str, Any]:
        await self.authorize(caller, "token", "create")
        ttl = DEFAULT_JOIN_TOKEN_TTL if ttl is None else ttl
        if ttl <= 0:
            raise BadParameter("ttl must be positive")
        wanted = []
        for role in roles:
            canonical = JOIN_ROLES.get(role.lower())
            if canonical is None:
                raise BadParameter(f"unsupported token type {role!r} (supported: {', '.join(JOIN_ROLES)})")
            wanted.append(canonical)
        name = secrets.token_hex(16)
        expires = _now_dt(self.reactor) + timedelta(seconds=ttl)
        token = Token(name=name, roles=tuple(wanted), expires=expires.replace(microsecond=0))
        await self.backend.create(f"/tokens/{name}", _json(resource_to_dict(token)), expires=token.expires.timestamp())
        await self.audit.emit(
            events.JOIN_TOKEN_CREATE, user=self._actor(caller), name=self._token_hint(name), roles=wanted,
            expires=token.expires.isoformat(),
        )
        return resource_to_dict(token)

    async def join(
        self, token: str, system_role: str, public_key_pem: str, host_id: str, nodename: str,
        dns_names: list[str] = (), client_addr: str = "",
    ) -> dict[str, Any]:
        """Redeem a join token for a host certificate. Any failure is audited and
        answered with the same message, so tokens cannot be probed."""
        failure = AccessDenied("the join token is invalid, expired or not valid for this service")
        expected = JOIN_ROLES.get(system_role)
        item = await self.backend.get(f"/tokens/{token}") if token and "/" not in token else None
        reason = None
        if expected is None:
            reason = f"unsupported system role {system_role!r}"
        elif item is None:
            reason = "unknown or expired token"
        else:
            tok = resource_from_dict(json.loads(item.value))
            if tok.expires <= _now_dt(self.reactor):
                reason = "expired token"
            elif expected not in tok.roles:
                reason = f"token does not allow role {expected}"
        if not host_id or "/" in host_id or len(host_id) > 128:
            reason = reason or "invalid host id"
        if reason:
            await self.audit.emit(
                events.INSTANCE_JOIN, success=False, role=system_role, host_id=host_id, nodename=nodename,
                token=self._token_hint(token or ""), addr_remote=client_addr, error=reason,
            )
            self.log.warn("refused join role={role} host={host}: {reason}", role=system_role, host=host_id, reason=reason)
            raise failure
        # Names under teleport.cluster.local identify cluster services (the
        # auth server above all): a joining host must not be able to claim them.
        dns_names = [n for n in dns_names if not n.lower().rstrip(".").endswith(RESERVED_DNS_SUFFIX)]
        if system_role == "proxy":
            dns_names.extend(PROXY_SERVER_NAMES)
        cert = self.issue_host_identity(_load_public_key(public_key_pem), host_id, nodename, system_role, dns_names)
        await self.audit.emit(
            events.INSTANCE_JOIN, role=system_role, host_id=host_id, nodename=nodename,
            token=self._token_hint(token), addr_remote=client_addr,
        )
        return {"cert": certificate_pem(cert).decode(), "cas": self.cas_pem(), "cluster_name": self.cluster_name}

    # -- kube_server heartbeats --------------------------------------------------------

    async def heartbeat_kube_server(self, caller: Identity, doc: dict[str, Any]) -> None:
        host = self.require_system_role(caller, "kube")
        server = _validated(doc, "kube_server")
        if host.system_role != "admin" and server.host_id != host.host_id:
            raise AccessDenied("a Kubernetes service may only heartbeat its own clusters")
        expires = self.reactor.seconds() + KUBE_SERVER_TTL
        server = KubeServer(
            name=server.name, host_id=server.host_id, hostname=server.hostname, cluster_name=server.cluster_name,
            cluster_labels=server.cluster_labels, version=server.version,
            expires=datetime.fromtimestamp(int(expires), timezone.utc),
        )
        await self.backend.put(
            f"/kube_servers/{server.cluster_name}/{server.host_id}", _json(resource_to_dict(server)), expires=expires
        )

    async def kube_clusters(self) -> dict[str, dict[str, str]]:
        """Live clusters and their labels (several agents may serve one)."""
        clusters: dict[str, dict[str, str]] = {}
        for item in await self.backend.get_range("/kube_servers/"):
            server = resource_from_dict(json.loads(item.value))
            clusters.setdefault(server.cluster_name, dict(server.cluster_labels))
        return clusters

    async def check_kube_cluster_access(self, user: User, cluster: str) -> dict[str, str]:
        from teleport_py.rbac import AccessChecker, AccessDenied as RBACDenied

        clusters = await self.kube_clusters()
        checker = AccessChecker(user.name, await self.roles_of(user.roles), user.traits)
        labels = clusters.get(cluster)
        if labels is not None:
            try:
                checker.check_cluster(cluster, labels)
                return labels
            except RBACDenied:
                pass
        # Same answer for "missing" and "not allowed": do not reveal clusters.
        raise NotFound(f'kubernetes cluster "{cluster}" not found')

    async def list_kube_clusters_for(self, caller: Identity) -> list[dict[str, Any]]:
        """What ``tsh kube ls`` shows: clusters the caller's roles can reach."""
        from teleport_py.rbac import AccessChecker, AccessDenied as RBACDenied

        clusters = await self.kube_clusters()
        if isinstance(caller, HostIdentity):
            self.require_system_role(caller)
            return [{"name": n, "labels": l} for n, l in sorted(clusters.items())]
        user = await self.get_user(caller.username)
        checker = AccessChecker(user.name, await self.roles_of(user.roles), user.traits)
        visible = []
        for name, labels in sorted(clusters.items()):
            try:
                checker.check_cluster(name, labels)
            except RBACDenied:
                continue
            visible.append({"name": name, "labels": labels})
        return visible

    # -- audit -------------------------------------------------------------------

    async def append_events(self, caller: Identity, batch: list[dict[str, Any]]) -> int:
        host = self.require_system_role(caller, "kube", "proxy")
        if not all(isinstance(event, dict) for event in batch):
            raise BadParameter("events must be objects")
        try:
            await self.audit.append_all([{**event, "server_id": host.host_id} for event in batch])
        except (ValueError, KeyError) as e:
            raise BadParameter(str(e)) from None
        return len(batch)

    async def search_events(
        self, caller: Identity, start: datetime, end: datetime, types: list[str], limit: int
    ) -> list[dict[str, Any]]:
        await self.authorize(caller, "event", "list")
        return await self.audit.search(start, end, types, limit)

    def ca_pin(self) -> str:
        """Teleport's CA pin: sha256 of the host CA's SubjectPublicKeyInfo. A
        joining agent that knows it can trust the proxy on first contact."""
        return ca_pin(self.host_ca.certificate)

    async def status(self, caller: Identity) -> dict[str, Any]:
        """For admins and users allowed to list roles; no service needs it (a
        kube agent, which may read roles, must not learn the cluster's size)."""
        if isinstance(caller, HostIdentity):
            self.require_system_role(caller)
        await self.authorize(caller, "role", "list")
        fingerprints = {
            kind: ca.certificate.fingerprint(hashes.SHA256()).hex()
            for kind, ca in (("user", self.user_ca), ("host", self.host_ca))
        }
        return {
            "cluster_name": self.cluster_name,
            "ca_pin": self.ca_pin(),
            "ca_fingerprints": fingerprints,
            "users": len(await self.backend.get_range("/users/")),
            "roles": len(await self.backend.get_range("/roles/")),
            "kube_clusters": sorted(await self.kube_clusters()),
        }
