"""The ``role`` resource as value objects.

These classes are what the rest of the code base (the RBAC engine above all)
works with. They are built only by the validating parser in
``teleport_py.resources.parse`` (from YAML a user wrote, or from JSON stored in
the backend), so anything holding a ``Role`` may assume it is well-formed.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import attrs

ROLE_VERSIONS = ("v7", "v8")

#: Verbs a ``kubernetes_resources`` rule may list; ``*`` must stand alone.
KUBE_VERBS = (
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "exec",
    "portforward",
)

#: Role v7 ``kind`` values (Teleport's singular names), each with the API
#: group and plural resource name it stands for in a request and in v8.
V7_KINDS: Mapping[str, tuple[str, str]] = {
    "pod": ("", "pods"),
    "secret": ("", "secrets"),
    "configmap": ("", "configmaps"),
    "namespace": ("", "namespaces"),
    "service": ("", "services"),
    "serviceaccount": ("", "serviceaccounts"),
    "kube_node": ("", "nodes"),
    "persistentvolume": ("", "persistentvolumes"),
    "persistentvolumeclaim": ("", "persistentvolumeclaims"),
    "deployment": ("apps", "deployments"),
    "replicaset": ("apps", "replicasets"),
    "statefulset": ("apps", "statefulsets"),
    "daemonset": ("apps", "daemonsets"),
    "clusterrole": ("rbac.authorization.k8s.io", "clusterroles"),
    "kube_role": ("rbac.authorization.k8s.io", "roles"),
    "clusterrolebinding": ("rbac.authorization.k8s.io", "clusterrolebindings"),
    "rolebinding": ("rbac.authorization.k8s.io", "rolebindings"),
    "cronjob": ("batch", "cronjobs"),
    "job": ("batch", "jobs"),
    "certificatesigningrequest": ("certificates.k8s.io", "certificatesigningrequests"),
    "ingress": ("networking.k8s.io", "ingresses"),
}

#: v7 kinds that are not namespaced: their entries need no ``namespace``.
V7_CLUSTER_WIDE_KINDS = frozenset(
    {"namespace", "kube_node", "persistentvolume", "clusterrole", "clusterrolebinding", "certificatesigningrequest"}
)

#: Resources of the core API group (``api_group: ""``) in v8 roles; any other
#: kind needs its ``api_group`` spelled out.
CORE_RESOURCES = frozenset(
    {
        "bindings",
        "componentstatuses",
        "configmaps",
        "endpoints",
        "events",
        "limitranges",
        "namespaces",
        "nodes",
        "persistentvolumeclaims",
        "persistentvolumes",
        "pods",
        "podtemplates",
        "replicationcontrollers",
        "resourcequotas",
        "secrets",
        "serviceaccounts",
        "services",
    }
)

#: Verbs a ``rules`` entry may list (``*`` grants them all), as in Teleport.
RULE_VERBS = ("create", "read", "readnosecrets", "list", "update", "delete")

#: Teleport's default ``max_session_ttl`` (30 hours), in seconds.
DEFAULT_MAX_SESSION_TTL = 30 * 3600.0


@attrs.frozen
class KubernetesResource:
    """One entry of ``kubernetes_resources``.

    ``kind`` is a v7 singular kind (``pod``, ``namespace``, ``*``) or a v8
    plural resource name (``pods``, ``deployments``, ``*``); ``api_group`` is
    only meaningful for v8 (``""`` = core, ``*`` = any). ``namespace`` and
    ``name`` are globs or ``^regex$``.
    """

    kind: str
    namespace: str = ""
    name: str = ""
    verbs: tuple[str, ...] = ()
    api_group: str = ""


@attrs.frozen
class Rule:
    """An entry of ``rules``: which Teleport resources an identity may manage
    through the Auth API (``tctl``), e.g. ``resources: [role], verbs: [create]``."""

    resources: tuple[str, ...]
    verbs: tuple[str, ...]


@attrs.frozen
class RequestThreshold:
    """How many reviews settle an access request (Teleport's
    ``thresholds`` entry): ``approve`` approvals approve it, ``deny``
    denials deny it. A role that names none needs one of each."""

    name: str = "default"
    approve: int = 1
    deny: int = 1


@attrs.frozen
class AccessRequestConditions:
    """``allow.request`` / ``deny.request``: which roles a user may ask for
    (``roles``), which roles' view ``tsh request search`` may use to find
    resources to ask for (``search_as_roles``), and, under ``allow`` only,
    how many reviews settle a request and how long the granted access may
    last (seconds; 0 = until the requester's certificate expires).
    ``roles`` may be globs (``*``) or ``^regex$``; ``search_as_roles`` are
    role names, as in Teleport."""

    roles: tuple[str, ...] = ()
    search_as_roles: tuple[str, ...] = ()
    thresholds: tuple[RequestThreshold, ...] = ()
    max_duration: float = 0.0


@attrs.frozen
class ReviewRequestConditions:
    """``allow.review_requests`` / ``deny.review_requests``: requests for
    which roles a user may review (globs or ``^regex$``)."""

    roles: tuple[str, ...] = ()


@attrs.frozen
class RoleConditions:
    """The ``allow`` or ``deny`` half of a role spec.

    ``kubernetes_labels`` maps an exact label key (or ``*``) to the list of
    value patterns; values may still hold ``{{internal.x}}`` / ``{{external.x}}``
    trait templates, which the RBAC engine expands per user.
    """

    kubernetes_labels: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, hash=False)
    kubernetes_groups: tuple[str, ...] = ()
    kubernetes_users: tuple[str, ...] = ()
    kubernetes_resources: tuple[KubernetesResource, ...] = ()
    rules: tuple[Rule, ...] = ()
    request: AccessRequestConditions = AccessRequestConditions()
    review_requests: ReviewRequestConditions = ReviewRequestConditions()


@attrs.frozen
class RoleOptions:
    max_session_ttl: float = DEFAULT_MAX_SESSION_TTL
    #: Seconds a kube connection may sit idle; 0: not set by this role.
    client_idle_timeout: float = 0.0
    #: End kube connections when the user's certificate expires.
    disconnect_expired_cert: bool = False


@attrs.frozen
class Role:
    name: str
    version: str = "v7"
    allow: RoleConditions = RoleConditions()
    deny: RoleConditions = RoleConditions()
    options: RoleOptions = RoleOptions()
    description: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)


def allowed_search_as_roles(roles: Iterable[Role]) -> list[str]:
    """The roles a user with ``roles`` may search as and request resources
    through: every ``allow.request.search_as_roles`` no role's
    ``deny.request.search_as_roles`` names (Teleport's GetAllowedSearchAsRoles)."""
    roles = list(roles)
    denied = {name for role in roles for name in role.deny.request.search_as_roles}
    allowed = (name for role in roles for name in role.allow.request.search_as_roles)
    return [name for name in dict.fromkeys(allowed) if name not in denied]
