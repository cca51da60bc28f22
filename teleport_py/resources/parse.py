"""Strict conversion between Teleport-shaped YAML/dicts and resource value objects.

Everything that becomes a ``Role``, ``User``, ``Token`` or ``KubeServer`` goes
through here: YAML an administrator wrote for ``tctl create``, and JSON read
back from the backend. A resource is accepted whole or not at all, and every
refusal is a ``ValidationError`` naming the exact field
(``spec.allow.kubernetes_resources[0].verbs[1]``) and why, because a field we
silently ignored or guessed at would grant access nobody asked for.
"""
from __future__ import annotations

import difflib
import re
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import attrs
import yaml

from teleport_py.resources.access_request import (
    REVIEW_STATES,
    STATES,
    AccessRequest,
    AccessReview,
)
from teleport_py.resources.duration import format_duration, parse_duration
from teleport_py.resources.kube_server import KubeServer
from teleport_py.resources.proxy_server import ProxyServer
from teleport_py.resources.lock import Lock
from teleport_py.resource_ids import parse_resource_id
from teleport_py.resources.role import (
    CORE_RESOURCES,
    DEFAULT_MAX_SESSION_TTL,
    KUBE_VERBS,
    RULE_VERBS,
    V7_CLUSTER_WIDE_KINDS,
    V7_KINDS,
    AccessRequestConditions,
    KubernetesResource,
    RequestThreshold,
    ReviewRequestConditions,
    Role,
    RoleConditions,
    RoleOptions,
    Rule,
)
from teleport_py.resources.token import JOIN_METHODS, TOKEN_ROLES, Token
from teleport_py.resources.traits import parse_template
from teleport_py.resources.user import User

Resource = Union[Role, User, Token, KubeServer, ProxyServer, AccessRequest, Lock]

__all__ = ["Resource", "ValidationError", "parse_yaml", "resource_from_dict", "resource_to_dict", "to_yaml"]


class ValidationError(ValueError):
    """A resource was refused. ``path`` names the field, ``message`` says why."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# -- YAML ---------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, minus the parts that hide mistakes.

    Duplicate keys are refused (the last ``deny:`` would silently win),
    anchors and aliases are refused (resources never need them, and nested
    aliases make a tiny document expand exponentially), and timestamps stay
    text so that every field reaches validation in the form the user wrote.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases are not supported", self.peek_event().start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        self.flatten_mapping(node)
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _load_documents(text: str) -> list[tuple[int, Any]]:
    """Return ``(first line, data)`` for each YAML document in ``text``."""
    documents = []
    loader = None
    try:
        loader = _StrictLoader(text)
        while loader.check_node():
            node = loader.get_node()
            documents.append((node.start_mark.line + 1, loader.construct_document(node)))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ValidationError("yaml", f"{where}{e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ValidationError("yaml", str(e)) from None
    except RecursionError:
        raise ValidationError("yaml", "document is nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    return documents


def parse_yaml(text: str) -> list[Resource]:
    """Parse every non-empty document of a (multi-document) YAML text, all or nothing."""
    documents = _load_documents(text)
    resources = []
    for number, (line, data) in enumerate(documents, 1):
        if data is None:
            continue
        try:
            resources.append(resource_from_dict(data))
        except ValidationError as e:
            if len(documents) == 1:
                raise
            raise ValidationError(e.path, f"{e.message} (document {number}, line {line})") from None
    return resources


def to_yaml(resources: Iterable[Resource]) -> str:
    """Multi-document YAML for ``resources``; ``parse_yaml`` reads it back unchanged."""
    return yaml.safe_dump_all(
        [resource_to_dict(resource) for resource in resources],
        sort_keys=False,
        explicit_start=True,
        allow_unicode=False,  # PyYAML mangles some characters (U+0085) when it writes them raw
        default_flow_style=False,
    )


# -- field helpers ------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+=:-]*")
_MAX_NAME = 253
_LABEL_KEY = re.compile(r"[A-Za-z0-9/._:*-]+")
_RFC3339 = re.compile(
    r"(?P<datetime>\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d+))?(?P<zone>[Zz]|[+-]\d{2}:\d{2})"
)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_API_GROUP = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_RULE_RESOURCE = re.compile(r"[a-z][a-z0-9_]*")
_DEFAULT_NAMESPACE = "default"


def _join(path: str, key: str) -> str:
    step = key if _IDENTIFIER.fullmatch(key) else f"[{key!r}]"
    if not path:
        return step
    return path + step if step.startswith("[") else f"{path}.{step}"


def _index(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean (quote it: YAML reads yes/no/on/off/true/false unquoted as booleans)"
    if isinstance(value, (int, float)):
        return "a number (quote it to make it a string)"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _fields(value: Any, path: str, allowed: Sequence[str] | None, required: Sequence[str] = ()) -> dict:
    """``value`` as a mapping whose keys all come from ``allowed`` (any, if None); null counts as empty."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValidationError(path or "resource", f"must be a mapping, got {_describe(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ValidationError(path or "resource", f"field names must be strings, got {_describe(key)}")
        if allowed is not None and key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]}?" if close else f"valid: {', '.join(allowed)}"
            raise ValidationError(_join(path, key), f"unknown field ({hint})")
    for key in required:
        if value.get(key) is None:
            raise ValidationError(_join(path, key), "required")
    return value


def _string(value: Any, path: str, *, default: str | None = None, empty_ok: bool = True) -> str:
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise ValidationError(path, "required" if value is None else f"must be a string, got {_describe(value)}")
    if not value and not empty_ok:
        raise ValidationError(path, "must not be empty")
    return value


def _list(value: Any, path: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(path, f"must be a list, got {_describe(value)}")
    return value


def _strings(value: Any, path: str, check: Callable[[str, str], str] | None = None) -> tuple[str, ...]:
    """A list of non-empty strings, each passed through ``check(item, item_path)``."""
    items = []
    for i, item in enumerate(_list(value, path)):
        item = _string(item, _index(path, i), empty_ok=False)
        items.append(check(item, _index(path, i)) if check else item)
    return tuple(items)


def _name(value: Any, path: str) -> str:
    """A resource name: it becomes part of backend keys, URLs and certificates.

    The message never repeats the value: for tokens, the name is the secret.
    """
    name = _string(value, path, empty_ok=False)
    if len(name) > _MAX_NAME or not _NAME.fullmatch(name):
        raise ValidationError(
            path,
            f"invalid name: use at most {_MAX_NAME} letters, digits and . _ @ + = : -, starting with a letter or digit",
        )
    return name


def _labels(value: Any, path: str) -> dict[str, str]:
    labels = {}
    for key, label in _fields(value, path, allowed=None).items():
        if not _LABEL_KEY.fullmatch(key):
            raise ValidationError(_join(path, key), "invalid label key: use letters, digits and / . _ : * -")
        labels[key] = _string(label, _join(path, key))
    return labels


def _timestamp(value: Any, path: str) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValidationError(path, "must include a time zone (e.g. a trailing Z for UTC)")
        return value.astimezone(timezone.utc)
    text = _string(value, path)
    match = _RFC3339.fullmatch(text)
    try:
        if match is None:
            raise ValueError(text)
        fraction = (match["fraction"] or "")[:6].ljust(6, "0")
        zone = "+00:00" if match["zone"] in "Zz" else match["zone"]
        parsed = datetime.fromisoformat(f"{match['datetime'].replace('t', 'T')}.{fraction}{zone}")
    except ValueError:
        raise ValidationError(path, "must be an RFC 3339 timestamp such as 2030-01-31T15:04:05Z") from None
    return parsed.astimezone(timezone.utc)


def _format_timestamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _is_regex(value: str, path: str) -> bool:
    """Whether ``value`` is a ``^regex$``; one that does not compile is refused."""
    if not (len(value) > 1 and value.startswith("^") and value.endswith("$")):
        return False
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError) as e:
        raise ValidationError(path, f"invalid regular expression: {e}") from None
    return True


def _pattern(value: str, path: str) -> str:
    """A glob or ``^regex$``, possibly holding one trait template."""
    try:
        parse_template(value)
    except ValueError as e:
        raise ValidationError(path, str(e)) from None
    _is_regex(value, path)
    return value


def _templated(value: str, path: str) -> str:
    try:
        parse_template(value)
    except ValueError as e:
        raise ValidationError(path, str(e)) from None
    return value


def _metadata(document: dict, allowed: Sequence[str]) -> dict:
    metadata = _fields(document.get("metadata"), "metadata", allowed, required=("name",))
    namespace = metadata.get("namespace")
    if namespace is not None and namespace != _DEFAULT_NAMESPACE:
        raise ValidationError("metadata.namespace", f"must be {_DEFAULT_NAMESPACE!r} (the only namespace) or absent")
    return metadata


def _metadata_to_dict(name: str, labels: Mapping[str, str] | None = None, **extra: Any) -> dict:
    metadata: dict[str, Any] = {"name": name}
    metadata.update((key, value) for key, value in extra.items() if value)
    if labels:
        metadata["labels"] = dict(labels)
    return metadata


# -- role -----------------------------------------------------------------------

_CONDITION_FIELDS = (
    "kubernetes_labels", "kubernetes_groups", "kubernetes_users", "kubernetes_resources", "rules", "request",
    "review_requests",
)
_ALLOW_REQUEST_FIELDS = ("roles", "search_as_roles", "thresholds", "max_duration")
_DENY_REQUEST_FIELDS = ("roles", "search_as_roles")
_THRESHOLD_FIELDS = ("name", "approve", "deny")
_ROLE_GLOB = re.compile(r"[A-Za-z0-9*][A-Za-z0-9._@+=:*-]*")
#: Teleport's cap on how long access granted by a request may last (14 days).
MAX_ACCESS_DURATION = 14 * 24 * 3600.0
_KUBE_RESOURCE_FIELDS = ("kind", "api_group", "namespace", "name", "verbs")
_V7_PLURALS = {plural: kind for kind, (_, plural) in V7_KINDS.items()}
_V8_NAMESPACED = {(group, plural) for kind, (group, plural) in V7_KINDS.items() if kind not in V7_CLUSTER_WIDE_KINDS}
_LEGACY_ROLE_VERSIONS = ("v3", "v4", "v5", "v6")


def _selector(value: Any, path: str) -> dict[str, tuple[str, ...]]:
    selector = {}
    for key, patterns in _fields(value, path, allowed=None).items():
        key_path = _join(path, key)
        if not key:
            raise ValidationError(key_path, "label key must not be empty")
        if isinstance(patterns, str):
            patterns = (_pattern(patterns, key_path),)
        else:
            patterns = tuple(
                _pattern(_string(item, _index(key_path, i)), _index(key_path, i))
                for i, item in enumerate(_list(patterns, key_path))
            )
        if key == "*" and patterns != ("*",):
            raise ValidationError(key_path, "the '*' key only accepts the value '*' (match every cluster)")
        selector[key] = patterns
    return selector


def _kube_verbs(value: Any, path: str) -> tuple[str, ...]:
    verbs = _strings(value, path)
    if not verbs:
        raise ValidationError(path, "required: list the allowed verbs, or ['*'] for all of them")
    for i, verb in enumerate(verbs):
        if verb == "*" and len(verbs) > 1:
            raise ValidationError(_index(path, i), "'*' must be the only verb")
        if verb != "*" and verb not in KUBE_VERBS:
            raise ValidationError(_index(path, i), f"unknown verb {verb!r} (valid: {', '.join(KUBE_VERBS)}, or '*' alone)")
    return verbs


def _check_v7_kind(kind: str, api_group: str, namespace: str, path: str) -> None:
    if api_group:
        raise ValidationError(_join(path, "api_group"), "not supported in role version v7 (use version v8 to name API groups)")
    if kind != "*" and kind not in V7_KINDS:
        if kind in _V7_PLURALS:
            hint = f"did you mean {_V7_PLURALS[kind]!r}? plural resource names need role version v8"
        else:
            hint = f"valid: *, {', '.join(V7_KINDS)}"
        raise ValidationError(_join(path, "kind"), f"unknown kind {kind!r} for role version v7 ({hint})")
    if not namespace and kind not in V7_CLUSTER_WIDE_KINDS:
        raise ValidationError(_join(path, "namespace"), f"required for kind {kind!r} (use '*' for every namespace)")


def _check_v8_kind(kind: str, api_group: str, namespace: str, path: str) -> None:
    if kind in V7_KINDS and api_group in ("*", V7_KINDS[kind][0]):
        group, plural = V7_KINDS[kind]
        suggestion = f"kind: {plural}" + (f", api_group: {group}" if group else "")
        raise ValidationError(
            _join(path, "kind"), f"{kind!r} is a role v7 kind; version v8 uses plural resource names ({suggestion})"
        )
    if kind != "*" and not _DNS_LABEL.fullmatch(kind):
        raise ValidationError(_join(path, "kind"), f"invalid kind {kind!r}: use a lowercase plural resource name such as 'pods', or '*'")
    if api_group not in ("", "*") and not _API_GROUP.fullmatch(api_group):
        raise ValidationError(_join(path, "api_group"), f"invalid API group {api_group!r}: use '' for core, a name like 'apps', or '*'")
    if not api_group and kind != "*" and kind not in CORE_RESOURCES:
        known = V7_KINDS.get(_V7_PLURALS.get(kind, ""), ("",))[0]
        hint = f"api_group: {known}" if known else "'*' for any group"
        raise ValidationError(_join(path, "api_group"), f"required for {kind!r}, which is not a core resource (e.g. {hint})")
    if not namespace and (api_group, kind) in _V8_NAMESPACED:
        raise ValidationError(_join(path, "namespace"), f"required for {kind!r} (use '*' for every namespace)")


def _kube_resource(value: Any, path: str, version: str) -> KubernetesResource:
    entry = _fields(value, path, _KUBE_RESOURCE_FIELDS, required=("kind",))
    kind = _string(entry["kind"], _join(path, "kind"), empty_ok=False)
    api_group = _string(entry.get("api_group"), _join(path, "api_group"), default="")
    namespace = _pattern(_string(entry.get("namespace"), _join(path, "namespace"), default=""), _join(path, "namespace"))
    if version == "v7":
        _check_v7_kind(kind, api_group, namespace, path)
    else:
        _check_v8_kind(kind, api_group, namespace, path)
    name = _string(entry.get("name"), _join(path, "name"), default="")
    if not name:
        raise ValidationError(_join(path, "name"), "required (use '*' for any name)")
    return KubernetesResource(
        kind=kind,
        namespace=namespace,
        name=_pattern(name, _join(path, "name")),
        verbs=_kube_verbs(entry.get("verbs"), _join(path, "verbs")),
        api_group=api_group,
    )


def _rule(value: Any, path: str) -> Rule:
    entry = _fields(value, path, ("resources", "verbs"))

    def resource(name: str, item_path: str) -> str:
        if name != "*" and not _RULE_RESOURCE.fullmatch(name):
            raise ValidationError(item_path, f"invalid resource kind {name!r} (e.g. role, user, token, kube_server, or '*')")
        return name

    def verb(name: str, item_path: str) -> str:
        if name != "*" and name not in RULE_VERBS:
            raise ValidationError(item_path, f"unknown verb {name!r} (valid: {', '.join(RULE_VERBS)}, or '*')")
        return name

    resources = _strings(entry.get("resources"), _join(path, "resources"), resource)
    verbs = _strings(entry.get("verbs"), _join(path, "verbs"), verb)
    for field, items in (("resources", resources), ("verbs", verbs)):
        if not items:
            raise ValidationError(_join(path, field), "required: a rule needs at least one")
    return Rule(resources=resources, verbs=verbs)


def _role_pattern(value: str, path: str) -> str:
    """A role name, a glob of one (``*``, ``dev-*``) or a ``^regex$``."""
    if _is_regex(value, path):
        return value
    if len(value) > _MAX_NAME or not _ROLE_GLOB.fullmatch(value):
        raise ValidationError(path, "must be a role name, a glob such as dev-* or a ^regex$")
    return value


def _search_as_role(value: Any, path: str) -> str:
    """A role name, as Teleport reads ``search_as_roles``: no globs, no regular expressions."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or len(value) > _MAX_NAME:
        raise ValidationError(path, "must be a role name (search_as_roles takes no globs or regular expressions)")
    return value


def _count(value: Any, path: str) -> int:
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(path, f"must be a whole number of reviews, got {_describe(value)}")
    if not 1 <= value <= 100:
        raise ValidationError(path, "must be between 1 and 100")
    return value


def _threshold(value: Any, path: str) -> RequestThreshold:
    fields = _fields(value, path, _THRESHOLD_FIELDS)
    return RequestThreshold(
        name=_string(fields.get("name"), _join(path, "name"), default="default"),
        approve=_count(fields.get("approve"), _join(path, "approve")),
        deny=_count(fields.get("deny"), _join(path, "deny")),
    )


def _request_conditions(value: Any, path: str, allow: bool) -> AccessRequestConditions:
    fields = _fields(value, path, _ALLOW_REQUEST_FIELDS if allow else _DENY_REQUEST_FIELDS)
    thresholds_path = _join(path, "thresholds")
    max_duration = _option_duration(fields, "max_duration", path)
    if max_duration > MAX_ACCESS_DURATION:
        raise ValidationError(_join(path, "max_duration"), "must be at most 336h (14 days)")
    return AccessRequestConditions(
        roles=_strings(fields.get("roles"), _join(path, "roles"), _role_pattern),
        search_as_roles=_strings(fields.get("search_as_roles"), _join(path, "search_as_roles"), _search_as_role),
        thresholds=tuple(
            _threshold(item, _index(thresholds_path, i))
            for i, item in enumerate(_list(fields.get("thresholds"), thresholds_path))
        ),
        max_duration=max_duration,
    )


def _review_conditions(value: Any, path: str) -> ReviewRequestConditions:
    fields = _fields(value, path, ("roles",))
    return ReviewRequestConditions(roles=_strings(fields.get("roles"), _join(path, "roles"), _role_pattern))


def _conditions(value: Any, path: str, version: str) -> RoleConditions:
    fields = _fields(value, path, _CONDITION_FIELDS)
    allow = path.endswith("allow")
    resources_path = _join(path, "kubernetes_resources")
    rules_path = _join(path, "rules")
    return RoleConditions(
        kubernetes_labels=_selector(fields.get("kubernetes_labels"), _join(path, "kubernetes_labels")),
        kubernetes_groups=_strings(fields.get("kubernetes_groups"), _join(path, "kubernetes_groups"), _templated),
        kubernetes_users=_strings(fields.get("kubernetes_users"), _join(path, "kubernetes_users"), _templated),
        kubernetes_resources=tuple(
            _kube_resource(item, _index(resources_path, i), version)
            for i, item in enumerate(_list(fields.get("kubernetes_resources"), resources_path))
        ),
        rules=tuple(_rule(item, _index(rules_path, i)) for i, item in enumerate(_list(fields.get("rules"), rules_path))),
        request=_request_conditions(fields.get("request"), _join(path, "request"), allow),
        review_requests=_review_conditions(fields.get("review_requests"), _join(path, "review_requests")),
    )


def _options(value: Any, path: str) -> RoleOptions:
    options = _fields(value, path, ("max_session_ttl", "client_idle_timeout", "disconnect_expired_cert"))
    ttl = _option_duration(options, "max_session_ttl", path)
    # Teleport reads a zero TTL as "use the default"; so do we.
    return RoleOptions(
        max_session_ttl=ttl or DEFAULT_MAX_SESSION_TTL,
        client_idle_timeout=_option_duration(options, "client_idle_timeout", path, never=True),
        disconnect_expired_cert=_option_flag(options, "disconnect_expired_cert", path),
    )


def _option_duration(options: dict, key: str, path: str, never: bool = False) -> float:
    """A Go duration in seconds, 0 when absent (and, if ``never``, when written ``never``)."""
    where = _join(path, key)
    value = options.get(key)
    if value is None or (never and value == "never"):
        return 0.0
    if not isinstance(value, str):
        raise ValidationError(where, f"must be a duration string such as '8h' or '30m', got {_describe(value)}")
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise ValidationError(where, str(e)) from None
    if seconds < 0:
        raise ValidationError(where, "must not be negative")
    return seconds


def _option_flag(options: dict, key: str, path: str) -> bool:
    value = options.get(key, False)
    if isinstance(value, str) and value.lower() in ("yes", "no", "true", "false"):
        return value.lower() in ("yes", "true")
    if not isinstance(value, bool):
        raise ValidationError(_join(path, key), f"must be true or false, got {_describe(value)}")
    return value


def _everything(version: str) -> KubernetesResource:
    """Teleport's default ``kubernetes_resources`` when a role only sets labels."""
    return KubernetesResource(kind="*", namespace="*", name="*", verbs=("*",), api_group="*" if version == "v8" else "")


def _role_from_dict(document: dict, version: str) -> Role:
    metadata = _metadata(document, ("name", "namespace", "description", "labels"))
    spec = _fields(document.get("spec"), "spec", ("allow", "deny", "options"))
    allow = _conditions(spec.get("allow"), "spec.allow", version)
    if allow.kubernetes_labels and not allow.kubernetes_resources:
        allow = attrs.evolve(allow, kubernetes_resources=(_everything(version),))
    return Role(
        name=_name(metadata["name"], "metadata.name"),
        version=version,
        allow=allow,
        deny=_conditions(spec.get("deny"), "spec.deny", version),
        options=_options(spec.get("options"), "spec.options"),
        description=_string(metadata.get("description"), "metadata.description", default=""),
        labels=_labels(metadata.get("labels"), "metadata.labels"),
    )


def _kube_resource_to_dict(resource: KubernetesResource) -> dict:
    entry: dict[str, Any] = {"kind": resource.kind}
    if resource.api_group:
        entry["api_group"] = resource.api_group
    if resource.namespace:
        entry["namespace"] = resource.namespace
    entry["name"] = resource.name
    entry["verbs"] = list(resource.verbs)
    return entry


def _conditions_to_dict(conditions: RoleConditions) -> dict:
    fields: dict[str, Any] = {}
    if conditions.kubernetes_labels:
        fields["kubernetes_labels"] = {
            key: patterns[0] if len(patterns) == 1 else list(patterns)
            for key, patterns in conditions.kubernetes_labels.items()
        }
    if conditions.kubernetes_groups:
        fields["kubernetes_groups"] = list(conditions.kubernetes_groups)
    if conditions.kubernetes_users:
        fields["kubernetes_users"] = list(conditions.kubernetes_users)
    if conditions.kubernetes_resources:
        fields["kubernetes_resources"] = [_kube_resource_to_dict(r) for r in conditions.kubernetes_resources]
    if conditions.rules:
        fields["rules"] = [{"resources": list(r.resources), "verbs": list(r.verbs)} for r in conditions.rules]
    request = _request_to_dict(conditions.request)
    if request:
        fields["request"] = request
    if conditions.review_requests.roles:
        fields["review_requests"] = {"roles": list(conditions.review_requests.roles)}
    return fields


def _request_to_dict(request: AccessRequestConditions) -> dict:
    fields: dict[str, Any] = {}
    if request.roles:
        fields["roles"] = list(request.roles)
    if request.search_as_roles:
        fields["search_as_roles"] = list(request.search_as_roles)
    if request.thresholds:
        fields["thresholds"] = [{"name": t.name, "approve": t.approve, "deny": t.deny} for t in request.thresholds]
    if request.max_duration:
        fields["max_duration"] = format_duration(request.max_duration)
    return fields


def _role_to_dict(role: Role) -> dict:
    return {
        "kind": "role",
        "version": role.version,
        "metadata": _metadata_to_dict(role.name, role.labels, description=role.description),
        "spec": {
            "allow": _conditions_to_dict(role.allow),
            "deny": _conditions_to_dict(role.deny),
            "options": _options_to_dict(role.options),
        },
    }


def _options_to_dict(options: RoleOptions) -> dict:
    out: dict[str, Any] = {"max_session_ttl": format_duration(options.max_session_ttl)}
    if options.client_idle_timeout:
        out["client_idle_timeout"] = format_duration(options.client_idle_timeout)
    if options.disconnect_expired_cert:
        out["disconnect_expired_cert"] = True
    return out


# -- user, token, kube_server ---------------------------------------------------


def _traits(value: Any, path: str) -> dict[str, tuple[str, ...]]:
    traits = {}
    for key, values in _fields(value, path, allowed=None).items():
        if not key:
            raise ValidationError(_join(path, key), "trait name must not be empty")
        values_path = _join(path, key)
        traits[key] = tuple(_string(item, _index(values_path, i)) for i, item in enumerate(_list(values, values_path)))
    return traits


def _user_from_dict(document: dict, version: str) -> User:
    metadata = _metadata(document, ("name", "namespace", "labels"))
    spec = _fields(document.get("spec"), "spec", ("roles", "traits"))
    return User(
        name=_name(metadata["name"], "metadata.name"),
        roles=_strings(spec.get("roles"), "spec.roles", _name),
        traits=_traits(spec.get("traits"), "spec.traits"),
        labels=_labels(metadata.get("labels"), "metadata.labels"),
    )


def _user_to_dict(user: User) -> dict:
    return {
        "kind": "user",
        "version": "v2",
        "metadata": _metadata_to_dict(user.name, user.labels),
        "spec": {"roles": list(user.roles), "traits": {key: list(values) for key, values in user.traits.items()}},
    }


_CANONICAL_TOKEN_ROLES = {role.lower(): role for role in TOKEN_ROLES}


def _token_role(value: str, path: str) -> str:
    """Teleport reads system roles case-insensitively (``kube`` is ``Kube``)."""
    try:
        return _CANONICAL_TOKEN_ROLES[value.lower()]
    except KeyError:
        raise ValidationError(path, f"unknown system role {value!r} (valid: {', '.join(TOKEN_ROLES)})") from None


def _token_from_dict(document: dict, version: str) -> Token:
    metadata = _metadata(document, ("name", "namespace", "labels", "expires"))
    spec = _fields(document.get("spec"), "spec", ("roles", "join_method"), required=("roles",))
    roles = _strings(spec["roles"], "spec.roles", _token_role)
    if not roles:
        raise ValidationError("spec.roles", "must name at least one system role, e.g. Kube")
    join_method = _string(spec.get("join_method"), "spec.join_method", default="token")
    if join_method not in JOIN_METHODS:
        raise ValidationError("spec.join_method", f"unsupported join method {join_method!r} (supported: {', '.join(JOIN_METHODS)})")
    if metadata.get("expires") is None:
        raise ValidationError("metadata.expires", "required: join tokens must expire")
    return Token(
        name=_name(metadata["name"], "metadata.name"),
        roles=roles,
        expires=_timestamp(metadata["expires"], "metadata.expires"),
        labels=_labels(metadata.get("labels"), "metadata.labels"),
        join_method=join_method,
    )


def _token_to_dict(token: Token) -> dict:
    return {
        "kind": "token",
        "version": "v2",
        "metadata": _metadata_to_dict(token.name, token.labels, expires=_format_timestamp(token.expires)),
        "spec": {"roles": list(token.roles), "join_method": token.join_method},
    }


def _kube_server_from_dict(document: dict, version: str) -> KubeServer:
    metadata = _metadata(document, ("name", "namespace", "expires"))
    spec = _fields(document.get("spec"), "spec", ("host_id", "hostname", "version", "cluster"), required=("host_id", "cluster"))
    cluster = _fields(spec["cluster"], "spec.cluster", ("kind", "version", "metadata", "spec"), required=("kind", "version", "metadata"))
    if cluster["kind"] != "kube_cluster":
        raise ValidationError("spec.cluster.kind", "must be 'kube_cluster'")
    if cluster["version"] != "v3":
        raise ValidationError("spec.cluster.version", "must be 'v3'")
    cluster_metadata = _fields(cluster["metadata"], "spec.cluster.metadata", ("name", "labels"), required=("name",))
    _fields(cluster.get("spec"), "spec.cluster.spec", ())
    expires = metadata.get("expires")
    return KubeServer(
        name=_name(metadata["name"], "metadata.name"),
        host_id=_name(spec["host_id"], "spec.host_id"),
        hostname=_string(spec.get("hostname"), "spec.hostname", default=""),
        cluster_name=_name(cluster_metadata["name"], "spec.cluster.metadata.name"),
        cluster_labels=_labels(cluster_metadata.get("labels"), "spec.cluster.metadata.labels"),
        version=_string(spec.get("version"), "spec.version", default=""),
        expires=None if expires is None else _timestamp(expires, "metadata.expires"),
    )


def _kube_server_to_dict(server: KubeServer) -> dict:
    expires = None if server.expires is None else _format_timestamp(server.expires)
    return {
        "kind": "kube_server",
        "version": "v3",
        "metadata": _metadata_to_dict(server.name, expires=expires),
        "spec": {
            "host_id": server.host_id,
            "hostname": server.hostname,
            "version": server.version,
            "cluster": {
                "kind": "kube_cluster",
                "version": "v3",
                "metadata": _metadata_to_dict(server.cluster_name, server.cluster_labels),
                "spec": {},
            },
        },
    }


# -- access_request -------------------------------------------------------------

_ACCESS_REQUEST_FIELDS = (
    "user", "roles", "state", "created", "expires", "request_reason", "resolve_reason", "reviews",
    "requested_resource_ids", "thresholds",
)
_MAX_REASON = 4096


def _reason(value: Any, path: str) -> str:
    reason = _string(value, path, default="")
    if len(reason) > _MAX_REASON:
        raise ValidationError(path, f"must be at most {_MAX_REASON} characters")
    return reason


def _state(value: Any, path: str, allowed: Sequence[str]) -> str:
    state = _string(value, path)
    if state not in allowed:
        raise ValidationError(path, f"must be one of {', '.join(allowed)}")
    return state


def _review(value: Any, path: str) -> AccessReview:
    fields = _fields(value, path, ("author", "proposed_state", "reason", "created"), required=("author", "created"))
    return AccessReview(
        author=_name(fields["author"], _join(path, "author")),
        proposed_state=_state(fields.get("proposed_state"), _join(path, "proposed_state"), REVIEW_STATES),
        reason=_reason(fields.get("reason"), _join(path, "reason")),
        created=_timestamp(fields["created"], _join(path, "created")),
    )


def _resource_id(value: Any, path: str):
    fields = _fields(value, path, ("cluster", "kind", "name", "sub_resource"), required=("cluster", "kind", "name"))
    text = "/".join(["", *(_string(fields.get(k), _join(path, k)) for k in ("cluster", "kind", "name"))])
    sub_resource = _string(fields.get("sub_resource"), _join(path, "sub_resource"), default="")
    try:
        return parse_resource_id(f"{text}/{sub_resource}" if sub_resource else text)
    except ValueError as e:
        raise ValidationError(path, str(e)) from None


def _access_request_from_dict(document: dict, version: str) -> AccessRequest:
    metadata = _metadata(document, ("name", "namespace", "expires"))
    spec = _fields(document.get("spec"), "spec", _ACCESS_REQUEST_FIELDS, required=("user", "state", "created", "expires"))
    reviews_path, ids_path, thresholds_path = "spec.reviews", "spec.requested_resource_ids", "spec.thresholds"
    request = AccessRequest(
        name=_name(metadata["name"], "metadata.name"),
        user=_name(spec["user"], "spec.user"),
        state=_state(spec["state"], "spec.state", STATES),
        created=_timestamp(spec["created"], "spec.created"),
        expires=_timestamp(metadata.get("expires"), "metadata.expires"),
        access_expires=_timestamp(spec["expires"], "spec.expires"),
        roles=_strings(spec.get("roles"), "spec.roles", lambda v, p: _name(v, p)),
        resource_ids=tuple(
            _resource_id(item, _index(ids_path, i)) for i, item in enumerate(_list(spec.get("requested_resource_ids"), ids_path))
        ),
        request_reason=_reason(spec.get("request_reason"), "spec.request_reason"),
        resolve_reason=_reason(spec.get("resolve_reason"), "spec.resolve_reason"),
        reviews=tuple(_review(item, _index(reviews_path, i)) for i, item in enumerate(_list(spec.get("reviews"), reviews_path))),
        thresholds=tuple(
            _threshold(item, _index(thresholds_path, i)) for i, item in enumerate(_list(spec.get("thresholds"), thresholds_path))
        ),
    )
    if not request.roles and not request.resource_ids:
        raise ValidationError("spec.roles", "a request names roles or requested_resource_ids")
    return request


def _access_request_to_dict(request: AccessRequest) -> dict:
    spec: dict[str, Any] = {
        "user": request.user,
        "state": request.state,
        "created": _format_timestamp(request.created),
        "expires": _format_timestamp(request.access_expires),
        "roles": list(request.roles),
    }
    if request.resource_ids:
        spec["requested_resource_ids"] = [
            {"cluster": r.cluster, "kind": r.kind, "name": r.name, **({"sub_resource": r.sub_resource} if r.sub_resource else {})}
            for r in request.resource_ids
        ]
    if request.request_reason:
        spec["request_reason"] = request.request_reason
    if request.resolve_reason:
        spec["resolve_reason"] = request.resolve_reason
    if request.reviews:
        spec["reviews"] = [
            {"author": r.author, "proposed_state": r.proposed_state, "reason": r.reason, "created": _format_timestamp(r.created)}
            for r in request.reviews
        ]
    if request.thresholds:
        spec["thresholds"] = [{"name": t.name, "approve": t.approve, "deny": t.deny} for t in request.thresholds]
    return {
        "kind": "access_request",
        "version": "v3",
        "metadata": _metadata_to_dict(request.name, expires=_format_timestamp(request.expires)),
        "spec": spec,
    }


# -- lock ---------------------------------------------------------------------------


def _lock_from_dict(document: dict, version: str) -> Lock:
    metadata = _metadata(document, ("name", "namespace", "expires"))
    spec = _fields(document.get("spec"), "spec", ("target", "message", "created_by", "created"), required=("target",))
    target = _fields(spec["target"], "spec.target", ("user", "role"))
    if len([k for k in ("user", "role") if target.get(k)]) != 1:
        raise ValidationError("spec.target", "name exactly one of user or role")
    return Lock(
        name=_name(metadata["name"], "metadata.name"),
        user=_name(target["user"], "spec.target.user") if target.get("user") else "",
        role=_name(target["role"], "spec.target.role") if target.get("role") else "",
        message=_reason(spec.get("message"), "spec.message"),
        created_by=_string(spec.get("created_by"), "spec.created_by", default=""),
        created=_timestamp(spec["created"], "spec.created") if spec.get("created") is not None else None,
        expires=_timestamp(metadata["expires"], "metadata.expires") if metadata.get("expires") is not None else None,
    )


def _lock_to_dict(lock: Lock) -> dict:
    spec: dict[str, Any] = {"target": {"user": lock.user} if lock.user else {"role": lock.role}}
    if lock.message:
        spec["message"] = lock.message
    if lock.created_by:
        spec["created_by"] = lock.created_by
    if lock.created is not None:
        spec["created"] = _format_timestamp(lock.created)
    expires = _format_timestamp(lock.expires) if lock.expires is not None else None
    return {"kind": "lock", "version": "v2", "metadata": _metadata_to_dict(lock.name, expires=expires), "spec": spec}


# -- proxy ----------------------------------------------------------------------


def _proxy_from_dict(document: dict, version: str) -> ProxyServer:
    metadata = _metadata(document, ("name", "namespace", "expires"))
    spec = _fields(document.get("spec"), "spec", ("hostname", "tunnel_addr", "public_addr", "version"),
                   required=("tunnel_addr", "public_addr"))
    expires = metadata.get("expires")
    return ProxyServer(
        name=_name(metadata["name"], "metadata.name"),
        hostname=_string(spec.get("hostname"), "spec.hostname", default=""),
        tunnel_addr=_string(spec["tunnel_addr"], "spec.tunnel_addr"),
        public_addr=_string(spec["public_addr"], "spec.public_addr"),
        version=_string(spec.get("version"), "spec.version", default=""),
        expires=None if expires is None else _timestamp(expires, "metadata.expires"),
    )


def _proxy_to_dict(proxy: ProxyServer) -> dict:
    expires = None if proxy.expires is None else _format_timestamp(proxy.expires)
    return {
        "kind": "proxy",
        "version": "v2",
        "metadata": _metadata_to_dict(proxy.name, expires=expires),
        "spec": {"hostname": proxy.hostname, "tunnel_addr": proxy.tunnel_addr, "public_addr": proxy.public_addr,
                 "version": proxy.version},
    }


# -- dispatch -------------------------------------------------------------------

_PARSERS: dict[str, tuple[tuple[str, ...], Callable[[dict, str], Resource]]] = {
    "role": (("v7", "v8"), _role_from_dict),
    "user": (("v2",), _user_from_dict),
    "token": (("v2",), _token_from_dict),
    "kube_server": (("v3",), _kube_server_from_dict),
    "proxy": (("v2",), _proxy_from_dict),
    "access_request": (("v3",), _access_request_from_dict),
    "lock": (("v2",), _lock_from_dict),
}
_DUMPERS: dict[type, Callable[[Any], dict]] = {
    Role: _role_to_dict,
    User: _user_to_dict,
    Token: _token_to_dict,
    KubeServer: _kube_server_to_dict,
    ProxyServer: _proxy_to_dict,
    AccessRequest: _access_request_to_dict,
    Lock: _lock_to_dict,
}


def resource_from_dict(document: Any) -> Resource:
    """Validate a Teleport-shaped mapping and build its value object."""
    document = _fields(document, "", ("kind", "version", "metadata", "spec"), required=("kind", "version", "metadata"))
    kind = _string(document["kind"], "kind")
    if kind not in _PARSERS:
        raise ValidationError("kind", f"unknown kind {kind!r} (supported: {', '.join(_PARSERS)})")
    versions, parser = _PARSERS[kind]
    version = _string(document["version"], "version")
    if kind == "role" and version in _LEGACY_ROLE_VERSIONS:
        raise ValidationError(
            "version",
            f"role version {version} is not supported: use v7 (singular kinds) or v8 (plural resources and api_group)",
        )
    if version not in versions:
        raise ValidationError("version", f"unsupported version {version!r} for kind {kind} (supported: {', '.join(versions)})")
    return parser(document, version)


def resource_to_dict(resource: Resource) -> dict:
    """The Teleport-shaped mapping for ``resource`` (plain dicts, lists and strings)."""
    try:
        dumper = _DUMPERS[type(resource)]
    except KeyError:
        raise TypeError(f"not a resource: {type(resource).__name__}") from None
    return dumper(resource)
