"""TLS connection creators that trust our CAs and nothing else.

Built on Twisted's ``CertificateOptions``/``optionsForClientTLS`` so OpenSSL
does the chain, expiry and purpose checks (a server checks client
certificates for the ``sslclient`` purpose, a client checks the server for
``sslserver``, which is what stops a clientAuth-only user certificate from
serving TLS). Clients check the host name in their own verify callback:
Twisted's lets a certificate without any subjectAltName through (it logs the
error and keeps OpenSSL's verdict), and that must fail closed.

Every context runs with ``SSL_MODE_RELEASE_BUFFERS``: OpenSSL otherwise
keeps a read and a write buffer of about 17 KiB each for the life of a
connection, and most of our connections (watches, idle keep-alive and tunnel
connections) sit idle most of the time. And without
``SSL_MODE_ENABLE_PARTIAL_WRITE``, so that one ``SSL_write`` seals a whole
write (``tls_transport``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL, crypto
from OpenSSL.SSL import VERIFY_FAIL_IF_NO_PEER_CERT, VERIFY_PEER
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet import ssl
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    ISSLTransport,
)
from twisted.logger import Logger
from zope.interface import implementer

from teleport_py.pki.keys import certificate_pem, private_key_pem
from teleport_py.tls_transport import SSL_MODE_ENABLE_PARTIAL_WRITE

log = Logger()

_MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def _bulk_writes(context: SSL.Context) -> None:
    """Release idle buffers, and let one ``SSL_write`` seal every record of
    a write (``tls_transport.FewerCallsTLS`` hands OpenSSL up to 256 KiB at
    once; pyOpenSSL's partial-write mode would return after one record)."""
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.clear_mode(SSL_MODE_ENABLE_PARTIAL_WRITE)


def _twisted_certificate(cert: x509.Certificate) -> ssl.Certificate:
    return ssl.Certificate.loadPEM(certificate_pem(cert))


def _twisted_private_certificate(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> ssl.PrivateCertificate:
    return ssl.PrivateCertificate.loadPEM(certificate_pem(cert) + private_key_pem(key))


def openssl_pair(certificate: x509.Certificate, private_key) -> tuple[crypto.X509, crypto.PKey]:
    """A certificate and its key as ``present`` takes them."""
    return crypto.X509.from_cryptography(certificate), crypto.PKey.from_cryptography_key(private_key)


def present(connection: SSL.Connection, pair: tuple[crypto.X509, crypto.PKey] | None) -> None:
    """Make this (not yet handshaken) connection present ``pair`` rather
    than its context's certificate: how a renewed certificate reaches new
    connections, since a context that made connections cannot be changed.
    ``set_context`` resets a connection to the new context's certificate,
    so call this again after it."""
    if pair is not None:
        connection.use_certificate(pair[0])
        connection.use_privatekey(pair[1])


@implementer(IOpenSSLServerConnectionCreator)
class RenewableServerCreator:
    """Server connections from ``options``' context, presenting the
    certificate given to ``use`` last (a renewed host certificate); the
    connections already made keep theirs."""

    def __init__(self, options) -> None:
        self.context = options.getContext()
        self._pair = None

    def use(self, certificate: x509.Certificate, private_key) -> None:
        self._pair = openssl_pair(certificate, private_key)

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        present(connection, self._pair)
        return connection


def server_tls_options(
    certificate: x509.Certificate,
    private_key: ec.EllipticCurvePrivateKey,
    *,
    trusted_cas: Sequence[x509.Certificate] = (),
    require_client_certificate: bool,
    alpn: Sequence[bytes] | None = None,
) -> IOpenSSLServerConnectionCreator:
    """Server side: verify any client certificate against ``trusted_cas`` only.

    With ``require_client_certificate=False`` a client may still come without
    a certificate (login and join endpoints), but one presenting a
    certificate that does not verify is refused during the handshake.
    """
    if require_client_certificate and not trusted_cas:
        raise ValueError("requiring client certificates needs at least one trusted CA")
    own = _twisted_private_certificate(certificate, private_key)
    options = ssl.CertificateOptions(
        privateKey=own.privateKey.original,
        certificate=own.original,
        verify=bool(trusted_cas),
        caCerts=[_twisted_certificate(ca).original for ca in trusted_cas] or None,
        requireCertificate=require_client_certificate,
        raiseMinimumTo=_MINIMUM_VERSION,
        acceptableProtocols=alpn,
    )
    # The options build their one context here and reuse it for every connection.
    _bulk_writes(options.getContext())
    return options


def client_tls_options(
    hostname: str,
    *,
    trusted_cas: Sequence[x509.Certificate],
    certificate: x509.Certificate | None = None,
    private_key: ec.EllipticCurvePrivateKey | None = None,
    alpn: Sequence[bytes] | None = None,
    server_name: str | None = None,
) -> IOpenSSLClientConnectionCreator:
    """Client side: the server must chain to ``trusted_cas`` (never the system store) and match ``hostname``.

    ``server_name`` is the SNI to send when it differs from the name we
    verify, e.g. ``kube-teleport-proxy-alpn.<proxy>`` to reach the proxy's
    kube listener while verifying the proxy's own name.
    """
    if not trusted_cas:
        raise ValueError("a TLS client needs at least one trusted CA")
    if (certificate is None) != (private_key is None):
        raise ValueError("a client certificate needs its private key, and the reverse")
    own = {}
    if certificate is not None:
        client_certificate = _twisted_private_certificate(certificate, private_key)
        own = {"privateKey": client_certificate.privateKey.original, "certificate": client_certificate.original}
    context = ssl.CertificateOptions(
        trustRoot=ssl.trustRootFromCertificates([_twisted_certificate(ca) for ca in trusted_cas]),
        raiseMinimumTo=_MINIMUM_VERSION,
        **own,
    ).getContext()
    _bulk_writes(context)
    if server_name is None and not _is_ip_address(hostname):
        server_name = hostname  # SNI carries DNS names only (RFC 6066)
    return _HostnameChecking(context, hostname, None if server_name is None else server_name.encode("idna"),
                             tuple(alpn or ()))


def _is_ip_address(hostname: str) -> bool:
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


@implementer(IOpenSSLClientConnectionCreator)
@frozen
class _HostnameChecking:
    """Client connections from one shared context: the chain checked by
    OpenSSL against our CAs only, the host name by us, SNI and ALPN set."""

    context: SSL.Context
    hostname: str
    server_name: bytes | None
    alpn: tuple[bytes, ...] = ()

    def clientConnectionForTLS(self, tlsProtocol):
        connection = SSL.Connection(self.context, None)
        if self.server_name is not None:
            connection.set_tlsext_host_name(self.server_name)
        if self.alpn:
            connection.set_alpn_protos(list(self.alpn))
        connection.set_verify(VERIFY_PEER | VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        return connection

    def _verify(self, connection, certificate, error_number, depth, ok) -> bool:
        """OpenSSL's verdict on the chain, plus the host name for the leaf; never raises into OpenSSL."""
        if not ok or depth != 0:
            return bool(ok)
        try:
            if _is_ip_address(self.hostname):
                verify_certificate_ip_address(certificate.to_cryptography(), self.hostname)
            else:
                verify_certificate_hostname(certificate.to_cryptography(), self.hostname)
        except Exception as error:
            log.warn("server certificate refused for {hostname}: {error}", hostname=self.hostname, error=error)
            return False
        return True


def peer_certificate(transport) -> x509.Certificate | None:
    """The certificate the peer presented (and TLS verified), once the handshake is done."""
    if not ISSLTransport.providedBy(transport):
        return None
    peer = transport.getPeerCertificate()
    return None if peer is None else peer.to_cryptography()
