"""Host certificate renewal: a proxy's and an agent's host certificate is
replaced before it expires, without a restart and without touching open
connections (Teleport renews host certificates in the background too).

At about two thirds of the certificate's life (less a random share of up to a
tenth of it, so services joined together do not all renew in one instant)
the service makes a new key, asks Auth for a certificate of the same
identity (``POST /v1/certs/host``, authenticated by the current
certificate), checks that it is one (same host identity, signed by the host
CA we trust, for our new key), writes it to disk (``IdentityFile.save``:
atomic, the key 0600) and hands it to ``on_renewed``, which makes new TLS
connections present it. A failed attempt is retried after a capped
exponential backoff (``backoff_delay``) until one succeeds.
"""
from __future__ import annotations

import random as _random
from datetime import datetime, timezone
from typing import Awaitable, Callable

from cryptography.hazmat.primitives import serialization
from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.logger import Logger

from teleport_py.backoff import backoff_delay
from teleport_py.identityfile import IdentityFile
from teleport_py.pki.ca import CLOCK_SKEW
from teleport_py.pki import IdentityError, generate_private_key, identity_from_certificate, load_certificate_pem

log = Logger()

#: Renew at this share of a certificate's life ...
RENEW_AT = 2 / 3
#: ... less up to this share of it, at random.
RENEW_JITTER = 0.1
#: Retries after a failed renewal wait 1, 2, 4 ... seconds, at most this long.
RETRY_CAP = 60.0


class RenewalError(Exception):
    """Auth answered with something that is not our renewed certificate."""


def renewal_time(identity: IdentityFile, random: Callable[[], float] = _random.random) -> float:
    """When (epoch seconds) to renew this identity's certificate: its life
    counts from when it was issued (NotBefore is backdated by CLOCK_SKEW)."""
    start = (identity.certificate.not_valid_before_utc + CLOCK_SKEW).timestamp()
    lifetime = identity.expires.timestamp() - start
    return start + lifetime * (RENEW_AT - RENEW_JITTER * random())


class HostCertRenewal(service.Service):
    """Keeps ``identity`` renewed while running.

    ``request(public_key_pem)`` asks Auth for a certificate (an answer with
    ``cert`` in PEM); ``save(identity)`` stores the new identity (it may
    return a Deferred, e.g. to write off the reactor thread);
    ``on_renewed(identity)`` switches new connections over to it."""

    name = "host certificate renewal"

    def __init__(self, reactor, identity: IdentityFile, *,
                 request: Callable[[str], Awaitable[dict]],
                 save: Callable[[IdentityFile], object] = lambda identity: None,
                 on_renewed: Callable[[IdentityFile], object] = lambda identity: None,
                 random: Callable[[], float] = _random.random):
        self.reactor = reactor
        self.identity = identity
        self._host = identity_from_certificate(identity.certificate, user_ca=None, host_ca=identity.host_cas[0])
        self._request = request
        self._save = save
        self._on_renewed = on_renewed
        self._random = random
        self._attempt = 0
        self._call = None
        self._renewing: Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self._schedule(max(0.0, renewal_time(self.identity, self._random) - self.reactor.seconds()))

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._renewing is not None:
            self._renewing.cancel()

    def _schedule(self, delay: float) -> None:
        self._call = self.reactor.callLater(delay, self._start_renewal)

    def _start_renewal(self) -> None:
        self._call = None
        renewing = self._renewing = Deferred.fromCoroutine(self._renew())
        renewing.addCallbacks(self._renewed, self._failed)
        renewing.addErrback(lambda failure: log.failure("using the renewed host certificate failed", failure))

    async def _renew(self) -> IdentityFile:
        key = generate_private_key()
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
        answer = await self._request(public_pem)
        try:
            certificate = load_certificate_pem(answer["cert"].encode("ascii"))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise RenewalError("Auth's answer holds no certificate") from None
        now = datetime.fromtimestamp(self.reactor.seconds(), timezone.utc)
        try:
            host = identity_from_certificate(
                certificate, user_ca=None, host_ca=self.identity.host_cas[0], now=now)
        except IdentityError as e:
            raise RenewalError(f"the renewed certificate does not verify: {e}") from None
        if host != self._host:
            raise RenewalError(f"the renewed certificate is for {host}, not {self._host}")
        if certificate.public_key() != key.public_key():
            raise RenewalError("the renewed certificate is not for the key we sent")
        # The CAs stay those we trust already (pinned at join); only our own certificate changes.
        renewed = IdentityFile(certificate, key, self.identity.user_cas, self.identity.host_cas)
        await maybeDeferred(self._save, renewed)
        return renewed

    def _renewed(self, renewed: IdentityFile) -> None:
        self._renewing = None
        self._attempt = 0
        self.identity = renewed
        log.info("host certificate of {role} {host_id} renewed, valid until {expires}",
                 role=self._host.system_role, host_id=self._host.host_id, expires=renewed.expires.isoformat())
        self._on_renewed(renewed)
        if self.running:
            self._schedule(max(0.0, renewal_time(renewed, self._random) - self.reactor.seconds()))

    def _failed(self, failure) -> None:
        self._renewing = None
        if failure.check(CancelledError) or not self.running:
            return
        delay = backoff_delay(self._attempt, self._random, cap=RETRY_CAP)
        self._attempt += 1
        log.warn("cannot renew the host certificate (valid until {expires}): {error}; retrying in {delay:.0f}s",
                 expires=self.identity.expires.isoformat(), error=failure.getErrorMessage(), delay=delay)
        self._schedule(delay)
