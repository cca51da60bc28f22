"""The two roles of the seed (docs of Teleport's Kubernetes access), verbatim.

Tests use these exact texts so that "the seed's commands work as written"
stays checked in one place."""

#: Step 1: access to every cluster as the ``viewers`` Kubernetes group.
KUBE_ACCESS_ROLE = """\
kind: role
metadata:
  name: kube-access
version: v7
spec:
  allow:
    kubernetes_labels:
      '*': '*'
    kubernetes_resources:
      - kind: '*'
        namespace: '*'
        name: '*'
        verbs: ['*']
    kubernetes_groups:
      - viewers
  deny: {}
"""

#: "Kubernetes RBAC and impersonation": a developer limited to one namespace.
DEV_NAMESPACE_ACCESS_ROLE = """\
kind: role
version: v8
metadata:
  name: dev-namespace-access
spec:
  allow:
    kubernetes_labels:
      env: development
    kubernetes_groups:
      - dev-team
    kubernetes_resources:
      - kind: '*'
        api_group: '*'
        namespace: development
        name: '*'
        verbs: ['*']
  deny: {}
"""


def configmaps_role(role_name: str, namespace: str, names: str) -> str:
    """A v7 role that may get and list only the ConfigMaps of ``namespace``
    whose names match ``names``: listing them all is filtered by the agent."""
    return f"""\
kind: role
version: v7
metadata:
  name: {role_name}
spec:
  allow:
    kubernetes_labels:
      '*': '*'
    kubernetes_resources:
      - kind: configmap
        namespace: {namespace}
        name: '{names}'
        verbs: ['get', 'list']
    kubernetes_groups:
      - viewers
  deny: {{}}
"""
