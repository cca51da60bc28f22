"""A client for the Auth API (treq), used by tctl, the proxy and agents.

The transport is pluggable: tctl dials the auth address directly; an agent
reaches Auth through a reverse-tunnel stream (``endpoint_factory``) and still
speaks TLS end to end with its own host certificate. Either way the server
certificate must chain to the cluster's host CA and name the auth service.
"""
from __future__ import annotations

import base64
import json
from typing import Any, Iterable
from urllib.parse import urlencode

from treq.client import HTTPClient
from twisted.internet.endpoints import wrapClientTLS
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from teleport_py.auth.errors import AuthError, error_from_json
from teleport_py.bounded_body import BodyTooLarge, read_bounded
from teleport_py.pki import AUTH_SERVER_NAME, client_tls_options
from teleport_py.quiet import QuietHTTPConnectionPool

MAX_RESPONSE = 64 << 20
OCTET_STREAM = b"application/octet-stream"
#: No call may hang forever: agents' uploaders and heartbeats retry with
#: backoff, but only once a call has failed.
DEFAULT_TIMEOUT = 60.0


@implementer(IPolicyForHTTPS)
class ClusterTLSPolicy:
    """Verify the server against the cluster's host CA under a fixed name,
    presenting our certificate (if any)."""

    def __init__(self, trusted_cas, certificate=None, private_key=None, server_name: str = AUTH_SERVER_NAME):
        self.trusted_cas = list(trusted_cas)
        self.certificate = certificate
        self.private_key = private_key
        self.server_name = server_name

    def creatorForNetloc(self, hostname, port):
        return client_tls_options(
            self.server_name,
            trusted_cas=self.trusted_cas,
            certificate=self.certificate,
            private_key=self.private_key,
        )


@implementer(IAgentEndpointFactory)
class _TLSEndpoints:
    def __init__(self, tcp_endpoint, policy: ClusterTLSPolicy):
        self._tcp = tcp_endpoint
        self._policy = policy

    def endpointForURI(self, uri):
        return wrapClientTLS(self._policy.creatorForNetloc(b"auth", 0), self._tcp)


class AuthClient:
    def __init__(self, http: HTTPClient, base_url: str, headers: dict[bytes, list[bytes]] | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.headers = headers or {}
        self.timeout = timeout

    @classmethod
    def direct(cls, reactor, address: str, *, trusted_cas: Iterable, certificate=None, private_key=None,
               pool: HTTPConnectionPool | None = None) -> "AuthClient":
        policy = ClusterTLSPolicy(trusted_cas, certificate, private_key)
        pool = pool or QuietHTTPConnectionPool(reactor, persistent=True)
        agent = Agent(reactor, contextFactory=policy, pool=pool)
        return cls(HTTPClient(agent), f"https://{address}")

    @classmethod
    def failover(cls, reactor, tcp_endpoint, policy: ClusterTLSPolicy, pool: HTTPConnectionPool) -> "AuthClient":
        """Calls over TLS (as ``policy`` says at each connection, so a renewed
        certificate is used) to whichever Auth server ``tcp_endpoint`` (a
        FailoverEndpoint over ``teleport.auth_servers``) reaches."""
        return cls.over_endpoints(reactor, _TLSEndpoints(tcp_endpoint, policy), pool)

    @classmethod
    def over_endpoints(cls, reactor, endpoint_factory, pool: HTTPConnectionPool | None = None) -> "AuthClient":
        """``endpoint_factory.endpointForURI(uri)`` supplies connected-TLS endpoints;
        ``pool`` keeps them (its owner closes it on shutdown)."""
        pool = pool or QuietHTTPConnectionPool(reactor, persistent=True)
        agent = Agent.usingEndpointFactory(reactor, endpoint_factory, pool=pool)
        return cls(HTTPClient(agent), "http://auth")

    def with_headers(self, headers: dict[bytes, list[bytes]]) -> "AuthClient":
        merged = dict(self.headers)
        merged.update(headers)
        return AuthClient(self.http, self.base_url, merged, self.timeout)

    async def call(self, method: str, path: str, body: dict | None = None, params: dict | None = None,
                   content: bytes | None = None) -> Any:
        """``body`` is sent as JSON, ``content`` as raw bytes (recording chunks)."""
        url = f"{self.base_url}/v1/{path}"
        if params:
            url += "?" + urlencode(params, doseq=True)
        headers = dict(self.headers)
        if content is not None:
            data = content
            headers[b"content-type"] = [OCTET_STREAM]
        elif body is not None:
            data = json.dumps(body).encode("utf-8")
            headers[b"content-type"] = [b"application/json"]
        else:
            data = None
        # treq cancels the call when no response has arrived in time.
        response = await self.http.request(method, url, data=data, headers=headers, timeout=self.timeout)
        try:
            content = await read_bounded(response, MAX_RESPONSE)
        except BodyTooLarge:
            raise AuthError(f"auth server response larger than {MAX_RESPONSE} bytes") from None
        try:
            payload = json.loads(content) if content else {}
        except ValueError:
            raise AuthError(f"auth server answered HTTP {response.code} with a non-JSON body") from None
        if response.code >= 400:
            raise error_from_json(response.code, payload)
        return payload

    # Convenience wrappers, one per API call.
    def ping(self):
        return self.call("GET", "ping")

    def cas(self):
        return self.call("GET", "cas")

    def status(self):
        return self.call("GET", "status")

    def whoami(self):
        return self.call("GET", "whoami")

    def upsert(self, resource: dict, force: bool = False):
        return self.call("POST", "resources", {"resource": resource, "force": force})

    async def list(self, kind: str) -> list[dict]:
        return (await self.call("GET", f"resources/{kind}"))["items"]

    def get(self, kind: str, name: str):
        return self.call("GET", f"resources/{kind}/{name}")

    def delete(self, kind: str, name: str):
        return self.call("DELETE", f"resources/{kind}/{name}")

    def create_user(self, name: str, roles: list[str], traits: dict[str, list[str]] | None = None):
        return self.call("POST", "users", {"name": name, "roles": roles, "traits": traits or {}})

    def update_user(self, name: str, roles: list[str] | None = None, traits: dict[str, list[str]] | None = None):
        body: dict[str, Any] = {}
        if roles is not None:
            body["roles"] = roles
        if traits is not None:
            body["traits"] = traits
        return self.call("PATCH", f"users/{name}", body)

    def reset_user(self, name: str):
        return self.call("POST", f"users/{name}/reset", {})

    def signup(self, token: str, password: str):
        return self.call("POST", "signup", {"token": token, "password": password})

    def login(self, user: str, password: str, public_key_pem: str, ttl: float | None = None, kube_cluster: str = ""):
        body = {"user": user, "password": password, "public_key": public_key_pem, "kube_cluster": kube_cluster}
        if ttl:
            body["ttl"] = ttl
        return self.call("POST", "login", body)

    def reissue(self, public_key_pem: str, kube_cluster: str = "", ttl: float | None = None,
                access_requests: list[str] | tuple[str, ...] = ()):
        body: dict[str, Any] = {"public_key": public_key_pem, "kube_cluster": kube_cluster}
        if access_requests:
            body["access_requests"] = list(access_requests)
        if ttl:
            body["ttl"] = ttl
        return self.call("POST", "certs/user", body)

    def create_access_request(self, roles: list[str], reason: str = "", resources: list[str] = ()):
        return self.call("POST", "access_requests", {"roles": roles, "reason": reason, "resources": list(resources)})

    async def list_access_requests(self) -> list[dict]:
        return (await self.call("GET", "access_requests"))["items"]

    def get_access_request(self, request_id: str):
        return self.call("GET", f"access_requests/{request_id}")

    def review_access_request(self, request_id: str, state: str, reason: str = ""):
        return self.call("POST", f"access_requests/{request_id}/reviews", {"state": state, "reason": reason})

    def resolve_access_request(self, request_id: str, state: str, reason: str = ""):
        return self.call("PUT", f"access_requests/{request_id}/state", {"state": state, "reason": reason})

    def create_lock(self, *, user: str = "", role: str = "", message: str = "", ttl: float | None = None):
        body: dict[str, Any] = {"user": user, "role": role, "message": message}
        if ttl:
            body["ttl"] = ttl
        return self.call("POST", "locks", body)

    async def list_locks(self) -> list[dict]:
        return (await self.call("GET", "locks"))["items"]

    def create_token(self, roles: list[str], ttl: float | None = None):
        body: dict[str, Any] = {"roles": roles}
        if ttl is not None:
            body["ttl"] = ttl
        return self.call("POST", "tokens", body)

    def join(self, token: str, role: str, public_key_pem: str, host_id: str, nodename: str, dns_names=()):
        return self.call(
            "POST",
            "join",
            {"token": token, "role": role, "public_key": public_key_pem, "host_id": host_id,
             "nodename": nodename, "dns_names": list(dns_names)},
        )

    def renew_host_certificate(self, public_key_pem: str):
        """A new host certificate for our own identity (``cert`` and ``cas``, PEM)."""
        return self.call("POST", "certs/host", {"public_key": public_key_pem})

    def heartbeat_kube(self, resource: dict):
        return self.call("POST", "heartbeats/kube", {"resource": resource})

    def kube_goodbye(self, cluster: str):
        """This agent stops serving ``cluster`` now (a clean shutdown)."""
        return self.call("POST", "heartbeats/kube/goodbye", {"cluster": cluster})

    def heartbeat_proxy(self, resource: dict):
        return self.call("POST", "heartbeats/proxy", {"resource": resource})

    def proxy_goodbye(self):
        """This proxy is stopping now: Auth forgets its heartbeat (a clean shutdown)."""
        return self.call("POST", "heartbeats/proxy/goodbye", {})

    async def list_proxies(self) -> list[dict]:
        """The proxies whose heartbeat is live (a proxy's call)."""
        return (await self.call("GET", "proxies"))["items"]

    def create_web_session(self, id_hash: str, certificate_pem: str):
        """A web UI session (a proxy's call): Auth keeps it under the hash of its id."""
        return self.call("POST", "web_sessions", {"id_hash": id_hash, "cert": certificate_pem})

    def get_web_session(self, id_hash: str):
        return self.call("GET", f"web_sessions/{id_hash}")

    def delete_web_session(self, id_hash: str):
        return self.call("DELETE", f"web_sessions/{id_hash}")

    async def kube_clusters(self) -> list[dict]:
        return (await self.call("GET", "kube_clusters"))["items"]

    def append_events(self, events: list[dict]):
        return self.call("POST", "events", {"events": events})

    async def search_events(self, start: str | None = None, end: str | None = None, types=(), limit: int = 1000):
        params: dict[str, Any] = {"limit": str(limit)}
        if start:
            params["from"] = start
        if end:
            params["to"] = end
        if types:
            params["type"] = ",".join(types)
        return (await self.call("GET", "events", params=params))["items"]

    async def recording_stored(self, session_id: str) -> int:
        """Bytes of the recording Auth holds (0 if none): where an upload resumes."""
        return (await self.call("GET", f"recordings/{session_id}/stored"))["size"]

    async def upload_recording(self, session_id: str, offset: int, data: bytes, final: bool) -> int:
        """Send one chunk at ``offset``, raw; returns the size Auth now holds."""
        params = {"offset": str(offset), "final": "true" if final else "false"}
        return (await self.call("POST", f"recordings/{session_id}/chunks", params=params, content=data))["size"]

    async def list_recordings(self) -> list[dict]:
        return (await self.call("GET", "recordings"))["items"]

    def get_recording(self, session_id: str):
        return self.call("GET", f"recordings/{session_id}")

    async def read_recording(self, session_id: str, offset: int = 0) -> dict:
        page = await self.call("GET", f"recordings/{session_id}/data", params={"offset": str(offset)})
        return {**page, "data": base64.b64decode(page["data"])}
