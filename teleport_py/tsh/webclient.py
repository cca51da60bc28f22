"""tsh's client for the proxy's web API (``/webapi/...``), over treq.

Trust: before login tsh knows nothing about the cluster, so the proxy must
present a certificate the system trusts (a public ``https_keypairs`` cert)
unless the user says ``--insecure``. After login the cluster's host CA is
known too, and either is accepted: the proxy may serve its host certificate
or a public one. ``--insecure`` turns verification off only when asked, and
is remembered in the profile so later commands behave the same.
"""
from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from attrs import frozen
from cryptography import x509
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from teleport_py.bounded_body import BodyTooLarge, read_bounded
from teleport_py.pki import certificate_pem, private_key_pem

MAX_RESPONSE = 16 << 20
_MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class WebError(Exception):
    """The proxy refused a request or answered something we cannot use; the message is for people."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@implementer(IOpenSSLTrustRoot)
@frozen
class _SystemOrCluster:
    """The system's CAs plus the cluster's host CAs in one OpenSSL store."""

    host_cas: tuple[x509.Certificate, ...]

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.set_default_verify_paths()
        store = context.get_cert_store()
        for ca in self.host_cas:
            store.add_cert(ssl.Certificate.loadPEM(certificate_pem(ca)).original)


@implementer(IOpenSSLClientConnectionCreator)
@frozen
class _Unverified:
    """``--insecure``: TLS without checking who answers (explicit opt-in only)."""

    server_name: bytes | None
    options: ssl.CertificateOptions

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        connection = self.options.clientConnectionForTLS(tlsProtocol)
        if self.server_name is not None:
            connection.set_tlsext_host_name(self.server_name)
        return connection


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@implementer(IPolicyForHTTPS)
@frozen
class ProxyTLSPolicy:
    insecure: bool
    host_cas: tuple[x509.Certificate, ...] = ()
    certificate: x509.Certificate | None = None
    private_key: Any = None

    def _client_certificate(self) -> ssl.PrivateCertificate | None:
        if self.certificate is None:
            return None
        return ssl.PrivateCertificate.loadPEM(certificate_pem(self.certificate) + private_key_pem(self.private_key))

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        host = hostname.decode("ascii")
        own = self._client_certificate()
        if self.insecure:
            options = ssl.CertificateOptions(
                privateKey=None if own is None else own.privateKey.original,
                certificate=None if own is None else own.original,
                raiseMinimumTo=_MINIMUM_VERSION,
            )
            return _Unverified(None if _is_ip_address(host) else hostname, options)
        return ssl.optionsForClientTLS(
            host,
            trustRoot=_SystemOrCluster(tuple(self.host_cas)),
            clientCertificate=own,
            extraCertificateOptions={"raiseMinimumTo": _MINIMUM_VERSION},
        )


class WebClient:
    """One method per web API call; every method is a coroutine returning the decoded JSON."""

    def __init__(
        self,
        reactor,
        proxy: str,
        *,
        insecure: bool = False,
        host_cas: Sequence[x509.Certificate] = (),
        certificate: x509.Certificate | None = None,
        private_key=None,
    ):
        policy = ProxyTLSPolicy(insecure, tuple(host_cas), certificate, private_key)
        agent = Agent(reactor, contextFactory=policy, pool=HTTPConnectionPool(reactor, persistent=False))
        self.http = HTTPClient(agent)
        self.base_url = "https://%s" % proxy

    async def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        headers = {b"accept": [b"application/json"]}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers[b"content-type"] = [b"application/json"]
        response = await self.http.request(method, self.base_url + path, data=data, headers=headers)
        try:
            content = await read_bounded(response, MAX_RESPONSE)
        except BodyTooLarge:
            raise WebError(f"the proxy's answer is larger than {MAX_RESPONSE} bytes") from None
        try:
            payload = json.loads(content) if content else {}
        except ValueError:
            raise WebError("the proxy answered HTTP %d with a non-JSON body" % response.code, response.code) from None
        if response.code >= 400:
            raise WebError(_error_message(response.code, payload), response.code)
        if not isinstance(payload, dict):
            raise WebError("the proxy answered with unexpected JSON")
        return payload

    def ping(self):
        return self._call("GET", "/webapi/ping")

    def login(self, user: str, password: str, public_key_pem: str, ttl: float | None = None, otp: str = ""):
        body: dict[str, Any] = {"user": user, "password": password, "public_key": public_key_pem}
        if ttl:
            body["ttl"] = ttl
        if otp:
            body["otp"] = otp
        return self._call("POST", "/webapi/login", body)

    def signup(self, token: str, password: str):
        return self._call("POST", "/webapi/signup", {"token": token, "password": password})

    async def kube_clusters(self, search_as_roles: bool = False) -> list[dict]:
        """``search_as_roles``: those the roles you may search as reach too (``tsh request search``)."""
        path = "/webapi/kube/clusters" + ("?search_as_roles=true" if search_as_roles else "")
        items = (await self._call("GET", path)).get("items")
        if not isinstance(items, list) or not all(isinstance(i, dict) and "name" in i for i in items):
            raise WebError("the proxy's cluster list is malformed")
        return items

    def reissue(self, public_key_pem: str, kube_cluster: str, access_requests: list[str] | None = None):
        """A new certificate; ``access_requests`` None keeps the elevation the
        current certificate carries, a list sets it (empty: none)."""
        body: dict[str, Any] = {"public_key": public_key_pem, "kube_cluster": kube_cluster}
        if access_requests is not None:
            body["access_requests"] = list(access_requests)
        return self._call("POST", "/webapi/certs/reissue", body)

    async def kube_resources(self, kind: str, kube_cluster: str, namespace: str = "") -> dict:
        """Pods or namespaces of ``kube_cluster`` you may request (``tsh request search``)."""
        query = urlencode({"kind": kind, "kube_cluster": kube_cluster, "namespace": namespace})
        answer = await self._call("GET", "/webapi/kube/resources?" + query)
        items = answer.get("items") if isinstance(answer, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, dict) and "id" in i for i in items):
            raise WebError("the proxy's resource list is malformed")
        return answer

    def create_access_request(self, roles: list[str], reason: str, resources: list[str] = ()):
        return self._call("POST", "/webapi/access_requests",
                          {"roles": roles, "reason": reason, "resources": list(resources)})

    async def access_requests(self) -> list[dict]:
        items = (await self._call("GET", "/webapi/access_requests")).get("items")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise WebError("the proxy's access request list is malformed")
        return items

    def access_request(self, request_id: str):
        return self._call("GET", "/webapi/access_requests/%s" % quote(request_id, safe=""))

    def review_access_request(self, request_id: str, state: str, reason: str):
        return self._call("POST", "/webapi/access_requests/%s/reviews" % quote(request_id, safe=""),
                          {"state": state, "reason": reason})

    async def recordings(self) -> list[dict]:
        return (await self._call("GET", "/webapi/recordings")).get("items", [])

    def recording_data(self, session_id: str, offset: int):
        """One page of a recording's bytes from ``offset``, as Auth pages it (see docs/recordings.md)."""
        return self._call("GET", "/webapi/recordings/%s/data?offset=%d" % (quote(session_id, safe=""), offset))


def _error_message(status: int, payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message:
        return message
    return "the proxy answered HTTP %d" % status
