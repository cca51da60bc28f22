"""``tctl status``: the cluster's name, CA pin and fingerprints, and how many
users, roles and live kube clusters it has."""
from __future__ import annotations

from typing import Any

import attr

from teleport_py.auth.authorizer import Authorizer
from teleport_py.auth.services.authorities import CertificateAuthorities
from teleport_py.auth.services.common import Identity
from teleport_py.auth.services.kube_servers import KubeServers
from teleport_py.auth.services.roles import Roles
from teleport_py.auth.services.users import Users
from teleport_py.pki import HostIdentity


@attr.s(frozen=True, auto_attribs=True)
class ClusterStatus:
    _authorizer: Authorizer
    _authorities: CertificateAuthorities
    _users: Users
    _roles: Roles
    _kube_servers: KubeServers

    async def read(self, caller: Identity) -> dict[str, Any]:
        """For admins and users allowed to list roles; no service needs it (a
        kube agent, which may read roles, must not learn the cluster's size)."""
        if isinstance(caller, HostIdentity):
            self._authorizer.require_system_role(caller)
        await self._authorizer.check(caller, "role", "list")
        return {
            "cluster_name": self._authorities.cluster_name,
            "ca_pin": self._authorities.ca_pin(),
            "ca_fingerprints": self._authorities.fingerprints(),
            "users": await self._users.count(),
            "roles": await self._roles.count(),
            "kube_clusters": sorted(await self._kube_servers.clusters()),
        }
