"""Trusting a cluster on first contact: the one place a joining service
decides which host CA to believe.

A service that joins (a proxy through Auth's API, a Kubernetes service
through the proxy's web API) has no cluster CA yet to verify its first
connection with, so it fetches the cluster's public CA certificates in one
of two ways, as Teleport does:

- with ``teleport.ca_pin``: without verifying the connection, believing a
  host CA only if its pin (``pki.ca_pin``: sha256 of the
  SubjectPublicKeyInfo) is one of the configured values;
- without a pin: over a connection whose certificate and hostname verify
  against the platform's trust store (OpenSSL's default paths, so
  ``SSL_CERT_FILE``/``SSL_CERT_DIR`` count), i.e. a proxy with a publicly
  trusted ``https_keypairs`` certificate. If that fails the join is refused
  with a line naming ``teleport.ca_pin``.

Never trust on first use: the join token would then go to whoever answered
first. Only after this is the token sent, over a connection verified
against the CA so believed.
"""
from __future__ import annotations

import json
from typing import Sequence

from cryptography import x509
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.web.client import Agent
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from teleport_py.bounded_body import BodyTooLarge, read_bounded
from teleport_py.lifecycle import StartError
from teleport_py.pki import ca_pin, load_certificates_pem
from teleport_py.quiet import QuietHTTPConnectionPool

#: The CA answer is a few PEM certificates; anything larger is not one.
MAX_CA_ANSWER = 1 << 20
FETCH_TIMEOUT = 30.0


class PinError(StartError):
    """The cluster cannot be trusted (a pin mismatch, no pin and an untrusted certificate, no CA answer)."""


_MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

#: What to do when there is no pin and the platform does not trust the answer.
NO_PIN_FIX = ("set teleport.ca_pin (caPin in the Helm chart) to the CA pin 'tctl status' prints, "
              "or give the proxy a publicly trusted certificate (proxy_service.https_keypairs)")


@implementer(IPolicyForHTTPS)
class _Unverified:
    """Only for fetching public CA certificates: the pin check decides trust."""

    def creatorForNetloc(self, hostname, port):
        return ssl.CertificateOptions(verify=False, raiseMinimumTo=_MINIMUM_VERSION)


@implementer(IPolicyForHTTPS)
class _PlatformTrust:
    """No pin: the certificate and hostname must verify against the platform's
    trust store (read afresh per connection, so ``SSL_CERT_FILE`` counts)."""

    def creatorForNetloc(self, hostname, port):
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=ssl.platformTrust(),
                                       extraCertificateOptions={"raiseMinimumTo": _MINIMUM_VERSION})


def _is_tls_failure(error: Exception) -> bool:
    """The connection failed because the certificate did not verify (not
    because nothing answered)."""
    reasons = getattr(error, "reasons", None) or [error]
    for reason in reasons:
        value = getattr(reason, "value", reason)
        if isinstance(value, (SSL.Error, VerificationError, CertificateError)):
            return True
    return False


def _short(error: Exception) -> str:
    """One readable reason from treq's wrapped failures."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        value = getattr(reasons[0], "value", reasons[0])
        if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list) and value.args[0]:
            return str(value.args[0][0][-1])
        if isinstance(value, (VerificationError, CertificateError)):
            return "the certificate is for another host name"
        return str(value) or type(value).__name__
    return str(error) or type(error).__name__


async def trusted_host_cas(reactor, url: str, pins: Sequence[str], http: HTTPClient | None = None
                          ) -> tuple[x509.Certificate, ...]:
    """The host CAs at ``url`` (``{"host": [PEM, ...], ...}``) whose pin is one
    of ``pins``, or with no ``pins`` all of them if the platform trusts the
    connection; raises PinError otherwise, before anything secret is sent."""
    http = http or HTTPClient(Agent(reactor, contextFactory=_Unverified() if pins else _PlatformTrust(),
                                    pool=QuietHTTPConnectionPool(reactor, persistent=False)))
    try:
        response = await http.get(url, timeout=FETCH_TIMEOUT)
        try:
            body = await read_bounded(response, MAX_CA_ANSWER)
        except BodyTooLarge:
            raise PinError(f"the CA answer is larger than {MAX_CA_ANSWER} bytes") from None
    except PinError:
        raise
    except Exception as e:
        if not pins and _is_tls_failure(e):
            raise PinError(f"no teleport.ca_pin, and {url} did not present a certificate this system trusts "
                           f"for that name ({_short(e)}): refusing to join; {NO_PIN_FIX}") from None
        raise PinError(f"cannot fetch the cluster's CA certificates from {url}: {_short(e)}") from None
    if response.code != 200:
        raise PinError(f"{url} did not give the cluster's CA certificates (HTTP {response.code})")
    host_cas = _host_cas(body, url)
    if not pins:
        return host_cas  # authenticated by the platform-verified connection
    wanted = {pin.lower() for pin in pins}
    pinned = tuple(ca for ca in host_cas if ca_pin(ca) in wanted)
    if not pinned:
        raise PinError(
            f"the cluster's host CA at {url} ({ca_pin(host_cas[0])}) matches no teleport.ca_pin; "
            "refusing to join (compare with 'tctl status' on the auth host)"
        )
    return pinned


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
