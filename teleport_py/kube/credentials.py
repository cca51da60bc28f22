"""The agent's own credentials for each Kubernetes API server it serves.

Two sources, as in Teleport: a kubeconfig file (every context is one cluster,
named after the context) or the in-cluster service account. Users never see
these credentials; the forwarder presents them on its own connection to the
API server and impersonates the user there.

Anything we cannot use safely is an error naming the kubeconfig field, never
a silent fallback (``insecure-skip-tls-verify`` included: we always verify the
API server against the CA the kubeconfig names).
"""
from __future__ import annotations

import base64
import os
from typing import Any, Mapping
from urllib.parse import urlsplit

import attrs
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from teleport_py.pki import client_tls_options, load_certificates_pem

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Where the service account is mounted, if not SERVICE_ACCOUNT_DIR (tests).
SERVICE_ACCOUNT_DIR_VARIABLE = "TELEPORT_PY_SERVICE_ACCOUNT_DIR"
#: Seconds between re-reads of a token file: client-go's cachingTokenSource
#: re-reads a service-account or kubeconfig tokenFile after a minute; the
#: kubelet rotates a projected token well before it expires (at 80 % of
#: its life, an hour at least), so a minute-old token is always still valid.
TOKEN_REREAD_INTERVAL = 60.0

log = Logger()


class CredentialsError(ValueError):
    """The kubeconfig or service account cannot be used; says which field and why."""


class TokenFile:
    """A bearer token in a file that is rotated under us (a projected
    service-account token, a kubeconfig ``tokenFile``). Read once when
    loaded; afterwards ``refresh`` re-reads it on a worker thread (never on
    the reactor thread, and never per request). A failed re-read keeps the
    last token and is logged: the old token stays valid for a while, and
    the API server refuses it once it is not."""

    def __init__(self, path: str, field: str) -> None:
        self.path = path
        self.field = field
        self.token = self.read()

    def __repr__(self) -> str:
        return f"TokenFile({self.path!r})"

    def read(self) -> str:
        """The file's token now (blocking: at load time or on a thread)."""
        data = _read(self.path, self.field)
        try:
            return data.decode("ascii").strip()
        except UnicodeDecodeError:
            raise CredentialsError(f"{self.field}: {self.path} is not an ASCII token") from None

    def refresh(self, reactor) -> Deferred:
        """Re-read the file on the reactor's thread pool; fires when done."""
        d = deferToThreadPool(reactor, reactor.getThreadPool(), self.read)

        def reread(token: str) -> None:
            self.token = token

        def failed(failure) -> None:
            log.warn("cannot re-read {field}, keeping the last token: {error}",
                     field=self.field, error=failure.getErrorMessage())

        return d.addCallbacks(reread, failed)


@attrs.frozen
class ClusterCredentials:
    """How to reach and authenticate to one API server."""

    name: str
    host: str
    port: int
    ca_certificates: tuple[x509.Certificate, ...] = attrs.field(repr=False)
    client_certificate: x509.Certificate | None = attrs.field(default=None, repr=False)
    client_key: Any = attrs.field(default=None, repr=False)
    token: str = attrs.field(default="", repr=False)
    token_file: TokenFile | None = attrs.field(default=None, eq=False)
    tls_server_name: str = ""

    def tls_options(self, alpn: tuple[bytes, ...] = ()):
        """TLS to the API server: verified against its CA, with our client
        certificate if any; ``alpn`` offers protocols (h2 for the multiplexed pool)."""
        return client_tls_options(
            self.tls_server_name or self.host,
            trusted_cas=self.ca_certificates,
            certificate=self.client_certificate,
            private_key=self.client_key,
            alpn=alpn,
        )

    def bearer_token(self) -> str:
        """The token to send: the static one, or ``token_file``'s as last
        read (see ``refresh_token_files``)."""
        if self.token_file is not None:
            return self.token_file.token
        return self.token


@implementer(IPolicyForHTTPS)
@attrs.frozen
class ClusterTLSPolicy:
    """twisted.web.client.Agent's TLS to one API server (``ClusterCredentials.tls_options``)."""

    credentials: ClusterCredentials

    def creatorForNetloc(self, hostname, port):
        return self.credentials.tls_options()


def refresh_token_files(reactor, credentials) -> Deferred:
    """Re-read every token file among ``credentials`` off the reactor
    thread; called every TOKEN_REREAD_INTERVAL by the kube service."""
    return gatherResults([c.token_file.refresh(reactor) for c in credentials if c.token_file is not None])


def _read(path: str, field: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CredentialsError(f"{field}: cannot read {path}: {e.strerror}") from None


def _file_or_data(entry: Mapping[str, Any], key: str, where: str, base_dir: str) -> bytes | None:
    """``key`` (a path, relative to the kubeconfig) or ``key-data`` (base64)."""
    data_key = f"{key}-data"
    if entry.get(data_key):
        try:
            return base64.b64decode(str(entry[data_key]), validate=True)
        except ValueError:
            raise CredentialsError(f"{where}.{data_key}: not valid base64") from None
    if entry.get(key):
        return _read(os.path.join(base_dir, os.path.expanduser(str(entry[key]))), f"{where}.{key}")
    return None


def _certificates(data: bytes, field: str) -> tuple[x509.Certificate, ...]:
    try:
        certificates = tuple(load_certificates_pem(data))
    except ValueError:
        certificates = ()
    if not certificates:
        raise CredentialsError(f"{field}: no PEM certificate found")
    return certificates


def _private_key(data: bytes, field: str):
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CredentialsError(f"{field}: not an unencrypted PEM private key") from None


def _server(url: Any, field: str) -> tuple[str, int]:
    if not isinstance(url, str) or not url:
        raise CredentialsError(f"{field}: missing API server URL")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise CredentialsError(f"{field}: {url!r} must be an https:// URL")
    if parts.path.strip("/"):
        raise CredentialsError(f"{field}: {url!r}: API servers under a path prefix are not supported")
    try:
        return parts.hostname, parts.port or 443
    except ValueError:
        raise CredentialsError(f"{field}: {url!r} has an invalid port") from None


def _named(doc: Mapping[str, Any], section: str, entry_key: str) -> dict[str, Mapping[str, Any]]:
    items = doc.get(section) or []
    if not isinstance(items, list):
        raise CredentialsError(f"{section}: must be a list")
    named = {}
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise CredentialsError(f"{section}[{i}]: needs a name")
        body = item.get(entry_key) or {}
        if not isinstance(body, Mapping):
            raise CredentialsError(f"{section}[{i}].{entry_key}: must be a mapping")
        named[item["name"]] = body
    return named


def load_kubeconfig(path: str) -> list[ClusterCredentials]:
    """One ClusterCredentials per context, named after the context."""
    try:
        doc = yaml.safe_load(_read(path, "kubeconfig_file"))
    except yaml.YAMLError as e:
        raise CredentialsError(f"kubeconfig {path}: invalid YAML: {e}") from None
    if not isinstance(doc, Mapping):
        raise CredentialsError(f"kubeconfig {path}: not a mapping")
    base_dir = os.path.dirname(os.path.abspath(path))
    clusters = _named(doc, "clusters", "cluster")
    users = _named(doc, "users", "user")
    contexts = _named(doc, "contexts", "context")
    if not contexts:
        raise CredentialsError(f"kubeconfig {path}: contexts: no context defined")
    return [
        _context_credentials(name, context, clusters, users, base_dir)
        for name, context in contexts.items()
    ]


def _context_credentials(name, context, clusters, users, base_dir) -> ClusterCredentials:
    where = f"contexts[{name}]"
    cluster_name, user_name = context.get("cluster"), context.get("user")
    if cluster_name not in clusters:
        raise CredentialsError(f"{where}.context.cluster: no cluster named {cluster_name!r}")
    if user_name not in users:
        raise CredentialsError(f"{where}.context.user: no user named {user_name!r}")
    cluster, user = clusters[cluster_name], users[user_name]
    cwhere, uwhere = f"clusters[{cluster_name}].cluster", f"users[{user_name}].user"
    if cluster.get("insecure-skip-tls-verify"):
        raise CredentialsError(f"{cwhere}.insecure-skip-tls-verify: refusing to skip API server verification")
    host, port = _server(cluster.get("server"), f"{cwhere}.server")
    ca = _file_or_data(cluster, "certificate-authority", cwhere, base_dir)
    if ca is None:
        raise CredentialsError(f"{cwhere}.certificate-authority(-data): required to verify the API server")
    cert_pem = _file_or_data(user, "client-certificate", uwhere, base_dir)
    key_pem = _file_or_data(user, "client-key", uwhere, base_dir)
    if (cert_pem is None) != (key_pem is None):
        raise CredentialsError(f"{uwhere}: client-certificate(-data) and client-key(-data) go together")
    token, token_path = str(user.get("token") or ""), str(user.get("tokenFile") or "")
    token_file = None
    if token_path:
        token_file = TokenFile(os.path.join(base_dir, os.path.expanduser(token_path)), f"{uwhere}.tokenFile")
    if cert_pem is None and not token and token_file is None:
        raise CredentialsError(f"{uwhere}: needs client-certificate/client-key or token/tokenFile")
    for unsupported in ("exec", "auth-provider", "username", "password"):
        if user.get(unsupported):
            raise CredentialsError(f"{uwhere}.{unsupported}: not supported, use a client certificate or a token")
    return ClusterCredentials(
        name=name,
        host=host,
        port=port,
        ca_certificates=_certificates(ca, f"{cwhere}.certificate-authority"),
        client_certificate=None if cert_pem is None else _certificates(cert_pem, f"{uwhere}.client-certificate")[0],
        client_key=None if key_pem is None else _private_key(key_pem, f"{uwhere}.client-key"),
        token=token,
        token_file=token_file,
        tls_server_name=str(cluster.get("tls-server-name") or ""),
    )


def load_in_cluster(
    cluster_name: str, environ: Mapping[str, str] = os.environ, account_dir: str | None = None
) -> ClusterCredentials:
    """The pod's service account, as client-go's rest.InClusterConfig finds it:
    the API server at KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT, the
    token and CA bundle in ``account_dir`` (default SERVICE_ACCOUNT_DIR, or
    the directory named by TELEPORT_PY_SERVICE_ACCOUNT_DIR)."""
    if account_dir is None:
        account_dir = environ.get(SERVICE_ACCOUNT_DIR_VARIABLE) or SERVICE_ACCOUNT_DIR
    host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise CredentialsError(
            "in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set; "
            "not running in a pod? set kubernetes_service.kubeconfig_file instead"
        )
    if not port.isdigit():
        raise CredentialsError(f"in-cluster: KUBERNETES_SERVICE_PORT {port!r} is not a port")
    token_file = TokenFile(os.path.join(account_dir, "token"), "in-cluster service account token")
    ca_file = os.path.join(account_dir, "ca.crt")
    return ClusterCredentials(
        name=cluster_name,
        host=host,
        port=int(port),
        ca_certificates=_certificates(_read(ca_file, "in-cluster ca.crt"), ca_file),
        token_file=token_file,
    )
