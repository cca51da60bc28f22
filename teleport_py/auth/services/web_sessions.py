"""Browser sessions of the web UI, kept in the backend so that a cookie set
by one proxy works on every other (Teleport keeps web sessions in its
backend too): ``/web_sessions/<sha256 of the session id>``, expiring with
the user certificate Auth issued at sign-in.

Only a hash of the session id is stored, and only the hash ever reaches
Auth: whoever reads the backend cannot present a session. The user is the
certificate's, verified here against the user CA, never the proxy's word.
"""
from __future__ import annotations

import json
import re
from datetime import timezone
from typing import Any

import attr

from teleport_py.auth.authorizer import Authorizer
from teleport_py.auth.errors import AlreadyExists, BadParameter, NotFound
from teleport_py.auth.services.common import Identity
from teleport_py.pki import IdentityError, UserIdentity, identity_from_certificate, load_certificate_pem

PREFIX = "/web_sessions/"
_KEY = re.compile(r"[0-9a-f]{64}")
#: A user certificate's PEM is a few KiB; nothing bigger is stored.
MAX_CERTIFICATE = 16 * 1024


def _key(id_hash: Any) -> str:
    if not isinstance(id_hash, str) or not _KEY.fullmatch(id_hash):
        raise BadParameter("id_hash: must be the SHA-256 of the session id, in hex")
    return PREFIX + id_hash


@attr.s(frozen=True, auto_attribs=True)
class WebSessionStore:
    _clock: Any
    _backend: Any
    _authorizer: Authorizer
    _authorities: Any

    async def create(self, caller: Identity, id_hash: Any, certificate_pem: Any) -> dict[str, Any]:
        """A session for the certificate's user, ending with the certificate."""
        self._authorizer.require_system_role(caller, "proxy")
        key = _key(id_hash)
        if not isinstance(certificate_pem, str) or len(certificate_pem) > MAX_CERTIFICATE:
            raise BadParameter("cert: must be a user certificate (PEM)")
        try:
            cert = load_certificate_pem(certificate_pem.encode("ascii"))
            user = identity_from_certificate(cert, user_ca=self._authorities.user_ca.certificate, host_ca=None)
        except (ValueError, IdentityError):
            raise BadParameter("cert: not a certificate of this cluster's user CA") from None
        if not isinstance(user, UserIdentity):
            raise BadParameter("cert: not a user certificate")
        expires = cert.not_valid_after_utc.replace(tzinfo=timezone.utc).timestamp()
        if expires <= self._clock.seconds():
            raise BadParameter("cert: expired")
        record = {"user": user.username, "cert": certificate_pem, "expires": expires}
        if await self._backend.create(key, json.dumps(record).encode("utf-8"), expires=expires) is None:
            raise AlreadyExists("a web session with this id exists")
        return record

    async def get(self, caller: Identity, id_hash: Any) -> dict[str, Any]:
        self._authorizer.require_system_role(caller, "proxy")
        item = await self._backend.get(_key(id_hash))
        if item is None:
            raise NotFound("no such web session")
        record = json.loads(item.value)
        if record["expires"] <= self._clock.seconds():
            raise NotFound("no such web session")
        return record

    async def delete(self, caller: Identity, id_hash: Any) -> None:
        self._authorizer.require_system_role(caller, "proxy")
        await self._backend.delete(_key(id_hash))
