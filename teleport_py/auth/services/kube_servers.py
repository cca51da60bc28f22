"""Kubernetes clusters as their agents heartbeat them: ``/kube_servers/<cluster>/<host id>``,
each expiring with its TTL, so a cluster no agent serves any more disappears.
Which of them a user may reach is decided here too (``tsh kube ls``, a
certificate routed to a cluster)."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import attr

from teleport_py.auth.authorizer import Authorizer
from teleport_py.auth.errors import AccessDenied, BadParameter, NotFound
from teleport_py.auth.services.common import Identity, to_json, validated
from teleport_py.auth.services.roles import Roles
from teleport_py.auth.services.users import Users
from teleport_py.pki import HostIdentity
from teleport_py.rbac import AccessChecker, AccessDenied as RBACDenied
from teleport_py.resources import KubeServer, User, resource_from_dict, resource_to_dict
from teleport_py.resources.role import allowed_search_as_roles

PREFIX = "/kube_servers/"
KUBE_SERVER_TTL = 90.0


@attr.s(frozen=True, auto_attribs=True)
class KubeServers:
    _clock: Any
    _backend: Any
    _authorizer: Authorizer
    _roles: Roles
    _users: Users
    #: This Teleport cluster's name: resource ids name clusters in it.
    _cluster_name: str = ""

    async def heartbeat(self, caller: Identity, doc: dict[str, Any]) -> None:
        host = self._authorizer.require_system_role(caller, "kube")
        server = validated(doc, "kube_server")
        if host.system_role != "admin" and server.host_id != host.host_id:
            raise AccessDenied("a Kubernetes service may only heartbeat its own clusters")
        expires = self._clock.seconds() + KUBE_SERVER_TTL
        server = KubeServer(
            name=server.name, host_id=server.host_id, hostname=server.hostname, cluster_name=server.cluster_name,
            cluster_labels=server.cluster_labels, version=server.version,
            expires=datetime.fromtimestamp(int(expires), timezone.utc),
        )
        await self._backend.put(
            f"{PREFIX}{server.cluster_name}/{server.host_id}", to_json(resource_to_dict(server)), expires=expires
        )

    async def goodbye(self, caller: Identity, cluster: Any) -> None:
        """A Kubernetes service stopping cleanly: forget its own record of
        ``cluster`` now rather than when the heartbeat's TTL runs out."""
        host = self._authorizer.require_system_role(caller, "kube")
        if not isinstance(cluster, str) or not cluster or "/" in cluster:
            raise BadParameter("cluster: must be a kube cluster name")
        await self._backend.delete(f"{PREFIX}{cluster}/{host.host_id}")

    async def clusters(self) -> dict[str, dict[str, str]]:
        """Live clusters and their labels (several agents may serve one)."""
        clusters: dict[str, dict[str, str]] = {}
        for item in await self._backend.get_range(PREFIX):
            server = resource_from_dict(json.loads(item.value))
            clusters.setdefault(server.cluster_name, dict(server.cluster_labels))
        return clusters

    async def _checker(self, user: User, allowed_resources=(), extra_roles=()) -> AccessChecker:
        roles = await self._roles.get_many(dict.fromkeys((*user.roles, *extra_roles)))
        return AccessChecker(user.name, roles, user.traits, allowed_resources=allowed_resources,
                             teleport_cluster=self._cluster_name)

    async def check_access(self, user: User, cluster: str, *, allowed_resources=()) -> dict[str, str]:
        """The cluster's labels if the user's roles reach it (and, for a
        certificate restricted to resources, one of them is in it)."""
        clusters = await self.clusters()
        checker = await self._checker(user, allowed_resources)
        labels = clusters.get(cluster)
        if labels is not None:
            try:
                checker.check_cluster(cluster, labels)
                return labels
            except RBACDenied:
                pass
        # Same answer for "missing" and "not allowed": do not reveal clusters.
        raise NotFound(f'kubernetes cluster "{cluster}" not found')

    async def list_for(self, caller: Identity, *, search_as_roles: bool = False) -> list[dict[str, Any]]:
        """What ``tsh kube ls`` shows: clusters the caller's roles can reach
        (an admin sees them all); for a user also the Kubernetes users and
        groups their requests there are impersonated as (the web UI shows them),
        by the roles the caller's certificate carries and within its allowed
        resources. ``search_as_roles`` (``tsh request search --kind=kube_cluster``):
        the clusters those roles and the ones the user may search as reach,
        whatever the certificate is restricted to."""
        clusters = await self.clusters()
        if isinstance(caller, HostIdentity):
            self._authorizer.require_system_role(caller)
            return [{"name": n, "labels": l} for n, l in sorted(clusters.items())]
        # The certificate's roles, as the agent authorizes by them: an
        # elevated certificate (approved access requests) reaches more.
        user = await self._users.get(caller.username)
        user = attr.evolve(user, roles=tuple(caller.roles))
        if search_as_roles:
            extra = allowed_search_as_roles(await self._roles.get_many(user.roles))
            checker = await self._checker(user, extra_roles=extra)
        else:
            checker = await self._checker(user, caller.allowed_resources)
        visible = []
        for name, labels in sorted(clusters.items()):
            try:
                checker.check_cluster(name, labels)
                users, groups = checker.kube_principals(labels)
            except RBACDenied:
                continue
            visible.append({"name": name, "labels": labels,
                            "kubernetes_users": sorted(users), "kubernetes_groups": sorted(groups)})
        return visible

    async def get(self, name: str) -> dict[str, Any]:
        found = [json.loads(i.value) for i in await self._backend.get_range(f"{PREFIX}{name}/")]
        if found:
            return found[0]
        raise NotFound(f'kube_server "{name}" not found')

    async def delete(self, name: str) -> None:
        if not await self._backend.delete_range(f"{PREFIX}{name}/"):
            raise NotFound(f'kube_server "{name}" not found')
