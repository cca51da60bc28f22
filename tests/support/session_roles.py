"""What a user needs, in Kubernetes and in Teleport, for exec, attach, cp and
port-forward: shared by the session tests and the exec benchmark."""

#: What the impersonated group needs in Kubernetes for sessions (GET is the
#: WebSocket verb, POST the SPDY one).
SESSIONS_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: teleport-test-sessions}
rules:
- apiGroups: [""]
  resources: ["pods", "pods/exec", "pods/attach", "pods/portforward", "pods/log"]
  verbs: ["get", "list", "create"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: teleport-test-sessions}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: teleport-test-sessions}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: session-users}
"""

SESSIONS_ROLE = """\
kind: role
version: v7
metadata:
  name: kube-sessions
spec:
  allow:
    kubernetes_labels:
      '*': '*'
    kubernetes_groups: [session-users]
    kubernetes_resources:
      - kind: '*'
        namespace: '*'
        name: '*'
        verbs: ['*']
"""
