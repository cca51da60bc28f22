"""Join tokens and joining: ``tctl tokens add`` makes a token
(``/tokens/<token>``, expiring with it), and a new agent or proxy redeems it
for a host certificate of the role the token allows."""
from __future__ import annotations

import json
import secrets
from datetime import timedelta
from typing import Any

import attr
from twisted.logger import Logger

from teleport_py import events
from teleport_py.auth.audit import AuditLog
from teleport_py.auth.authorizer import Authorizer
from teleport_py.auth.errors import AccessDenied, BadParameter
from teleport_py.auth.services.authorities import RESERVED_DNS_SUFFIX, CertificateAuthorities
from teleport_py.auth.services.common import Identity, load_public_key, to_json, utc_now
from teleport_py.pki import PROXY_SERVER_NAMES, certificate_pem
from teleport_py.resources import Token, resource_from_dict, resource_to_dict

PREFIX = "/tokens/"
DEFAULT_JOIN_TOKEN_TTL = 30 * 60.0
#: ``tctl tokens add --type=`` and the join call's ``role``, to the token's role names.
JOIN_ROLES = {"kube": "Kube", "proxy": "Proxy"}


def token_hint(token: str) -> str:
    """Tokens are secrets: events and logs show only a prefix."""
    return token[:4] + "..." if len(token) > 8 else "***"


@attr.s(frozen=True, auto_attribs=True)
class JoinTokens:
    log = Logger()

    _clock: Any
    _backend: Any
    _authorizer: Authorizer
    _authorities: CertificateAuthorities
    _audit: AuditLog

    async def create(self, caller: Identity, roles: list[str], ttl: float | None) -> dict[str, Any]:
        await self._authorizer.check(caller, "token", "create")
        ttl = DEFAULT_JOIN_TOKEN_TTL if ttl is None else ttl
        if ttl <= 0:
            raise BadParameter("ttl must be positive")
        wanted = []
        for role in roles:
            canonical = JOIN_ROLES.get(role.lower())
            if canonical is None:
                raise BadParameter(f"unsupported token type {role!r} (supported: {', '.join(JOIN_ROLES)})")
            wanted.append(canonical)
        name = secrets.token_hex(16)
        expires = utc_now(self._clock) + timedelta(seconds=ttl)
        token = Token(name=name, roles=tuple(wanted), expires=expires.replace(microsecond=0))
        await self._backend.create(PREFIX + name, to_json(resource_to_dict(token)), expires=token.expires.timestamp())
        await self._audit.emit(
            events.JOIN_TOKEN_CREATE, user=self._authorizer.actor(caller), name=token_hint(name), roles=wanted,
            expires=token.expires.isoformat(),
        )
        return resource_to_dict(token)

    async def join(
        self, token: str, system_role: str, public_key_pem: str, host_id: str, nodename: str,
        dns_names: list[str] = (), client_addr: str = "",
    ) -> dict[str, Any]:
        """Redeem a join token for a host certificate. Any failure is audited and
        answered with the same message, so tokens cannot be probed."""
        failure = AccessDenied("the join token is invalid, expired or not valid for this service")
        expected = JOIN_ROLES.get(system_role)
        item = await self._backend.get(PREFIX + token) if token and "/" not in token else None
        reason = None
        if expected is None:
            reason = f"unsupported system role {system_role!r}"
        elif item is None:
            reason = "unknown or expired token"
        else:
            tok = resource_from_dict(json.loads(item.value))
            if tok.expires <= utc_now(self._clock):
                reason = "expired token"
            elif expected not in tok.roles:
                reason = f"token does not allow role {expected}"
        if not host_id or "/" in host_id or len(host_id) > 128:
            reason = reason or "invalid host id"
        if reason:
            await self._audit.emit(
                events.INSTANCE_JOIN, success=False, role=system_role, host_id=host_id, nodename=nodename,
                token=token_hint(token or ""), addr_remote=client_addr, error=reason,
            )
            self.log.warn("refused join role={role} host={host}: {reason}", role=system_role, host=host_id, reason=reason)
            raise failure
        # Names under teleport.cluster.local identify cluster services (the
        # auth server above all): a joining host must not be able to claim them.
        dns_names = [n for n in dns_names if not n.lower().rstrip(".").endswith(RESERVED_DNS_SUFFIX)]
        if system_role == "proxy":
            dns_names.extend(PROXY_SERVER_NAMES)
        authorities = self._authorities
        cert = authorities.issue_host_identity(load_public_key(public_key_pem), host_id, nodename, system_role, dns_names)
        await self._audit.emit(
            events.INSTANCE_JOIN, role=system_role, host_id=host_id, nodename=nodename,
            token=token_hint(token), addr_remote=client_addr,
        )
        return {"cert": certificate_pem(cert).decode(), "cas": authorities.cas_pem(), "cluster_name": authorities.cluster_name}
