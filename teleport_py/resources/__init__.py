"""Teleport resources (``role`` v7/v8, ``user``, ``token``, ``kube_server``, ``proxy``):
YAML and dicts in, validated frozen value objects out, and back."""
from teleport_py.resources.builtin import BUILTIN_ROLES
from teleport_py.resources.duration import format_duration, parse_duration
from teleport_py.resources.kube_server import KubeServer
from teleport_py.resources.proxy_server import ProxyServer
from teleport_py.resources.parse import (
    Resource,
    ValidationError,
    parse_yaml,
    resource_from_dict,
    resource_to_dict,
    to_yaml,
)
from teleport_py.resources.role import (
    KUBE_VERBS,
    KubernetesResource,
    Role,
    RoleConditions,
    RoleOptions,
    Rule,
)
from teleport_py.resources.token import Token
from teleport_py.resources.traits import Template, expand, parse_template
from teleport_py.resources.user import User

__all__ = [
    "BUILTIN_ROLES",
    "KUBE_VERBS",
    "KubeServer",
    "KubernetesResource",
    "ProxyServer",
    "Resource",
    "Role",
    "RoleConditions",
    "RoleOptions",
    "Rule",
    "Template",
    "Token",
    "User",
    "ValidationError",
    "expand",
    "format_duration",
    "parse_duration",
    "parse_template",
    "parse_yaml",
    "resource_from_dict",
    "resource_to_dict",
    "to_yaml",
]
