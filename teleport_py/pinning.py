"""Trusting a cluster on first contact: the one place a joining service
decides which host CA to believe.

A service that joins (a proxy through Auth's API, a Kubernetes service
through the proxy's web API) has nothing yet to verify its first connection
with. It fetches the cluster's public CA certificates without verification
and believes a host CA only if its pin (``pki.ca_pin``: sha256 of the
SubjectPublicKeyInfo) is one of the configured ``teleport.ca_pin`` values.
Without a pin it refuses: no trust on first use, since the join token would
then go to whoever answered first. Only after this is the token sent, over
a connection verified against the pinned CA.
"""
from __future__ import annotations

import json
from typing import Sequence

import treq
from cryptography import x509
from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.web.client import Agent
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from teleport_py.lifecycle import StartError
from teleport_py.pki import ca_pin, load_certificates_pem
from teleport_py.quiet import QuietHTTPConnectionPool

#: The CA answer is a few PEM certificates; anything larger is not one.
MAX_CA_ANSWER = 1 << 20
FETCH_TIMEOUT = 30.0


class PinError(StartError):
    """The cluster cannot be trusted (no pin, a pin mismatch, no CA answer)."""


@implementer(IPolicyForHTTPS)
class _Unverified:
    """Only for fetching public CA certificates: the pin check decides trust."""

    def creatorForNetloc(self, hostname, port):
        return ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


async def pinned_host_cas(reactor, url: str, pins: Sequence[str], http: HTTPClient | None = None
                          ) -> tuple[x509.Certificate, ...]:
    """The host CAs at ``url`` (``{"host": [PEM, ...], ...}``) whose pin is one
    of ``pins``; raises PinError otherwise, before anything secret is sent."""
    if not pins:
        raise PinError("teleport.ca_pin is required to join the cluster: set it to the CA pin 'tctl status' prints")
    http = http or HTTPClient(Agent(reactor, contextFactory=_Unverified(),
                                    pool=QuietHTTPConnectionPool(reactor, persistent=False)))
    try:
        response = await http.get(url, timeout=FETCH_TIMEOUT)
        body = await _bounded_body(response)
    except PinError:
        raise
    except Exception as e:
        raise PinError(f"cannot fetch the cluster's CA certificates from {url}: {e}") from None
    if response.code != 200:
        raise PinError(f"{url} did not give the cluster's CA certificates (HTTP {response.code})")
    host_cas = _host_cas(body, url)
    wanted = {pin.lower() for pin in pins}
    pinned = tuple(ca for ca in host_cas if ca_pin(ca) in wanted)
    if not pinned:
        raise PinError(
            f"the cluster's host CA at {url} ({ca_pin(host_cas[0])}) matches no teleport.ca_pin; "
            "refusing to join (compare with 'tctl status' on the auth host)"
        )
    return pinned


async def _bounded_body(response) -> bytes:
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > MAX_CA_ANSWER:
            raise PinError(f"the CA answer is larger than {MAX_CA_ANSWER} bytes")
        chunks.append(data)

    await treq.collect(response, collect)
    return b"".join(chunks)


def _host_cas(body: bytes, url: str) -> tuple[x509.Certificate, ...]:
    try:
        answer = json.loads(body)
        pems = answer["host"]
        host_cas = tuple(ca for pem in pems for ca in load_certificates_pem(pem.encode("ascii")))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeError):
        raise PinError(f"{url} answered with malformed CA certificates") from None
    if not host_cas:
        raise PinError(f"{url} sent no host CA certificate")
    return host_cas
