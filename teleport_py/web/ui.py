"""The web UI's JSON API and pages, under ``/web/`` on the proxy's web port.

Sign-in sends the password to Auth exactly as ``tsh login`` does (through
the same ``/v1/login``, with the browser's address as the client address),
so the same login throttling (``auth.ratelimit``) and audit apply. The
certificate Auth answers with is kept in a server-side session
(``web.sessions``); every later call is relayed to Auth with it as the
user certificate, so Auth decides what the user may see by the same role
rules as for tsh (kube clusters, the ``event`` and ``session`` rules, one's
own sessions).

Cookies: ``__Host-session`` (HttpOnly, Secure, SameSite=Strict, Path=/),
ending with the certificate. CSRF: every state-changing call (POST) must
carry the session's token in ``X-CSRF-Token``; sign-in, which has no session
yet, must be JSON (a cross-site form cannot send that without a preflight we
never allow), and any POST with an ``Origin`` other than ours is refused.
GET calls change nothing.
"""
from __future__ import annotations

import base64
import re
import shlex
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.internet.interfaces import IPushProducer
from twisted.web import resource, server
from zope.interface import implementer

from teleport_py.auth.api import CLIENT_ADDR_HEADER, USER_CERT_HEADER
from teleport_py.auth.errors import AccessDenied, AuthError, BadParameter, NotFound
from teleport_py.pki import IdentityError, UserIdentity, generate_private_key, identity_from_certificate, load_certificate_pem
from teleport_py.proxy.webapi import REVIEW_FIELDS, Unavailable, client_address, json_body, json_response
from teleport_py.recording.asciicast import MEDIA_TYPE, AsciicastWriter
from teleport_py.recording.format import SESSION_ID, RecordingReader
from teleport_py.quiet import factory_for
from teleport_py.web.assets import Assets
from teleport_py.web.kube_client import WebKube
from teleport_py.web.sessions import WebSessions
from teleport_py.web.terminal_protocol import (
    ExecTarget, Refused, TerminalProtocolError, browser_upgrade_key, switching_protocols,
)
from teleport_py.web.terminal_relay import AgentExec, BrowserTerminal

log = Logger()

COOKIE = b"__Host-session"
CSRF_HEADER = b"x-csrf-token"
#: Events per page of the audit log, and the most one page may hold.
PAGE_SIZE, MAX_PAGE_SIZE = 50, 500
#: Pages of a recording one asciicast download reads at most (512 KiB each).
MAX_RECORDING_PAGES = 4096
_COOKIE_VALUE = re.compile(rb"^[A-Za-z0-9_-]{1,128}$")


class Unauthenticated(AuthError):
    status = 401
    kind = "unauthenticated"


def session_cookie(request) -> str | None:
    value = request.getCookie(COOKIE)
    return value.decode("ascii") if value is not None and _COOKIE_VALUE.match(value) else None


def _arg(request, name: str, default: str = "") -> str:
    return request.args.get(name.encode(), [default.encode()])[0].decode("utf-8", "replace")


def _int_arg(request, name: str, default: int, low: int, high: int) -> int:
    text = _arg(request, name, str(default))
    try:
        value = int(text)
    except ValueError:
        raise BadParameter(f"{name}: must be an integer") from None
    if not low <= value <= high:
        raise BadParameter(f"{name}: must be between {low} and {high}")
    return value


@implementer(IPushProducer)
class WriteGate:
    """Back-pressure for a response written in pieces: registered as the
    request's producer, it is paused while the browser's side of the
    connection has too much unsent, and ``ready`` waits until it may go on
    (never, once the connection is gone), so the proxy reads the next page
    of a recording from Auth only when the last one has left."""

    def __init__(self) -> None:
        self._resumed: Deferred | None = None
        self.stopped = False

    def pauseProducing(self) -> None:
        if self._resumed is None:
            self._resumed = Deferred()

    def resumeProducing(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()

    async def ready(self) -> bool:
        """False when the connection is gone."""
        if self._resumed is not None:
            await self._resumed
        return not self.stopped


class _Route:
    def __init__(self, method: bytes, pattern: str, handler, *, signed_in: bool = True) -> None:
        self.method, self.parts, self.handler, self.signed_in = method, pattern.split("/"), handler, signed_in

    def match(self, method: bytes, path: list[str]) -> list[str] | None:
        if method != self.method or len(path) != len(self.parts):
            return None
        if not all(p == "*" or p == q for p, q in zip(self.parts, path)):
            return None
        return [q for p, q in zip(self.parts, path) if p == "*"]


class WebUI(resource.Resource):
    """Everything under ``/web/`` except the invitation page."""

    isLeaf = True

    def __init__(self, reactor, auth_client, sessions: WebSessions, assets: Assets, *, user_ca,
                 cluster_name: str, public_addr: str, kube: WebKube | None = None) -> None:
        super().__init__()
        self._reactor = reactor
        self._auth = auth_client
        self._sessions = sessions
        self._assets = assets
        self._user_ca = user_ca
        self._cluster_name = cluster_name
        self._public_addr = public_addr
        self._kube = kube
        self._routes = (
            _Route(b"POST", "api/login", self.login, signed_in=False),
            _Route(b"POST", "api/logout", self.logout),
            _Route(b"GET", "api/session", self.session),
            _Route(b"GET", "api/clusters", self.clusters),
            _Route(b"GET", "api/events", self.events),
            _Route(b"GET", "api/recordings", self.recordings),
            _Route(b"GET", "api/recordings/*", self.recording),
            _Route(b"GET", "api/recordings/*/data", self.recording_data),
            _Route(b"GET", "api/recordings/*/asciicast", self.asciicast),
            _Route(b"GET", "api/access_requests", self.access_requests),
            _Route(b"POST", "api/access_requests/*/reviews", self.review_access_request),
            _Route(b"GET", "api/kube/*/namespaces", self.namespaces),
            _Route(b"GET", "api/kube/*/namespaces/*/pods", self.pods),
        )

    def render(self, request):
        path = [p.decode("utf-8", "replace") for p in request.postpath[1:]]
        if not path or path[0] != "api":
            return self._assets.render(request, "/".join(path))
        request.setHeader(b"cache-control", b"no-store")
        if request.method == b"GET" and len(path) == 4 and path[:2] == ["api", "kube"] and path[3] == "exec":
            return self.terminal(request, path[2])
        for route in self._routes:
            args = route.match(request.method, path)
            if args is not None:
                Deferred.fromCoroutine(self._run(route, request, args)).addErrback(self._unexpected, request)
                return server.NOT_DONE_YET
        return json_response(request, 404, NotFound(f"no such call {request.method.decode()} /web/{'/'.join(path)}").to_json())

    async def _run(self, route: _Route, request, args: list[str]) -> None:
        try:
            self._check_origin(request)
            session = None
            if route.signed_in:
                session = await self._signed_in(request)
                if request.method != b"GET" and not session.csrf_matches(
                        (request.getHeader(CSRF_HEADER) or b"").decode("utf-8", "replace")):
                    raise AccessDenied("missing or wrong CSRF token (X-CSRF-Token); reload the page")
            payload = await route.handler(request, session, *args)
            status = 200
        except AuthError as e:
            status, payload = e.status, e.to_json()
        except Exception as e:
            log.warn("web UI call failed path={path} error={error}", path=request.path, error=type(e).__name__)
            status, payload = 502, Unavailable("the auth server is unavailable, try again later").to_json()
        if payload is not None:
            json_response(request, status, payload, finish_now=True)

    def _unexpected(self, failure, request) -> None:
        log.failure("web UI request failed", failure)
        json_response(request, 500, AuthError("internal error").to_json(), finish_now=True)

    def _check_origin(self, request) -> None:
        """A POST from another site's page is refused, whatever it carries."""
        if request.method == b"GET":
            return
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host")
        if origin is not None and (host is None or origin != b"https://" + host):
            raise AccessDenied("cross-origin request refused")

    async def _signed_in(self, request):
        session = await self._sessions.get(session_cookie(request))
        if session is None:
            raise Unauthenticated("you are not signed in, or your session has ended; sign in again")
        return session

    def _as(self, request, session):
        """Auth as this session's user: their certificate, as the proxy forwards tsh's."""
        return self._auth.with_headers({
            CLIENT_ADDR_HEADER: [client_address(request).encode("ascii")],
            USER_CERT_HEADER: [base64.b64encode(session.certificate_pem)],
        })

    def _set_cookie(self, request, value: str, max_age: int) -> None:
        request.setHeader(b"set-cookie", b"%s=%s; Path=/; Max-Age=%d; Secure; HttpOnly; SameSite=Strict" % (
            COOKIE, value.encode("ascii"), max_age))

    async def _signed_in_same_origin(self, request):
        """For the terminal's WebSocket, which a browser opens with no custom
        header: an ``Origin`` that is ours (browsers always send one with a
        WebSocket), the cookie's session and its CSRF token in the URL
        (``csrf``)."""
        origin, host = request.getHeader(b"origin"), request.getHeader(b"host")
        if origin is None or host is None or origin != b"https://" + host:
            raise AccessDenied("cross-origin request refused")
        session = await self._signed_in(request)
        if not session.csrf_matches(_arg(request, "csrf") or None):
            raise AccessDenied("missing or wrong CSRF token (csrf); reload the page")
        return session

    # -- sign-in ----------------------------------------------------------------

    async def login(self, request, _session):
        if (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower() != b"application/json":
            raise BadParameter("sign-in must be sent as application/json")
        body = json_body(request)
        user, password, otp = body.get("user"), body.get("password"), body.get("otp", "")
        if not isinstance(user, str) or not user or not isinstance(password, str) or not password:
            raise BadParameter("user and password are required")
        if not isinstance(otp, str):
            raise BadParameter("otp: must be a string")
        key = generate_private_key()
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
        relay = self._auth.with_headers({CLIENT_ADDR_HEADER: [client_address(request).encode("ascii")]})
        result = await relay.call("POST", "login", {"user": user, "password": password, "public_key": public_pem,
                                                    **({"otp": otp} if otp else {})})
        try:
            cert = load_certificate_pem(result["cert"].encode("ascii"))
            identity = identity_from_certificate(cert, user_ca=self._user_ca, host_ca=None)
        except (KeyError, AttributeError, ValueError, IdentityError):
            raise AuthError("the auth server answered sign-in with an unusable certificate") from None
        if not isinstance(identity, UserIdentity) or identity.username != user:
            raise AuthError("the auth server answered sign-in with another user's certificate")
        session_id, session = await self._sessions.create(result["cert"].encode("ascii"))
        self._set_cookie(request, session_id, max(0, int(session.expires - self._reactor.seconds())))
        log.debug("web sign-in user={user}", user=user)
        return self._describe(session)

    def _describe(self, session) -> dict[str, Any]:
        return {"user": session.user, "csrf_token": session.csrf_token,
                "expires": datetime.fromtimestamp(session.expires, timezone.utc).isoformat(),
                "cluster_name": self._cluster_name, "proxy_public_addr": self._public_addr}

    async def logout(self, request, session):
        await self._sessions.end(session_cookie(request))
        self._set_cookie(request, "", 0)
        return {}

    async def session(self, request, session):
        return self._describe(session)

    # -- pages' data ------------------------------------------------------------

    async def clusters(self, request, session):
        items = (await self._as(request, session).call("GET", "kube_clusters"))["items"]
        for item in items:
            item["login_command"] = (f"tsh login --proxy={self._public_addr} --user={session.user} && "
                                     f"tsh kube login {item['name']}")
        return {"items": items}

    async def events(self, request, session):
        """One page of the audit log, oldest first, with Auth's filters:
        paged in Auth (``after``: the cursor Auth gave with the page before),
        so the proxy holds one page, never the log up to it."""
        size = _int_arg(request, "page_size", PAGE_SIZE, 1, MAX_PAGE_SIZE)
        params = {"limit": str(size)}
        for name in ("from", "to", "type", "user", "after"):
            value = _arg(request, name)
            if value:
                params[name] = value
        result = await self._as(request, session).call("GET", "events", params=params)
        following = result.get("next") or ""
        return {"items": result["items"], "page_size": size, "next": following, "has_more": bool(following)}

    async def recordings(self, request, session):
        return await self._as(request, session).call("GET", "recordings")

    # -- Kubernetes, through the agents (web.kube_client) -------------------------

    async def _kube_get(self, request, session, cluster: str, path: str):
        if self._kube is None:
            raise Unavailable("this proxy does not reach Kubernetes clusters")
        certificate = await self._kube.certificate(self._as(request, session), session, cluster)
        return await self._kube.get(cluster, certificate, client_address(request), path)

    async def namespaces(self, request, session, cluster):
        """The namespaces the user may list there (the agent filters by role)."""
        answer = await self._kube_get(request, session, cluster, "/api/v1/namespaces")
        return {"items": sorted(i["metadata"]["name"] for i in answer.get("items", []))}

    async def pods(self, request, session, cluster, namespace):
        """A namespace's pods the user may list, with their containers."""
        if not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", namespace):
            raise BadParameter("namespace: must be a Kubernetes name")
        answer = await self._kube_get(request, session, cluster, f"/api/v1/namespaces/{namespace}/pods")
        items = []
        for pod in answer.get("items", []):
            items.append({"name": pod["metadata"]["name"], "phase": pod.get("status", {}).get("phase", ""),
                          "containers": [c["name"] for c in pod.get("spec", {}).get("containers", [])]})
        return {"items": sorted(items, key=lambda p: p["name"])}

    def terminal(self, request, cluster: str):
        """``GET /web/api/kube/<cluster>/exec?namespace&pod&container&command&csrf``
        upgraded to a WebSocket: a terminal on the pod (web.terminal_relay)."""
        Deferred.fromCoroutine(self._open_terminal(request, cluster)).addErrback(self._unexpected, request)
        return server.NOT_DONE_YET

    async def _open_terminal(self, request, cluster: str) -> None:
        try:
            if self._kube is None:
                raise Unavailable("this proxy does not reach Kubernetes clusters")
            key = browser_upgrade_key(request.getHeader)
            try:
                command = tuple(shlex.split(_arg(request, "command") or "sh"))
            except ValueError as e:
                raise BadParameter(f"command: {e}") from None
            target = ExecTarget(_arg(request, "namespace"), _arg(request, "pod"), _arg(request, "container"), command)
            session = await self._signed_in_same_origin(request)
            if not hasattr(request.channel, "take_over"):
                raise BadParameter("the terminal needs HTTP/1.1")
        except TerminalProtocolError as e:
            json_response(request, 400, BadParameter(str(e)).to_json(), finish_now=True)
            return
        except AuthError as e:
            json_response(request, e.status, e.to_json(), finish_now=True)
            return
        if request.channel is None:
            return  # the browser left while we asked Auth
        session_id = session_cookie(request)

        async def still_signed_in() -> bool:
            return await self._sessions.get(session_id) is not None

        terminal = BrowserTerminal(
            self._reactor, lambda t: Deferred.fromCoroutine(self._start_exec(request, session, cluster, target, t)),
            expires=session.expires, still_signed_in=still_signed_in,
            describe=f"user={session.user} cluster={cluster} pod={target.namespace}/{target.pod}")
        request.channel.transport.write(switching_protocols(key))
        request.channel.take_over(terminal)

    async def _start_exec(self, request, session, cluster: str, target: ExecTarget, terminal: BrowserTerminal):
        """The proxy's exec for the terminal, as the session's user; the browser is told why if it does not start."""
        try:
            certificate = await self._kube.certificate(self._as(request, session), session, cluster)
            endpoint = self._kube.endpoint(cluster, certificate, client_address(request))
            decided = Deferred()
            agent = AgentExec.for_target(target, decided.callback)
            await endpoint.connect(factory_for(agent))
            answer = await decided
        except AuthError as e:
            terminal.end(e.message, e.status)
            return
        except Exception as e:
            log.warn("web terminal: the exec could not start error={error}", error=type(e).__name__)
            terminal.end("the Kubernetes service could not be reached, try again", 503)
            return
        if isinstance(answer, Refused):
            terminal.end(answer.message, answer.status)
            return
        terminal.joined(agent)

    @staticmethod
    def _session_id(session_id: str) -> str:
        if not SESSION_ID.match(session_id):
            raise BadParameter("session id: must be a UUID")
        return quote(session_id, safe="")

    async def recording(self, request, session, session_id):
        return await self._as(request, session).call("GET", f"recordings/{self._session_id(session_id)}")

    async def recording_data(self, request, session, session_id):
        offset = _int_arg(request, "offset", 0, 0, 1 << 62)
        return await self._as(request, session).call(
            "GET", f"recordings/{self._session_id(session_id)}/data", params={"offset": str(offset)})

    async def asciicast(self, request, session, session_id):
        """The recording as asciicast v2, written page by page as Auth answers."""
        sid = self._session_id(session_id)
        auth = self._as(request, session)
        await auth.call("GET", f"recordings/{sid}")  # refused before a byte is written
        request.setResponseCode(200)
        request.setHeader(b"content-type", MEDIA_TYPE.encode("ascii"))
        request.setHeader(b"content-disposition", f'attachment; filename="{session_id}.cast"'.encode("ascii"))
        reader, writer, offset = RecordingReader(), AsciicastWriter(), 0
        finished: list = []
        request.notifyFinish().addBoth(finished.append)
        gate = WriteGate()
        request.registerProducer(gate, True)
        for _ in range(MAX_RECORDING_PAGES):
            if not await gate.ready() or finished:
                return None
            try:
                page = await auth.call("GET", f"recordings/{sid}/data", params={"offset": str(offset)})
                data = base64.b64decode(page["data"], validate=True)
                offset = int(page["next_offset"])
                text = "".join(writer.feed(event) for event in reader.feed(data))
            except Exception as e:
                # Half an asciicast must not look whole: the connection is
                # closed without the chunked body's end, a failed download.
                log.warn("asciicast download cut short session={session} error={error}", session=session_id,
                         error=type(e).__name__)
                if not finished and request.channel is not None:
                    request.channel.loseConnection()
                return None
            if finished:
                return None
            if text:
                request.write(text.encode("utf-8"))
            if not data or offset >= int(page["size"]):
                break
        reader.close()
        if not finished:
            request.write(writer.close().encode("utf-8"))
            request.unregisterProducer()
            request.finish()
        return None

    # -- access requests ----------------------------------------------------------

    async def access_requests(self, request, session):
        """The requests Auth shows this user (their own, those they may review,
        all with an ``access_request`` list rule) and which of them Auth
        would take a review of from them now, as for ``tsh request ls``."""
        result = await self._as(request, session).call("GET", "access_requests")
        return {"items": result["items"], "reviewable": result.get("reviewable", [])}

    async def review_access_request(self, request, session, request_id):
        """Approve or deny: relayed to Auth as ``tsh request review`` is, so
        Auth alone decides (never the requester, ``review_requests`` roles,
        thresholds) and audits it."""
        body = {k: v for k, v in json_body(request).items() if k in REVIEW_FIELDS}
        return await self._as(request, session).call(
            "POST", f"access_requests/{quote(request_id, safe='')}/reviews", body)
