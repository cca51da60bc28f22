"""The HTTPS API tsh talks to, relayed to Auth with the proxy's identity.

The proxy decides nothing here: Auth does, from the proxy's host
certificate, the client address we pass along and, for a user's own calls,
the user certificate the proxy's TLS verified (``Teleport-User-Certificate``),
which Auth verifies again. Requests are never logged with bodies, and paths
holding secrets (invite tokens) are logged redacted.
"""
from __future__ import annotations

import base64
import html
import json
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web import resource, server

from teleport_py.auth.api import CLIENT_ADDR_HEADER, USER_CERT_HEADER
from teleport_py.auth.errors import AccessDenied, AuthError, BadParameter
from teleport_py.pki import IdentityError, UserIdentity, certificate_pem, identity_from_certificate, peer_certificate

log = Logger()

MAX_BODY = 1 << 20
LOGIN_FIELDS = ("user", "password", "public_key", "ttl", "kube_cluster", "otp")
SIGNUP_FIELDS = ("token", "password", "otp")
JOIN_FIELDS = ("token", "role", "public_key", "host_id", "nodename", "dns_names")
REISSUE_FIELDS = ("public_key", "kube_cluster", "ttl", "access_requests")
ACCESS_REQUEST_FIELDS = ("roles", "reason", "resources")
REVIEW_FIELDS = ("state", "reason")
EVENT_PARAMS = ("from", "to", "limit", "type", "user", "after")


class Unavailable(AuthError):
    status = 502
    kind = "unavailable"


def client_address(request) -> str:
    peer = request.getClientAddress()
    host, port = getattr(peer, "host", ""), getattr(peer, "port", "")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def json_body(request) -> dict[str, Any]:
    data = request.content.read(MAX_BODY + 1) if request.content else b""
    if len(data) > MAX_BODY:
        raise BadParameter("request body too large")
    try:
        body = json.loads(data or b"{}")
    except ValueError:
        raise BadParameter("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadParameter("request body must be a JSON object")
    return body


def finish(request, status: int, content_type: str, body: bytes) -> None:
    """Answer a request whose handler ran asynchronously, unless it is gone."""
    if request.finished or request.channel is None:
        return
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type.encode("ascii"))
    request.write(body)
    request.finish()


def json_response(request, status: int, payload: dict, *, finish_now: bool = False) -> bytes:
    """A JSON answer: returned for a synchronous ``render``, or written and
    finished (``finish_now``) by an asynchronous handler."""
    body = json.dumps(payload).encode("utf-8")
    if finish_now:
        finish(request, status, "application/json", body)
        return b""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return body


def _only(body: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k in fields}


class WebAPI(resource.Resource):
    isLeaf = True

    def __init__(self, auth_client, *, cluster_name: str, public_addr: str, user_ca, kube_search=None,
                 invite_script: str | None = None):
        super().__init__()
        self._auth = auth_client
        #: The built script that draws the invitation page's QR code (web.assets), if any.
        self._invite_script = invite_script
        #: proxy.kube_search.KubeResourceSearch: pods and namespaces, asked of an agent.
        self._kube_search = kube_search
        self._cluster_name = cluster_name
        self._public_addr = public_addr
        self._user_ca = user_ca
        self._routes = {
            (b"GET", "webapi/ping"): self.ping,
            (b"GET", "webapi/cas"): self.cas,
            (b"POST", "webapi/login"): self.login,
            (b"POST", "webapi/signup"): self.signup,
            (b"POST", "webapi/join"): self.join,
            (b"GET", "webapi/kube/clusters"): self.kube_clusters,
            (b"GET", "webapi/kube/resources"): self.kube_resources,
            (b"POST", "webapi/certs/reissue"): self.reissue,
            (b"GET", "webapi/whoami"): self.whoami,
            (b"GET", "webapi/events"): self.events,
            (b"GET", "webapi/recordings"): self.recordings,
            (b"POST", "webapi/access_requests"): self.create_access_request,
            (b"GET", "webapi/access_requests"): self.access_requests,
        }

    def render(self, request):
        path = "/".join(p.decode("utf-8", "replace") for p in request.postpath)
        if path.startswith("web/invite/") and path.count("/") == 2 and request.method in (b"GET", b"POST"):
            token = path.rsplit("/", 1)[1]
            Deferred.fromCoroutine(self._invite(request, token)).addErrback(self._unexpected, request)
            return server.NOT_DONE_YET
        handler = self._routes.get((request.method, path))
        if handler is None and request.method == b"GET" and path.startswith("webapi/recordings/"):
            handler = self.recording
        if handler is None and path.startswith("webapi/access_requests/"):
            handler = self.access_request
        if handler is None:
            return json_response(request, 404, {"error": {"kind": "not_found", "message": f"no such endpoint {request.method.decode()} /{path}"}})
        Deferred.fromCoroutine(self._run(handler, request)).addErrback(self._unexpected, request)
        return server.NOT_DONE_YET

    async def _run(self, handler, request) -> None:
        try:
            status, payload = 200, await handler(request)
        except AuthError as e:
            status, payload = e.status, e.to_json()
        except Exception as e:
            log.warn("auth server call failed path={path} error={error}", path=request.path, error=type(e).__name__)
            status, payload = 502, Unavailable("the auth server is unavailable, try again later").to_json()
        finish(request, status, "application/json", json.dumps(payload).encode("utf-8"))

    def _unexpected(self, failure, request) -> None:
        log.failure("web API request failed", failure)
        finish(request, 500, "application/json", json.dumps(AuthError("internal error").to_json()).encode())

    def _relay(self, request):
        return self._auth.with_headers({CLIENT_ADDR_HEADER: [client_address(request).encode("ascii")]})

    def _as_user(self, request):
        """The calling user's certificate, verified by our TLS, forwarded for Auth to verify again."""
        cert = self._user_certificate(request)
        return self._relay(request).with_headers({USER_CERT_HEADER: [base64.b64encode(certificate_pem(cert))]})

    def _user_certificate(self, request):
        """The calling user's certificate, as our TLS verified it."""
        cert = peer_certificate(request.channel.transport)
        if cert is None:
            raise AccessDenied("this call needs your user certificate; run 'tsh login' first")
        try:
            identity = identity_from_certificate(cert, user_ca=self._user_ca, host_ca=None)
        except IdentityError:
            raise AccessDenied("the client certificate is not a user certificate of this cluster") from None
        if not isinstance(identity, UserIdentity):
            raise AccessDenied("the client certificate is not a user certificate of this cluster")
        return cert

    # -- endpoints -----------------------------------------------------------

    async def ping(self, request):
        """What tsh and the sign-in page need before a login: the cluster, this
        proxy's address, and whether Auth wants an OTP code with the password."""
        auth = await self._relay(request).call("GET", "ping")
        return {"cluster_name": self._cluster_name, "proxy_public_addr": self._public_addr,
                "second_factor": auth.get("second_factor", "off")}

    async def cas(self, request):
        """The cluster's CA certificates (public): a joining agent checks them
        against its CA pin before it trusts the proxy with a token."""
        return await self._relay(request).call("GET", "cas")

    async def login(self, request):
        return await self._relay(request).call("POST", "login", _only(json_body(request), LOGIN_FIELDS))

    async def signup(self, request):
        return await self._relay(request).call("POST", "signup", _only(json_body(request), SIGNUP_FIELDS))

    async def join(self, request):
        return await self._relay(request).call("POST", "join", _only(json_body(request), JOIN_FIELDS))

    async def kube_clusters(self, request):
        """``?search_as_roles=true``: the clusters ``tsh request search --kind=kube_cluster`` lists."""
        params = {"search_as_roles": "true"} if request.args.get(b"search_as_roles") == [b"true"] else None
        return await self._as_user(request).call("GET", "kube_clusters", params=params)

    async def kube_resources(self, request):
        """``?kind=pod|namespace&kube_cluster=X[&namespace=N]``: ``tsh request search``, answered by an agent."""
        cert = self._user_certificate(request)
        if self._kube_search is None:
            raise BadParameter("this proxy does not search kubernetes resources")

        def arg(name: str) -> str:
            return request.args.get(name.encode(), [b""])[0].decode("utf-8", "replace")

        cluster = arg("kube_cluster")
        if not cluster:
            raise BadParameter("kube_cluster: name the kubernetes cluster to search")
        return await self._kube_search.search(
            certificate_pem(cert).decode("ascii"), client_address(request), cluster, arg("kind"), arg("namespace"))

    async def reissue(self, request):
        return await self._as_user(request).call("POST", "certs/user", _only(json_body(request), REISSUE_FIELDS))

    async def whoami(self, request):
        return await self._as_user(request).call("GET", "whoami")

    async def events(self, request):
        params = {
            key.decode(): [v.decode("utf-8", "replace") for v in values]
            for key, values in request.args.items()
            if key.decode("utf-8", "replace") in EVENT_PARAMS
        }
        return await self._as_user(request).call("GET", "events", params=params)

    async def recordings(self, request):
        return await self._as_user(request).call("GET", "recordings")

    async def recording(self, request):
        """``/webapi/recordings/<id>`` (metadata) and ``/webapi/recordings/<id>/data?offset=N``."""
        parts = request.path.decode("utf-8", "replace").split("?")[0].strip("/").split("/")[2:]
        if len(parts) == 1:
            return await self._as_user(request).call("GET", f"recordings/{quote(parts[0], safe='')}")
        if len(parts) == 2 and parts[1] == "data":
            offset = request.args.get(b"offset", [b"0"])[0].decode("ascii", "replace")
            return await self._as_user(request).call(
                "GET", f"recordings/{quote(parts[0], safe='')}/data", params={"offset": offset})
        raise BadParameter("no such recordings endpoint")

    async def create_access_request(self, request):
        return await self._as_user(request).call("POST", "access_requests", _only(json_body(request), ACCESS_REQUEST_FIELDS))

    async def access_requests(self, request):
        return await self._as_user(request).call("GET", "access_requests")

    async def access_request(self, request):
        """``GET /webapi/access_requests/<id>`` and ``POST .../<id>/reviews``."""
        parts = request.path.decode("utf-8", "replace").split("?")[0].strip("/").split("/")[2:]
        if len(parts) == 1 and request.method == b"GET":
            return await self._as_user(request).call("GET", f"access_requests/{quote(parts[0], safe='')}")
        if len(parts) == 2 and parts[1] == "reviews" and request.method == b"POST":
            return await self._as_user(request).call(
                "POST", f"access_requests/{quote(parts[0], safe='')}/reviews", _only(json_body(request), REVIEW_FIELDS))
        raise BadParameter("no such access_requests endpoint")

    # -- invitation page --------------------------------------------------------

    async def _invite(self, request, token: str) -> None:
        # The page may show an OTP secret: never kept by a browser's or proxy's cache.
        request.setHeader(b"cache-control", b"no-store")
        if request.method == b"GET":
            try:
                invited = await self._relay(request).call("GET", f"signup/{quote(token, safe='')}")
            except AuthError as e:
                finish(request, e.status, "text/html; charset=utf-8", _invalid_invite_page(e))
                return
            except Exception:
                finish(request, 502, "text/html; charset=utf-8", _message_page(
                    "Try again later", "The auth server is unavailable."))
                return
            finish(request, 200, "text/html; charset=utf-8", _invite_page(token, invited=invited, script=self._invite_script))
            return
        password = request.args.get(b"password", [b""])[0].decode("utf-8", "replace")
        confirm = request.args.get(b"password_confirm", [b""])[0].decode("utf-8", "replace")
        otp = request.args.get(b"otp", [b""])[0].decode("utf-8", "replace")
        try:
            if password != confirm:
                raise BadParameter("The passwords do not match.")
            result = await self._relay(request).call("POST", "signup", {"token": token, "password": password, "otp": otp})
        except AuthError as e:
            if e.status == 404:
                page = _invalid_invite_page(e)
            else:
                # Shown again with the device to register, the token still unused.
                try:
                    page = _invite_page(token, e.message, await self._relay(request).call(
                        "GET", f"signup/{quote(token, safe='')}"), script=self._invite_script)
                except AuthError as gone:
                    page = _invalid_invite_page(gone)
            finish(request, e.status, "text/html; charset=utf-8", page)
            return
        except Exception:
            finish(request, 502, "text/html; charset=utf-8", _message_page(
                "Try again later", "The auth server is unavailable."))
            return
        user = html.escape(str(result.get("user", "")))
        page = f"<!doctype html><title>Welcome</title><p>User <b>{user}</b> is ready. Log in with <code>tsh login --user={user}</code>.</p>"
        finish(request, 200, "text/html; charset=utf-8", page.encode("utf-8"))


def _message_page(title: str, message: str) -> bytes:
    return (f"<!doctype html><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>"
            f'<p role="alert">{html.escape(message)}</p>').encode("utf-8")


def _invalid_invite_page(error: AuthError) -> bytes:
    return _message_page(
        "Invitation not valid",
        "This invitation link has already been used or has expired. Ask your administrator for a new one "
        "(tctl users reset <user>)." if error.status == 404 else error.message)


def _invite_page(token: str, error: str = "", invited: dict | None = None, script: str | None = None) -> bytes:
    """The sign-up form; with ``second_factor: otp`` also the OTP device to
    register (its secret and otpauth:// URI for an authenticator app; with the
    built ``script``, also as a QR code it draws) and a field for the first
    code it shows."""
    invited = invited or {}
    user = str(invited.get("user", ""))
    problem = f'<p role="alert">{html.escape(error)}</p>' if error else ""
    who = f"<p>For user <b>{html.escape(user)}</b>.</p>" if user else ""
    device = ""
    if isinstance(invited.get("otp_secret"), str):
        secret = invited["otp_secret"]
        grouped = " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))
        device = (
            "<h2>Register an OTP device</h2><p>This cluster asks for a one-time code at every login. Add this "
            "secret to an authenticator app (time-based, SHA-1, 6 digits, 30 s), then enter the code it shows.</p>"
            f'<p>Secret: <code id="otp-secret">{html.escape(grouped)}</code></p>'
            f'<p>Or open: <code id="otp-uri">{html.escape(str(invited.get("otp_uri", "")))}</code></p>'
            + (f'<p>Or scan:</p><div id="otp-qr" data-uri="{html.escape(str(invited.get("otp_uri", "")), quote=True)}">'
               "</div>" if script else "") +
            '<label>OTP code <input name="otp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" '
            "required></label>"
        )
    return (
        '<!doctype html><title>Set your password</title><link rel="icon" href="data:,">'
        + (f'<script defer src="{html.escape(script, quote=True)}"></script>' if script else "")
        + "<h1>Set your password</h1>"
        f"{who}{problem}"
        f'<form method="post" action="/web/invite/{html.escape(token, quote=True)}">'
        '<label>Password <input type="password" name="password" autocomplete="new-password" required></label>'
        '<label>Confirm <input type="password" name="password_confirm" autocomplete="new-password" required></label>'
        f"{device}"
        '<button type="submit">Sign up</button></form>'
    ).encode("utf-8")


class WebSite(server.Site):
    """A Site whose access log shows no secrets: invite tokens are redacted."""

    def log(self, request) -> None:
        path = request.path.decode("utf-8", "replace")
        if path.startswith("/web/invite/"):
            path = "/web/invite/<redacted>"
        log.info(
            "web request client={client} method={method} path={path} code={code}",
            client=client_address(request), method=request.method.decode("ascii", "replace"),
            path=path, code=request.code,
        )
