"""First start of an agent: redeem the join token for a host identity.

The identity is saved under ``<data_dir>/kube`` and reused on every restart,
so the (short-lived, single-purpose) token is needed only once.

On first contact nothing about the proxy is trusted yet, so the token is not
sent until it is: the agent fetches the cluster's CA certificates (public
data) and believes the host CA only if it matches a configured
``teleport.ca_pin`` or, with no pin, if the connection verified against the
platform trust store (``teleport_py.pinning``; never trust on first use),
and then sends the token over a connection verified against that CA under
the name only proxies carry. From then on every connection
verifies the cluster against that CA.
"""
from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timezone

import treq
from cryptography.hazmat.primitives import serialization
from treq.client import HTTPClient
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.client import Agent

from teleport_py.auth.client import ClusterTLSPolicy
from teleport_py.config import Address
from teleport_py.identityfile import IdentityFile
from teleport_py.lifecycle import StartError
from teleport_py.pki import (
    PROXY_SERVER_NAMES,
    HostIdentity,
    IdentityError,
    generate_private_key,
    identity_from_certificate,
    load_certificate_pem,
    load_certificates_pem,
)
from teleport_py.pinning import trusted_host_cas
from teleport_py.quiet import QuietHTTPConnectionPool

log = Logger()


class JoinError(StartError):
    """Joining failed; the message says why (never contains the token)."""


def identity_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "kube")


#: The proxy presents its cluster certificate on the web API under this name.
PROXY_CLUSTER_NAME = PROXY_SERVER_NAMES[1]


def usable_identity(data_dir: str, now: float) -> IdentityFile | None:
    """The saved identity, unless there is none or it has expired."""
    directory = identity_dir(data_dir)
    if not IdentityFile.exists(directory):
        return None
    identity = IdentityFile.load(directory)
    if identity.expires.timestamp() <= now:
        log.warn("saved kube identity expired at {expires}; joining again", expires=identity.expires)
        return None
    return identity


def _pem_list(value, what: str) -> tuple:
    try:
        return tuple(c for pem in value for c in load_certificates_pem(pem.encode()))
    except (TypeError, ValueError, AttributeError):
        raise JoinError(f"the proxy sent malformed {what} certificates") from None


async def _json(response) -> dict:
    answer = await treq.json_content(response)
    if not isinstance(answer, dict):
        raise JoinError("the proxy answered with something other than a JSON object")
    return answer


async def join(reactor, proxy: Address, token: str, nodename: str, ca_pins=(), http: HTTPClient | None = None,
               verified_http: HTTPClient | None = None) -> IdentityFile:
    """Trust the cluster's host CA first, then POST /webapi/join to a proxy that proved it holds a certificate
    from that CA; check what comes back."""
    if not token:
        raise JoinError("no join token: pass --token or set teleport.join_params.token_name")
    host_cas = await trusted_host_cas(reactor, f"https://{proxy}/webapi/cas", ca_pins, http)
    verified_http = verified_http or HTTPClient(
        Agent(reactor, contextFactory=ClusterTLSPolicy(host_cas, server_name=PROXY_CLUSTER_NAME),
              pool=QuietHTTPConnectionPool(reactor, persistent=False))
    )
    key = generate_private_key()
    public_key = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    body = {"token": token, "role": "kube", "public_key": public_key, "host_id": str(uuid.uuid4()),
            "nodename": nodename or socket.gethostname()}
    try:
        response = await verified_http.post(f"https://{proxy}/webapi/join", json=body)
        answer = await _json(response)
    except JoinError:
        raise
    except Exception as e:
        raise JoinError(f"cannot join through the proxy at {proxy}: {e}") from None
    if response.code != 200:
        error = answer.get("error")
        message = error.get("message") if isinstance(error, dict) else answer.get("message")
        raise JoinError(f"the proxy refused to join us (HTTP {response.code}): {message or 'no reason given'} "
                        "(check teleport.join_params.token_name or --token: tctl tokens add --type=kube)")
    try:
        certificate = load_certificate_pem(answer["cert"].encode())
        user_cas = _pem_list(answer["cas"]["user"], "user CA")
    except (KeyError, TypeError, ValueError, AttributeError):
        raise JoinError("the proxy's join answer is malformed") from None
    if not user_cas:
        raise JoinError("the proxy's join answer has no user CA certificate")
    now = datetime.fromtimestamp(reactor.seconds(), timezone.utc)
    for ca in host_cas:
        try:
            identity = identity_from_certificate(certificate, user_ca=None, host_ca=ca, now=now)
        except IdentityError:
            continue
        if isinstance(identity, HostIdentity) and identity.system_role == "kube":
            return IdentityFile(certificate, key, user_cas, host_cas)
    raise JoinError("the certificate we were issued is not a kube host certificate of the cluster's host CA")


def _read_token_file(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not an ASCII token"
        raise JoinError(f"teleport.join_params.token_name: cannot read the token file {path}: {reason}") from None


async def obtain_identity(reactor, config, token: str = "", http: HTTPClient | None = None) -> IdentityFile:
    """Reuse the saved identity; join (and save) only when there is none."""
    identity = usable_identity(config.data_dir, reactor.seconds())
    if identity is not None:
        return identity
    if config.proxy_server is None:
        raise JoinError("teleport.proxy_server is not set: the Kubernetes service joins through the proxy")
    token = token or config.join_token
    if token.startswith("/"):  # a path, as Teleport allows: the Helm chart mounts its Secret there
        token = await deferToThreadPool(reactor, reactor.getThreadPool(), _read_token_file, token)
    identity = await join(reactor, config.proxy_server, token, config.nodename, config.ca_pins, http)
    identity.save(identity_dir(config.data_dir))
    log.info("joined the cluster; host identity saved in {dir}", dir=identity_dir(config.data_dir))
    return identity
