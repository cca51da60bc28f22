"""First start of an agent: redeem the join token for a host identity.

The identity is saved under ``<data_dir>/kube`` and reused on every restart,
so the (short-lived, single-purpose) token is needed only once. On first
contact nothing about the proxy is trusted yet: TLS is not verified, and the
host CA that comes back is accepted only if it matches a configured
``teleport.ca_pin`` (without a pin it is trusted on first use, with a warning).
From then on every connection verifies the cluster against that CA.
"""
from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timezone

import treq
from cryptography.hazmat.primitives import serialization
from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.logger import Logger
from twisted.web.client import Agent
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from teleport_py.auth.server import ca_pin
from teleport_py.config import Address
from teleport_py.identityfile import IdentityFile
from teleport_py.pki import (
    HostIdentity,
    IdentityError,
    generate_private_key,
    identity_from_certificate,
    load_certificate_pem,
    load_certificates_pem,
)

log = Logger()


class JoinError(Exception):
    """Joining failed; the message says why (never contains the token)."""


def identity_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "kube")


@implementer(IPolicyForHTTPS)
class _Unverified:
    """First contact only: nothing to verify against yet (the CA pin is checked afterwards)."""

    def creatorForNetloc(self, hostname, port):
        return ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


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


async def join(reactor, proxy: Address, token: str, nodename: str, ca_pins=(), http: HTTPClient | None = None
               ) -> IdentityFile:
    """POST /webapi/join on the proxy and check what comes back."""
    if not token:
        raise JoinError("no join token: pass --token or set teleport.join_params.token_name")
    http = http or HTTPClient(Agent(reactor, contextFactory=_Unverified()))
    key = generate_private_key()
    public_key = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    body = {"token": token, "role": "kube", "public_key": public_key, "host_id": str(uuid.uuid4()),
            "nodename": nodename or socket.gethostname()}
    try:
        response = await http.post(f"https://{proxy}/webapi/join", json=body)
        answer = await treq.json_content(response)
    except Exception as e:
        raise JoinError(f"cannot reach the proxy at {proxy}: {e}") from None
    if response.code != 200:
        message = answer.get("message") or answer.get("error") if isinstance(answer, dict) else None
        raise JoinError(f"the proxy refused to join us (HTTP {response.code}): {message or 'no reason given'}")
    try:
        certificate = load_certificate_pem(answer["cert"].encode())
        host_cas = tuple(c for pem in answer["cas"]["host"] for c in load_certificates_pem(pem.encode()))
        user_cas = tuple(c for pem in answer["cas"]["user"] for c in load_certificates_pem(pem.encode()))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise JoinError("the proxy's join answer is malformed") from None
    if not host_cas or not user_cas:
        raise JoinError("the proxy's join answer has no CA certificates")
    pins = {ca_pin(ca) for ca in host_cas}
    if ca_pins and not pins & set(ca_pins):
        raise JoinError(f"the cluster's host CA {sorted(pins)[0]} matches no teleport.ca_pin; refusing to join")
    if not ca_pins:
        log.warn("joining without teleport.ca_pin: trusting host CA {pin} on first use", pin=sorted(pins)[0])
    now = datetime.fromtimestamp(reactor.seconds(), timezone.utc)
    for ca in host_cas:
        try:
            identity = identity_from_certificate(certificate, user_ca=None, host_ca=ca, now=now)
        except IdentityError:
            continue
        if isinstance(identity, HostIdentity) and identity.system_role == "kube":
            return IdentityFile(certificate, key, user_cas, host_cas)
    raise JoinError("the certificate we were issued is not a kube host certificate of that CA")


async def obtain_identity(reactor, config, token: str = "", http: HTTPClient | None = None) -> IdentityFile:
    """Reuse the saved identity; join (and save) only when there is none."""
    identity = usable_identity(config.data_dir, reactor.seconds())
    if identity is not None:
        return identity
    if config.proxy_server is None:
        raise JoinError("teleport.proxy_server is not set: the Kubernetes service joins through the proxy")
    identity = await join(reactor, config.proxy_server, token or config.join_token, config.nodename,
                          config.ca_pins, http)
    identity.save(identity_dir(config.data_dir))
    log.info("joined the cluster; host identity saved in {dir}", dir=identity_dir(config.data_dir))
    return identity
