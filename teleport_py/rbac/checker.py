"""Decide what one user may do on one Kubernetes cluster, from Teleport roles.

Every decision is "deny wins": a matching deny rule beats any allow rule, and
anything no allow rule grants is refused. Roles are evaluated in their v8 form;
v7 roles are converted first, the way Teleport converts them (``as_v8``).
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import attrs

from teleport_py.rbac.match import WILDCARD, InvalidPattern, match_labels, match_value
from teleport_py.rbac.request import RequestInfo
from teleport_py.resource_ids import KUBE_CLUSTER, NAMESPACE, POD, ResourceID, resource_ids
from teleport_py.resources.role import KUBE_VERBS, V7_CLUSTER_WIDE_KINDS, V7_KINDS, KubernetesResource, Role, RoleConditions
from teleport_py.resources.traits import expand

ALL_AUTHENTICATED = "system:authenticated"
IMPERSONATION_DENIED = "impersonation request has been denied"
_READ_VERBS = frozenset({"get", "list", "watch"})
_COLLECTION_VERBS = frozenset({"list", "watch", "deletecollection"})

#: Well-known cluster-scoped resources, used when the caller cannot tell
#: (from API discovery) whether a resource is namespaced.
CLUSTER_SCOPED_RESOURCES = frozenset({
    ("", "namespaces"), ("", "nodes"), ("", "persistentvolumes"), ("", "componentstatuses"),
    ("rbac.authorization.k8s.io", "clusterroles"),
    ("rbac.authorization.k8s.io", "clusterrolebindings"),
    ("certificates.k8s.io", "certificatesigningrequests"),
    ("storage.k8s.io", "storageclasses"), ("storage.k8s.io", "csidrivers"),
    ("storage.k8s.io", "csinodes"), ("storage.k8s.io", "volumeattachments"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("apiregistration.k8s.io", "apiservices"),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
    ("scheduling.k8s.io", "priorityclasses"), ("node.k8s.io", "runtimeclasses"),
    ("networking.k8s.io", "ingressclasses"),
    ("flowcontrol.apiserver.k8s.io", "flowschemas"),
    ("flowcontrol.apiserver.k8s.io", "prioritylevelconfigurations"),
})

#: API groups Kubernetes itself serves, whose resources' scope the table
#: above settles; any other group (CRDs, aggregated APIs) needs discovery.
BUILTIN_API_GROUPS = frozenset({
    "", "apps", "batch", "autoscaling", "policy", "rbac.authorization.k8s.io", "networking.k8s.io",
    "storage.k8s.io", "apiextensions.k8s.io", "apiregistration.k8s.io", "admissionregistration.k8s.io",
    "scheduling.k8s.io", "node.k8s.io", "certificates.k8s.io", "coordination.k8s.io", "discovery.k8s.io",
    "events.k8s.io", "authentication.k8s.io", "authorization.k8s.io", "flowcontrol.apiserver.k8s.io",
})

#: ``(role name, rule)`` pairs.
_Rules = tuple[tuple[str, KubernetesResource], ...]

_EVERYTHING_V7 = KubernetesResource(kind=WILDCARD, namespace=WILDCARD, name=WILDCARD, verbs=(WILDCARD,))
_EVERYTHING_V8 = attrs.evolve(_EVERYTHING_V7, api_group=WILDCARD)


class AccessDenied(Exception):
    """A request is refused: ``message`` is shown to the user, ``reason`` goes to the audit log."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or message


def _convert_v7(resource: KubernetesResource) -> list[KubernetesResource]:
    """One v7 ``kubernetes_resources`` entry as the v8 entries Teleport reads it as."""
    if resource.kind == "namespace":
        namespace = "^.+$" if resource.name == WILDCARD else resource.name
        return [
            KubernetesResource(kind=WILDCARD, api_group=WILDCARD, namespace=namespace,
                               name=WILDCARD, verbs=resource.verbs),
            KubernetesResource(kind="namespaces", name=namespace, verbs=resource.verbs),
        ]
    namespace = "" if resource.kind in V7_CLUSTER_WIDE_KINDS else resource.namespace
    api_group, kind = V7_KINDS.get(resource.kind, (WILDCARD, resource.kind))
    converted = [KubernetesResource(kind=kind, api_group=api_group, namespace=namespace,
                                    name=resource.name, verbs=resource.verbs)]
    if kind == WILDCARD:
        # v7 wildcards reached cluster-wide kinds whatever their namespace said.
        converted += [
            KubernetesResource(kind=V7_KINDS[v7_kind][1], api_group=WILDCARD,
                               name=resource.name, verbs=resource.verbs)
            for v7_kind in sorted(V7_CLUSTER_WIDE_KINDS) if v7_kind != "namespace"
        ]
    return converted


def as_v8(role: Role) -> Role:
    """The v8 role that decides exactly like ``role``.

    Also fills Teleport's default: a role that selects clusters but lists no
    ``kubernetes_resources`` grants every resource on them.
    """
    allow = role.allow
    if allow.kubernetes_labels and not allow.kubernetes_resources:
        default = _EVERYTHING_V8 if role.version == "v8" else _EVERYTHING_V7
        allow = attrs.evolve(allow, kubernetes_resources=(default,))
    if role.version == "v8":
        return attrs.evolve(role, allow=allow)

    def convert(conditions: RoleConditions) -> RoleConditions:
        resources = tuple(r for old in conditions.kubernetes_resources for r in _convert_v7(old))
        return attrs.evolve(conditions, kubernetes_resources=resources)

    return attrs.evolve(role, version="v8", allow=convert(allow), deny=convert(role.deny))


@attrs.frozen
class _Target:
    """The object a request or a listed item touches, in v8 terms."""

    resource: str
    api_group: str
    namespace: str
    name: str
    verb: str

    @property
    def is_namespace(self) -> bool:
        return self.resource == "namespaces" and self.api_group == ""


def _verb_allowed(verbs: Sequence[str], verb: str) -> bool:
    return bool(verbs) and (verbs[0] == WILDCARD or verb in verbs)


def _kind_matches(rule: KubernetesResource, target: _Target) -> bool:
    return rule.kind in (target.resource, WILDCARD) and match_value(rule.api_group, target.api_group)


def _matches(rule: KubernetesResource, target: _Target, allow: bool) -> bool:
    """Whether one v8 rule covers one object (Teleport's KubeResourceMatchesRegex)."""
    if not _verb_allowed(rule.verbs, target.verb):
        return False
    if target.is_namespace and target.verb in _READ_VERBS and allow:
        # Seeing a namespace is implied by access to anything inside it.
        if rule.kind != "namespaces" and rule.namespace:
            return match_value(rule.namespace, target.name)
        if rule.kind == "namespaces" and rule.name:
            return match_value(rule.name, target.name)
    if not _kind_matches(rule, target):
        return False
    if target.is_namespace:
        return match_value(_namespace_scope(rule), target.name)
    if not match_value(rule.name, target.name):
        return False
    if not target.namespace and rule.namespace not in ("", WILDCARD):
        return False  # a rule scoped to namespaces never reaches cluster-scoped objects
    return match_value(rule.namespace, target.namespace)


def _could_match(rule: KubernetesResource, target: _Target, cluster_scoped: bool, allow: bool) -> bool:
    """For a list/watch: could ``rule`` (allow) match some item, or does it
    (deny) match every item? (Teleport's KubeResourceCouldMatchRules.)"""
    if not _verb_allowed(rule.verbs, target.verb):
        return False
    if allow and target.is_namespace and target.verb in _READ_VERBS:
        if rule.kind != "namespaces" and rule.namespace:
            return True
    if not _kind_matches(rule, target):
        return False
    if target.is_namespace and not allow:
        return _namespace_scope(rule) == WILDCARD
    if cluster_scoped:
        return rule.namespace in ("", WILDCARD) and (allow or rule.name == WILDCARD)
    if allow:
        return not target.namespace or match_value(rule.namespace, target.namespace)
    if rule.name != WILDCARD or not rule.namespace:
        return False
    if not target.namespace:
        return rule.namespace == WILDCARD
    return match_value(rule.namespace, target.namespace)


def _namespace_scope(rule: KubernetesResource) -> str:
    """The pattern a rule matches namespace objects' names with."""
    if rule.kind == "namespaces" or (rule.kind == WILDCARD and rule.namespace in ("", WILDCARD)):
        return rule.name
    return rule.namespace


class AccessChecker:
    """One user's roles, applied to Kubernetes clusters and requests.

    With ``allowed_resources`` (a certificate from an approved resource
    access request) the user reaches only the kube clusters those ids name in
    ``teleport_cluster``, and in each only what the ids name: a pod id grants
    that pod with the verbs the roles' rules matching it grant, a namespace
    id everything in the namespace the roles grant, a kube_cluster id what
    the roles grant there (Teleport's ``GetKubeResources``). Deny rules apply
    as always. The per-cluster methods then need ``cluster_name``; without
    it nothing is allowed.
    """

    def __init__(self, username: str, roles: Sequence[Role], traits: Mapping[str, Sequence[str]], *,
                 allowed_resources: Sequence[ResourceID | str] = (), teleport_cluster: str = "") -> None:
        self.username = username
        self.roles = tuple(as_v8(role) for role in roles)
        self.traits = traits
        self.allowed_resources = resource_ids(allowed_resources)
        self.teleport_cluster = teleport_cluster
        #: Rules and principals by cluster labels: the checker's inputs never
        #: change, and every request of a connection asks about one cluster.
        self._by_labels: dict[tuple[str, frozenset], object] = {}

    def _per_labels(self, what: str, cluster_labels: Mapping[str, str], compute: Callable):
        """``compute(cluster_labels)``, once per labels; a refusal is not kept."""
        key = (what, frozenset(cluster_labels.items()))
        try:
            return self._by_labels[key]
        except KeyError:
            result = self._by_labels[key] = compute(cluster_labels)
            return result

    # -- clusters -----------------------------------------------------------

    def _labels_match(self, selector: Mapping[str, Sequence[str]], labels: Mapping[str, str]) -> tuple[bool, str]:
        expanded = {key: self._expand(values) for key, values in selector.items()}
        try:
            return match_labels({key: values for key, values in expanded.items() if values}, labels)
        except InvalidPattern as error:
            raise AccessDenied("access denied: a role holds an invalid pattern", str(error)) from None

    def _allow_roles(self, cluster_labels: Mapping[str, str]) -> list[Role]:
        return [role for role in self.roles if self._labels_match(role.allow.kubernetes_labels, cluster_labels)[0]]

    def _cluster_denial(self, cluster_labels: Mapping[str, str], cluster_name: str = "") -> str | None:
        """Why the cluster is out of reach, or ``None`` if it is not."""
        denial = self._per_labels("denial", cluster_labels, self._compute_cluster_denial)
        if denial is None and self.allowed_resources and not self._ids_for(cluster_name):
            return "the certificate's allowed resources (a resource access request) do not name this cluster"
        return denial

    def _ids_for(self, cluster_name: str) -> list[ResourceID]:
        """The allowed resource ids in this kube cluster."""
        return [r for r in self.allowed_resources if r.cluster == self.teleport_cluster and r.name == cluster_name]

    def _compute_cluster_denial(self, cluster_labels: Mapping[str, str]) -> str | None:
        for role in self.roles:
            if self._labels_match(role.deny.kubernetes_labels, cluster_labels)[0]:
                return f"deny kubernetes_labels of role {role.name!r} match"
        misses = []
        for role in self.roles:
            matched, why = self._labels_match(role.allow.kubernetes_labels, cluster_labels)
            if matched:
                return None
            misses.append(f"{role.name}: {why}")
        return "no role's kubernetes_labels match (" + "; ".join(misses) + ")"

    def check_cluster(self, cluster_name: str, cluster_labels: Mapping[str, str]) -> None:
        """Refuse unless some role's ``kubernetes_labels`` select the cluster and no deny does."""
        denial = self._cluster_denial(cluster_labels, cluster_name)
        if denial is not None:
            raise AccessDenied(f'access to kubernetes cluster "{cluster_name}" denied', denial)

    # -- impersonation ------------------------------------------------------

    def _expand(self, values: Iterable[str]) -> list[str]:
        try:
            return expand(values, self.traits)
        except ValueError as error:
            raise AccessDenied("access denied: a role holds a malformed trait template", str(error)) from None

    def kube_principals(self, cluster_labels: Mapping[str, str]) -> tuple[frozenset[str], frozenset[str]]:
        """Kubernetes users and groups: union over the allow roles selecting the
        cluster, minus every role's deny. No user configured: the Teleport username."""
        return self._per_labels("principals", cluster_labels, self._compute_kube_principals)

    def _compute_kube_principals(self, cluster_labels: Mapping[str, str]) -> tuple[frozenset[str], frozenset[str]]:
        users: set[str] = set()
        groups: set[str] = set()
        for role in self._allow_roles(cluster_labels):
            users.update(self._expand(role.allow.kubernetes_users))
            groups.update(self._expand(role.allow.kubernetes_groups))
        users = users or {self.username}
        for role in self.roles:
            users.difference_update(self._expand(role.deny.kubernetes_users))
            groups.difference_update(self._expand(role.deny.kubernetes_groups))
        groups.add(ALL_AUTHENTICATED)
        return frozenset(users), frozenset(groups)

    def impersonation(
        self, cluster_labels: Mapping[str, str], requested_user: str | None, requested_groups: Sequence[str]
    ) -> tuple[str, tuple[str, ...]]:
        """The user and groups to send upstream, honouring the client's own
        ``Impersonate-User``/``Impersonate-Group`` only within what roles allow."""
        users, groups = self.kube_principals(cluster_labels)
        if requested_user:
            if requested_user not in users:
                raise AccessDenied(f'{IMPERSONATION_DENIED}, user header "{requested_user}" is not allowed in roles')
            user = requested_user
        elif len(users) == 1:
            (user,) = users
        elif not users:
            raise AccessDenied(f"{IMPERSONATION_DENIED}, no kubernetes user is allowed",
                               "every kubernetes user is denied")
        else:
            raise AccessDenied("please select a user to impersonate, refusing to select a user "
                               "due to several kubernetes_users set up for this user")
        for group in requested_groups:
            if group not in groups:
                raise AccessDenied(f'{IMPERSONATION_DENIED}, group header "{group}" value is not allowed in roles')
        chosen = set(requested_groups) or set(groups)
        return user, tuple(sorted(chosen | {ALL_AUTHENTICATED}))

    # -- resources ----------------------------------------------------------

    def _resources(self, cluster_labels: Mapping[str, str], cluster_name: str = "") -> tuple[_Rules, _Rules]:
        """(role name, rule) pairs: allow rules of roles selecting the cluster,
        deny rules of every role (deny is greedy, as in Teleport); with
        allowed resources, the allow rules narrowed to them."""
        roles_rules = self._per_labels("resources", cluster_labels, self._compute_resources)
        if not self.allowed_resources:
            return roles_rules
        return self._per_labels(("resources", cluster_name), cluster_labels,
                                lambda labels: self._restricted(roles_rules, cluster_name))

    def _restricted(self, rules: tuple[_Rules, _Rules], cluster_name: str) -> tuple[_Rules, _Rules]:
        allowed, denied = rules
        ids = self._ids_for(cluster_name)
        if any(r.kind == KUBE_CLUSTER for r in ids):
            return allowed, denied
        narrowed = tuple((str(rid), narrow) for rid in ids for _, rule in allowed for narrow in _narrow(rule, rid))
        return narrowed, denied

    def requestable(self, resource: ResourceID, cluster_labels: Mapping[str, str]) -> bool:
        """Whether these roles would grant anything on ``resource`` (a kube
        cluster they reach; a pod or namespace some allow rule covers, a pod
        no deny rule refuses ``get`` on): what a resource request may name."""
        if self.allowed_resources:
            raise ValueError("requestable() is asked of roles, not of a restricted certificate")
        if self._cluster_denial(cluster_labels) is not None:
            return False
        allowed, denied = self._resources(cluster_labels)
        if resource.kind == KUBE_CLUSTER:
            return bool(allowed)
        if not any(_narrow(rule, resource) for _, rule in allowed):
            return False
        if resource.kind == POD:
            target = _Target("pods", "", resource.namespace, resource.pod, "get")
            try:
                return not any(_matches(rule, target, allow=False) for _, rule in denied)
            except InvalidPattern:
                return False
        return True

    def _compute_resources(self, cluster_labels: Mapping[str, str]) -> tuple[_Rules, _Rules]:
        allowed = tuple((role.name, rule) for role in self._allow_roles(cluster_labels)
                        for rule in self._expand_rule(role.allow.kubernetes_resources))
        denied = tuple((role.name, rule) for role in self.roles
                       for rule in self._expand_rule(role.deny.kubernetes_resources))
        return allowed, denied

    def _expand_rule(self, rules: Iterable[KubernetesResource]) -> list[KubernetesResource]:
        """Trait templates in ``namespace``/``name`` become one rule per value."""
        return [
            attrs.evolve(rule, namespace=namespace, name=name)
            for rule in rules
            for namespace in (self._expand([rule.namespace]) if rule.namespace else [""])
            for name in (self._expand([rule.name]) if rule.name else [""])
        ]

    def check_request(
        self, info: RequestInfo, cluster_labels: Mapping[str, str], *, namespace_scoped: bool | None = None,
        cluster_name: str = "",
    ) -> None:
        """Refuse a request ``kubernetes_resources`` do not allow.

        Discovery and other non-resource paths only need cluster access. A
        list or watch without a name passes if some rule could match one of
        its items (the caller then filters items with ``allows_item``); it is
        refused outright when nothing could match or a deny covers it all.
        ``namespace_scoped`` comes from API discovery when the caller knows
        it; otherwise well-known resources and the path decide.
        """
        denial = self._cluster_denial(cluster_labels, cluster_name)
        if denial is not None:
            raise AccessDenied(self._forbidden(info, "no access to this kubernetes cluster"), denial)
        if not info.is_resource_request:
            return
        try:
            allowed, denied = self._resources(cluster_labels, cluster_name)
            if not info.resource or info.verb not in KUBE_VERBS:
                raise AccessDenied(self._forbidden(info, "request not understood"),
                                   f"unclassified request verb={info.verb!r} path={info.path!r}")
            cluster_scoped = self._cluster_scoped(info, namespace_scoped)
            target = _Target(info.resource, info.api_group, "" if cluster_scoped else info.namespace,
                             info.name, info.verb)
            if info.verb in _COLLECTION_VERBS and not info.name:
                self._check_collection(info, target, cluster_scoped, allowed, denied)
            else:
                self._check_object(info, target, allowed, denied)
        except InvalidPattern as error:
            raise AccessDenied(self._forbidden(info, "a teleport role holds an invalid pattern"), str(error)) from None

    def _check_object(self, info, target, allowed, denied) -> None:
        for role, rule in denied:
            if _matches(rule, target, allow=False):
                raise AccessDenied(self._forbidden(info, f"denied by teleport role {role!r}"),
                                   f"deny kubernetes_resources of role {role!r} match")
        if not any(_matches(rule, target, allow=True) for _, rule in allowed):
            raise AccessDenied(self._forbidden(info, "no teleport role allows it"),
                               "no allow kubernetes_resources match")

    def _check_collection(self, info, target, cluster_scoped, allowed, denied) -> None:
        for role, rule in denied:
            if _could_match(rule, target, cluster_scoped, allow=False):
                raise AccessDenied(self._forbidden(info, f"denied by teleport role {role!r}"),
                                   f"deny kubernetes_resources of role {role!r} cover the collection")
        if info.verb == "deletecollection":
            # The API server would delete every item at once, so every item
            # must be allowed and none may be denied: nothing can be filtered.
            partial = any(_could_match(rule, target, cluster_scoped, allow=True) for _, rule in denied)
            if partial or not any(_covers(rule, target, cluster_scoped) for _, rule in allowed):
                raise AccessDenied(self._forbidden(info, "teleport roles do not allow every item"),
                                   "deletecollection needs access to the whole collection")
            return
        if not any(_could_match(rule, target, cluster_scoped, allow=True) for _, rule in allowed):
            raise AccessDenied(self._forbidden(info, "no teleport role allows any of it"),
                               "no allow kubernetes_resources could match")

    def allows_item(self, info: RequestInfo, namespace: str, name: str, cluster_labels: Mapping[str, str], *,
                    cluster_name: str = "") -> bool:
        """Whether one item of a list/watch response may be shown."""
        return self.item_filter(info, cluster_labels, cluster_name=cluster_name)(namespace, name)

    def item_filter(self, info: RequestInfo, cluster_labels: Mapping[str, str], *,
                    cluster_name: str = "") -> Callable[[str, str], bool]:
        """``allows_item`` for one response, as ``(namespace, name) -> bool``.

        Roles and trait templates are expanded once here rather than once per
        item: a list can hold thousands of items.
        """
        try:
            allowed, denied = self._resources(cluster_labels, cluster_name)
        except AccessDenied:
            return lambda namespace, name: False
        allow_rules = [rule for _, rule in allowed]
        deny_rules = [rule for _, rule in denied]

        def allow(namespace: str, name: str) -> bool:
            target = _Target(info.resource, info.api_group, namespace, name, info.verb)
            if target.is_namespace:
                target = attrs.evolve(target, namespace="")
            try:
                return (not any(_matches(rule, target, allow=False) for rule in deny_rules)
                        and any(_matches(rule, target, allow=True) for rule in allow_rules))
            except InvalidPattern:
                return False

        return allow

    def needs_filtering(
        self, info: RequestInfo, cluster_labels: Mapping[str, str], *, namespace_scoped: bool | None = None,
        cluster_name: str = "",
    ) -> bool:
        """Whether a list/watch response must be filtered item by item.

        False only when an allow rule provably covers the whole collection and
        no deny rule could match any item of it; whenever in doubt, filter.
        """
        if not info.is_resource_request or info.verb not in ("list", "watch"):
            return False
        cluster_scoped = self._cluster_scoped(info, namespace_scoped)
        target = _Target(info.resource, info.api_group, "" if cluster_scoped else info.namespace, "", info.verb)
        try:
            allowed, denied = self._resources(cluster_labels, cluster_name)
            partial = any(_could_match(rule, target, cluster_scoped, allow=True) for _, rule in denied)
            return partial or not any(_covers(rule, target, cluster_scoped) for _, rule in allowed)
        except (InvalidPattern, AccessDenied):
            return True

    @staticmethod
    def _cluster_scoped(info: RequestInfo, namespace_scoped: bool | None) -> bool:
        if (info.api_group, info.resource) == ("", "namespaces"):
            return True
        if namespace_scoped is not None:
            return not namespace_scoped
        if info.namespace:
            return False
        return (info.api_group, info.resource) in CLUSTER_SCOPED_RESOURCES or bool(info.name)

    def _forbidden(self, info: RequestInfo, why: str) -> str:
        """A Kubernetes-style Forbidden message (what kubectl users recognize)."""
        if not info.is_resource_request:
            return f'forbidden: User "{self.username}" cannot {info.verb} path "{info.path}": {why}'
        resource = info.resource + (f"/{info.subresource}" if info.subresource else "")
        subject = f'{resource} "{info.name}"' if info.name else resource
        scope = (f'in the namespace "{info.namespace}"'
                 if info.namespace and info.resource != "namespaces" else "at the cluster scope")
        return (f'{subject} is forbidden: User "{self.username}" cannot {info.verb or "access"} '
                f'resource "{resource}" in API group "{info.api_group}" {scope}: {why}')


def _narrow(rule: KubernetesResource, resource: ResourceID) -> list[KubernetesResource]:
    """What of one v8 allow rule a resource id lets through (Teleport's
    ``GetKubeResources``): for a pod, that pod with the rule's verbs if the
    rule covers it whatever the verb; for a namespace, the rule confined to
    that namespace. Resource ids hold no pattern characters, so their names
    match only themselves. A rule with a broken pattern lets nothing through."""
    try:
        if resource.kind == POD:
            target = _Target("pods", "", resource.namespace, resource.pod, "get")
            if _matches(attrs.evolve(rule, verbs=(WILDCARD,)), target, allow=True):
                return [KubernetesResource(kind="pods", api_group="", namespace=resource.namespace,
                                           name=resource.pod, verbs=rule.verbs)]
            return []
        if resource.kind == NAMESPACE:
            namespace = resource.namespace
            if rule.namespace and match_value(rule.namespace, namespace):
                return [attrs.evolve(rule, namespace=namespace)]
            if (not rule.namespace and rule.kind in ("namespaces", WILDCARD) and match_value(rule.api_group, "")
                    and match_value(rule.name, namespace)):
                return [KubernetesResource(kind="namespaces", api_group="", name=namespace, verbs=rule.verbs)]
    except InvalidPattern:
        pass
    return []


def _covers(rule: KubernetesResource, target: _Target, cluster_scoped: bool) -> bool:
    """Whether an allow rule grants every item of a collection."""
    if not (_verb_allowed(rule.verbs, target.verb) and _kind_matches(rule, target) and rule.name == WILDCARD):
        return False
    if cluster_scoped:
        return rule.namespace in ("", WILDCARD)
    if not target.namespace:
        return rule.namespace == WILDCARD
    return bool(rule.namespace) and match_value(rule.namespace, target.namespace)
