"""The Auth service's HTTP API: JSON over mutual TLS.

Who is calling comes from the client certificate TLS verified against the
cluster's CAs, never from anything in the request, with one exception that is
itself anchored in a certificate: a *proxy* may forward a request on behalf of
a user whose certificate it verified, by passing that certificate along
(``Teleport-User-Certificate``); we verify it again here against the user CA.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import attr
from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web import resource, server

from teleport_py.auth.errors import AccessDenied, AuthError, BadParameter, StorageUnavailable
from teleport_py.auth.recordings import Recordings
from teleport_py.auth.server import AuthServer
from teleport_py.backend import BackendUnavailableError
from teleport_py.auth.services.common import load_public_key, validated
from teleport_py.pki import HostIdentity, IdentityError, UserIdentity, certificate_pem, identity_from_certificate

MAX_BODY = 1 << 20
USER_CERT_HEADER = b"teleport-user-certificate"
CLIENT_ADDR_HEADER = b"teleport-client-address"
OCTET_STREAM = b"application/octet-stream"


class Unauthenticated:
    """The caller presented no certificate (join, ping, public CAs)."""


#: Who may call a route at all, by the certificate presented: none, a user's,
#: or a host's (its system role).
NO_CERTIFICATE = "none"
USER = "user"
SYSTEM_ROLES = ("auth", "proxy", "kube", "admin")
CALLER_KINDS = (NO_CERTIFICATE, USER, *SYSTEM_ROLES)
EVERYONE = frozenset(CALLER_KINDS)
AUTHENTICATED = EVERYONE - {NO_CERTIFICATE}
#: Users (as their roles' rules allow, checked by each call) and tctl's admin identity.
ADMINISTRATORS = frozenset({USER, "admin"})
_DESCRIBED = {NO_CERTIFICATE: "a caller without a client certificate", USER: "a user certificate"}


def caller_kind(caller) -> str:
    """``none``, ``user`` or the host's system role: the column of the route table."""
    if isinstance(caller, UserIdentity):
        return USER
    if isinstance(caller, HostIdentity):
        return caller.system_role
    return NO_CERTIFICATE


@attr.s(frozen=True, auto_attribs=True)
class Route:
    method: bytes
    pattern: str
    handler: Callable
    callers: frozenset

    def admit(self, caller) -> None:
        """Refuse a caller whose kind this route does not list (deny by default)."""
        kind = caller_kind(caller)
        if kind not in self.callers:
            who = _DESCRIBED.get(kind, f"a {kind} service certificate")
            raise AccessDenied(f"{who} may not call {self.method.decode()} /v1/{self.pattern}")


def _peer_certificate(request) -> x509.Certificate | None:
    transport = request.channel.transport if request.channel else None
    get = getattr(transport, "getPeerCertificate", None)
    cert = get() if get else None
    return cert.to_cryptography() if cert is not None else None


def _client_addr(request) -> str:
    peer = request.getClientAddress()
    return getattr(peer, "host", "") or ""


def _query_int(request, name: bytes, default: int | None = None) -> int:
    values = request.args.get(name)
    if values is None and default is not None:
        return default
    try:
        return int(values[0])
    except (TypeError, ValueError):
        raise BadParameter(f"{name.decode()}: must be an integer") from None


class BoundedRequest(server.Request):
    """Keeps a request body in memory and stops storing it past MAX_BODY
    (``_body`` then refuses it): Twisted would otherwise keep any size, and
    spool every body over 100 kB to a temporary file, one per recording chunk."""

    def gotLength(self, length):
        self.content = io.BytesIO()

    def handleContentChunk(self, data):
        room = MAX_BODY + 1 - self.content.tell()
        if room > 0:
            self.content.write(data[:room])


def _parse_time(value: str, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadParameter(f"{field}: not an RFC 3339 time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class AuthAPI(resource.Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, auth: AuthServer, recordings: Recordings, *, client_idle_timeout: float = 0.0,
                 disconnect_expired_cert: bool = True):
        super().__init__()
        self.auth = auth
        #: The cluster's defaults for kube connections, which agents read from ping.
        self.session_defaults = {"client_idle_timeout": client_idle_timeout,
                                 "disconnect_expired_cert": disconnect_expired_cert}
        #: The router: every call, and which certificates may make it at all
        #: (docs/auth-api.md has the same table; tests.test_auth_routes holds
        #: the two together). Each call then authorizes its caller on its own.
        self.routes: tuple[Route, ...] = (
            Route(b"GET", "ping", self.ping, EVERYONE),
            Route(b"GET", "cas", self.cas, EVERYONE),
            Route(b"POST", "join", self.join, frozenset({NO_CERTIFICATE, "proxy"})),
            Route(b"POST", "login", self.login, frozenset({"proxy"})),
            Route(b"POST", "signup", self.signup, frozenset({"proxy", "admin"})),
            Route(b"GET", "signup/*", self.signup_user, frozenset({"proxy"})),
            Route(b"POST", "certs/user", self.reissue, frozenset({USER})),
            Route(b"POST", "certs/host", self.renew_host, frozenset({"proxy", "kube"})),
            Route(b"GET", "whoami", self.whoami, AUTHENTICATED),
            Route(b"GET", "status", self.status, ADMINISTRATORS),
            Route(b"POST", "resources", self.upsert, ADMINISTRATORS),
            Route(b"GET", "resources/*", self.list_resources, ADMINISTRATORS),
            Route(b"GET", "resources/*/*", self.get_resource, ADMINISTRATORS | {"kube"}),
            Route(b"DELETE", "resources/*/*", self.delete_resource, ADMINISTRATORS),
            Route(b"POST", "users", self.create_user, ADMINISTRATORS),
            Route(b"PATCH", "users/*", self.update_user, ADMINISTRATORS),
            Route(b"POST", "users/*/reset", self.reset_user, ADMINISTRATORS),
            Route(b"POST", "tokens", self.create_token, ADMINISTRATORS),
            Route(b"POST", "access_requests", self.create_access_request, frozenset({USER})),
            Route(b"GET", "access_requests", self.list_access_requests, ADMINISTRATORS),
            Route(b"GET", "access_requests/*", self.get_access_request, ADMINISTRATORS),
            Route(b"POST", "access_requests/*/reviews", self.review_access_request, frozenset({USER})),
            Route(b"PUT", "access_requests/*/state", self.resolve_access_request, ADMINISTRATORS),
            Route(b"POST", "locks", self.create_lock, ADMINISTRATORS),
            Route(b"GET", "locks", self.list_locks, ADMINISTRATORS | {"kube"}),
            Route(b"POST", "heartbeats/kube", self.heartbeat, frozenset({"kube"})),
            Route(b"POST", "heartbeats/kube/goodbye", self.goodbye, frozenset({"kube"})),
            Route(b"POST", "heartbeats/proxy", self.heartbeat_proxy, frozenset({"proxy"})),
            Route(b"POST", "heartbeats/proxy/goodbye", self.proxy_goodbye, frozenset({"proxy"})),
            Route(b"GET", "proxies", self.list_proxies, frozenset({"proxy"})),
            Route(b"POST", "web_sessions", self.create_web_session, frozenset({"proxy"})),
            Route(b"GET", "web_sessions/*", self.get_web_session, frozenset({"proxy"})),
            Route(b"DELETE", "web_sessions/*", self.delete_web_session, frozenset({"proxy"})),
            Route(b"GET", "kube_clusters", self.kube_clusters, ADMINISTRATORS),
            Route(b"POST", "events", self.append_events, frozenset({"kube"})),
            Route(b"GET", "events", self.search_events, ADMINISTRATORS),
            Route(b"GET", "recordings", self.list_recordings, ADMINISTRATORS),
            Route(b"GET", "recordings/*", self.get_recording, ADMINISTRATORS),
            Route(b"GET", "recordings/*/data", self.read_recording, ADMINISTRATORS),
            Route(b"GET", "recordings/*/stored", self.stored_recording, frozenset({"kube"})),
            Route(b"POST", "recordings/*/chunks", self.append_recording, frozenset({"kube"})),
        )
        #: Handlers that take an application/octet-stream body as bytes.
        self.raw_handlers = {self.append_recording}
        self.recordings = recordings

    # -- plumbing -------------------------------------------------------------

    def _route(self, method: bytes, path: list[str]) -> tuple[Route | None, list[str]]:
        for route in self.routes:
            parts = route.pattern.split("/")
            if route.method == method and len(parts) == len(path) and all(p == "*" or p == q for p, q in zip(parts, path)):
                return route, [q for p, q in zip(parts, path) if p == "*"]
        return None, []

    def render(self, request):
        path = [p.decode("utf-8", "replace") for p in request.postpath if p]
        if not path or path[0] != "v1":
            return self._error(request, AuthError("not found"), 404)
        route, args = self._route(request.method, path[1:])
        if route is None:
            return self._error(request, AuthError(f"no such API call {request.method.decode()} {request.path.decode()}"), 404)
        d = Deferred.fromCoroutine(self._run(route, request, args))
        d.addErrback(lambda f: self.log.failure("auth API handler failed", f))
        return server.NOT_DONE_YET

    async def _run(self, route: Route, request, args):
        finished = []
        request.notifyFinish().addBoth(finished.append)
        try:
            caller = self.caller(request)
            route.admit(caller)
            body = self._body(request, raw=route.handler in self.raw_handlers)
            result = await route.handler(caller, request, body, *args)
            status, payload = 200, result
        except AuthError as e:
            status, payload = e.status, e.to_json()
            if isinstance(e, AccessDenied):
                self.log.info("denied {method} {path}: {message}", method=request.method, path=request.path, message=e.message)
        except BackendUnavailableError as e:
            self.log.warn("storage unavailable on {path}: {error}", path=request.path, error=str(e))
            status, payload = 503, StorageUnavailable("the auth server's storage is unavailable, try again later").to_json()
        except Exception:
            self.log.failure("auth API error on {path}", path=request.path)
            status, payload = 500, AuthError("internal error").to_json()
        if finished:
            return
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.write(json.dumps(payload).encode("utf-8"))
        request.finish()

    def _error(self, request, error: AuthError, status: int):
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(error.to_json()).encode("utf-8")

    @staticmethod
    def _body(request, raw: bool) -> Any:
        """The JSON object, or for a ``raw`` handler an octet-stream body as bytes."""
        if request.method in (b"GET", b"DELETE"):
            return None
        data = request.content.read(MAX_BODY + 1) if request.content else b""
        if len(data) > MAX_BODY:
            raise BadParameter("request body too large")
        if raw and request.getHeader(b"content-type") == OCTET_STREAM:
            return data
        if not data:
            return {}
        try:
            body = json.loads(data)
        except ValueError:
            raise BadParameter("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadParameter("request body must be a JSON object")
        return body

    def caller(self, request):
        """Identity from the verified client certificate (or a proxy-forwarded
        user certificate, verified here again)."""
        cert = _peer_certificate(request)
        if cert is None:
            return Unauthenticated()
        try:
            identity = identity_from_certificate(cert, user_ca=self.auth.user_ca.certificate, host_ca=self.auth.host_ca.certificate)
        except IdentityError as e:
            raise AccessDenied(f"unrecognized client certificate: {e}") from None
        forwarded = request.getHeader(USER_CERT_HEADER)
        if forwarded is None:
            return identity
        if not (isinstance(identity, HostIdentity) and identity.system_role == "proxy"):
            raise AccessDenied("only a proxy may forward a user's identity")
        try:
            user_cert = x509.load_pem_x509_certificate(base64.b64decode(forwarded))
            user = identity_from_certificate(user_cert, user_ca=self.auth.user_ca.certificate, host_ca=None)
        except (ValueError, IdentityError):
            raise AccessDenied("invalid forwarded user certificate") from None
        now = datetime.fromtimestamp(self.auth.reactor.seconds(), timezone.utc)
        if not isinstance(user, UserIdentity) or not (
            user_cert.not_valid_before_utc <= now < user_cert.not_valid_after_utc
        ):
            raise AccessDenied("forwarded user certificate is expired or not a user certificate")
        return user

    def _client(self, caller, request) -> str:
        """The end client's address: from the proxy's header when a proxy relays."""
        forwarded = request.getHeader(CLIENT_ADDR_HEADER)
        if forwarded and isinstance(caller, HostIdentity) and caller.system_role == "proxy":
            return forwarded.decode("ascii", "replace")[:64]
        return _client_addr(request)

    @staticmethod
    def _authenticated(caller):
        if isinstance(caller, Unauthenticated):
            raise AccessDenied("a client certificate is required")
        return caller

    @staticmethod
    def _str(body, field: str, required: bool = True) -> str:
        value = body.get(field, "" if not required else None)
        if not isinstance(value, str) or (required and not value):
            raise BadParameter(f"{field}: required string")
        return value

    @staticmethod
    def _ttl(body) -> float | None:
        ttl = body.get("ttl")
        if ttl is None:
            return None
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl <= 0:
            raise BadParameter("ttl: must be a positive number of seconds")
        return float(ttl)

    # -- handlers --------------------------------------------------------------

    async def ping(self, caller, request, body):
        return {"cluster_name": self.auth.cluster_name, "server_version": "teleport_py",
                "second_factor": self.auth.users.second_factor, **self.session_defaults}

    async def cas(self, caller, request, body):
        return self.auth.authorities.cas_pem()

    async def join(self, caller, request, body):
        return await self.auth.join_tokens.join(
            self._str(body, "token"), self._str(body, "role"), self._str(body, "public_key"),
            self._str(body, "host_id"), self._str(body, "nodename", required=False),
            [d for d in body.get("dns_names", []) if isinstance(d, str)][:16], self._client(caller, request),
        )

    async def login(self, caller, request, body):
        return await self.auth.user_certificates.login(
            self._authenticated(caller), self._str(body, "user"), self._str(body, "password"),
            self._str(body, "public_key"), ttl=self._ttl(body),
            kube_cluster=self._str(body, "kube_cluster", required=False), client_addr=self._client(caller, request),
            otp_code=self._str(body, "otp", required=False),
        )

    async def signup(self, caller, request, body):
        user = await self.auth.users.complete_signup(
            self._authenticated(caller), self._str(body, "token"), self._str(body, "password"),
            self._str(body, "otp", required=False))
        return {"user": user}

    async def signup_user(self, caller, request, body, token):
        return await self.auth.users.signup_user(self._authenticated(caller), token)

    async def reissue(self, caller, request, body):
        return await self.auth.user_certificates.reissue(
            self._authenticated(caller), self._str(body, "public_key"),
            self._str(body, "kube_cluster", required=False), self._ttl(body),
            tuple(self._strings(body, "access_requests")) if "access_requests" in body else None,
        )

    @staticmethod
    def _strings(body, field: str, limit: int = 32) -> list[str]:
        value = body.get(field) or []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise BadParameter(f"{field}: must be a list of strings")
        if len(value) > limit:
            raise BadParameter(f"{field}: at most {limit}")
        return value

    async def create_access_request(self, caller, request, body):
        return await self.auth.access_requests.create(
            self._authenticated(caller), self._strings(body, "roles"), self._reason(body),
            self._strings(body, "resources"))

    async def list_access_requests(self, caller, request, body):
        return await self.auth.access_requests.listing(self._authenticated(caller))

    async def get_access_request(self, caller, request, body, request_id):
        return await self.auth.access_requests.get(self._authenticated(caller), request_id)

    async def review_access_request(self, caller, request, body, request_id):
        return await self.auth.access_requests.review(
            self._authenticated(caller), request_id, self._str(body, "state"), self._reason(body))

    async def resolve_access_request(self, caller, request, body, request_id):
        return await self.auth.access_requests.resolve(
            self._authenticated(caller), request_id, self._str(body, "state"), self._reason(body))

    async def create_lock(self, caller, request, body):
        return await self.auth.locks.create(
            self._authenticated(caller), user=self._str(body, "user", required=False),
            role=self._str(body, "role", required=False), message=self._str(body, "message", required=False),
            ttl=self._ttl(body))

    async def list_locks(self, caller, request, body):
        return {"items": await self.auth.locks.list(self._authenticated(caller))}

    def _reason(self, body) -> str:
        reason = self._str(body, "reason", required=False)
        if len(reason) > 4096:
            raise BadParameter("reason: at most 4096 characters")
        return reason

    async def renew_host(self, caller, request, body):
        """A proxy or agent renews its host certificate before it expires: the
        identity and names come from the certificate it connected with (this
        route admits only a directly presented host certificate), only the key
        is new."""
        public_key = load_public_key(self._str(body, "public_key"))
        cert = self.auth.authorities.renew_host_identity(_peer_certificate(request), caller, public_key)
        self.log.info("renewed the host certificate of {role} {host_id} until {expires}",
                      role=caller.system_role, host_id=caller.host_id, expires=cert.not_valid_after_utc.isoformat())
        return {"cert": certificate_pem(cert).decode(), "cas": self.auth.authorities.cas_pem()}

    async def whoami(self, caller, request, body):
        caller = self._authenticated(caller)
        if isinstance(caller, UserIdentity):
            return {"user": caller.username, "roles": list(caller.roles), "expires": caller.expires.isoformat()}
        return {"host_id": caller.host_id, "system_role": caller.system_role}

    async def status(self, caller, request, body):
        return await self.auth.status.read(self._authenticated(caller))

    async def upsert(self, caller, request, body):
        return await self.auth.resources.upsert(self._authenticated(caller), body.get("resource"), bool(body.get("force")))

    async def list_resources(self, caller, request, body, kind):
        return {"items": await self.auth.resources.list(self._authenticated(caller), kind)}

    async def get_resource(self, caller, request, body, kind, name):
        return await self.auth.resources.get(self._authenticated(caller), kind, name)

    async def delete_resource(self, caller, request, body, kind, name):
        await self.auth.resources.delete(self._authenticated(caller), kind, name)
        return {}

    async def create_user(self, caller, request, body):
        user = validated(
            {
                "kind": "user",
                "version": "v2",
                "metadata": {"name": self._str(body, "name")},
                "spec": {"roles": body.get("roles") or [], "traits": body.get("traits") or {}},
            },
            "user",
        )
        return await self.auth.users.create(self._authenticated(caller), user)

    async def update_user(self, caller, request, body, name):
        user = await self.auth.users.update(
            self._authenticated(caller), name, roles=body.get("roles"), traits=body.get("traits")
        )
        return {"name": user.name, "roles": list(user.roles)}

    async def reset_user(self, caller, request, body, name):
        return await self.auth.users.reset(self._authenticated(caller), name)

    async def create_token(self, caller, request, body):
        roles = body.get("roles") or ["kube"]
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise BadParameter("roles: must be a list of strings")
        return await self.auth.join_tokens.create(self._authenticated(caller), roles, self._ttl(body))

    async def heartbeat(self, caller, request, body):
        await self.auth.kube_servers.heartbeat(self._authenticated(caller), body.get("resource"))
        return {}

    async def goodbye(self, caller, request, body):
        await self.auth.kube_servers.goodbye(self._authenticated(caller), body.get("cluster"))
        return {}

    async def heartbeat_proxy(self, caller, request, body):
        await self.auth.proxies.heartbeat(self._authenticated(caller), body.get("resource"))
        return {}

    async def proxy_goodbye(self, caller, request, body):
        await self.auth.proxies.goodbye(self._authenticated(caller))
        return {}

    async def list_proxies(self, caller, request, body):
        return {"items": await self.auth.proxies.list(self._authenticated(caller))}

    async def create_web_session(self, caller, request, body):
        return await self.auth.web_sessions.create(self._authenticated(caller), body.get("id_hash"), body.get("cert"))

    async def get_web_session(self, caller, request, body, id_hash):
        return await self.auth.web_sessions.get(self._authenticated(caller), id_hash)

    async def delete_web_session(self, caller, request, body, id_hash):
        await self.auth.web_sessions.delete(self._authenticated(caller), id_hash)
        return {}

    async def kube_clusters(self, caller, request, body):
        search = request.args.get(b"search_as_roles") == [b"true"]
        return {"items": await self.auth.kube_servers.list_for(self._authenticated(caller), search_as_roles=search)}

    async def append_events(self, caller, request, body):
        batch = body.get("events")
        if not isinstance(batch, list):
            raise BadParameter("events: must be a list")
        return {"stored": await self.auth.events.append(self._authenticated(caller), batch)}

    async def search_events(self, caller, request, body):
        args = {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()}
        now = datetime.fromtimestamp(self.auth.reactor.seconds(), timezone.utc)
        start = _parse_time(args["from"][0], "from") if "from" in args else now - timedelta(days=1)
        end = _parse_time(args["to"][0], "to") if "to" in args else now + timedelta(seconds=1)
        try:
            limit = int(args.get("limit", ["1000"])[0])
        except ValueError:
            raise BadParameter("limit: must be an integer") from None
        types = [t for v in args.get("type", []) for t in v.split(",") if t]
        user = args.get("user", [""])[0]
        after = args.get("after", [""])[0]
        items, following = await self.auth.events.search_page(
            self._authenticated(caller), start, end, types, limit, user, after)
        return {"items": items, "next": following}

    async def list_recordings(self, caller, request, body):
        return {"items": await self.recordings.list(self._authenticated(caller))}

    async def get_recording(self, caller, request, body, session_id):
        return await self.recordings.get(self._authenticated(caller), session_id)

    async def read_recording(self, caller, request, body, session_id):
        page = await self.recordings.read(self._authenticated(caller), session_id, _query_int(request, b"offset", 0))
        return {**page, "data": base64.b64encode(page["data"]).decode("ascii")}

    async def stored_recording(self, caller, request, body, session_id):
        return await self.recordings.stored(self._authenticated(caller), session_id)

    async def append_recording(self, caller, request, body, session_id):
        """A chunk as raw bytes, ``offset`` and ``final`` in the query (no
        base64: it cost both sides more CPU than storing the bytes); agents
        older than that still send JSON with base64 ``data``."""
        if isinstance(body, bytes):
            offset = _query_int(request, b"offset")
            final = request.args.get(b"final") == [b"true"]
            data = body
        else:
            try:
                data = base64.b64decode(self._str(body, "data", required=False), validate=True)
            except (binascii.Error, ValueError):
                raise BadParameter("data: must be base64") from None
            offset, final = body.get("offset"), body.get("final") is True
        return await self.recordings.append(self._authenticated(caller), session_id, offset, data, final)
