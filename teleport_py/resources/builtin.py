"""Roles every cluster starts with, shaped like Teleport's presets.

``access`` lets a user reach every Kubernetes cluster as the Kubernetes users
and groups recorded in the user's own traits (so an admin grants access by
editing the user, not the role); ``editor`` manages the cluster's resources
through ``tctl``. They go through the same validating parser as any role an
administrator writes, so a preset can never hold what YAML could not.
"""
from __future__ import annotations

from teleport_py.resources.parse import resource_from_dict
from teleport_py.resources.role import Role

_EDITOR_RESOURCES = ["role", "user", "token", "kube_server", "proxy", "event", "session", "lock", "access_request"]
_EDITOR_VERBS = ["create", "read", "list", "update", "delete"]

_PRESETS = [
    {
        "kind": "role",
        "version": "v8",
        "metadata": {
            "name": "access",
            "description": "Access every Kubernetes cluster as the user's kubernetes_users and kubernetes_groups traits",
        },
        "spec": {
            "allow": {
                "kubernetes_labels": {"*": "*"},
                "kubernetes_groups": ["{{internal.kubernetes_groups}}"],
                "kubernetes_users": ["{{internal.kubernetes_users}}"],
                "kubernetes_resources": [
                    {"kind": "*", "api_group": "*", "namespace": "*", "name": "*", "verbs": ["*"]},
                ],
            },
        },
    },
    {
        "kind": "role",
        "version": "v8",
        "metadata": {"name": "editor", "description": "Manage roles, users, join tokens and clusters; read the audit log"},
        "spec": {"allow": {"rules": [{"resources": _EDITOR_RESOURCES, "verbs": _EDITOR_VERBS}]}},
    },
]

BUILTIN_ROLES: dict[str, Role] = {role.name: role for role in map(resource_from_dict, _PRESETS)}
