"""Role-based access control for Kubernetes requests: pure functions, no I/O.

``classify`` turns an HTTP request into a ``RequestInfo``; an
``AccessChecker`` built from a user's verified identity decides cluster
access, impersonation and each request against Teleport roles; refusals are
``AccessDenied`` (kubectl gets them as a ``teleport_py.kube_status.KubeStatus``).
"""
from teleport_py.rbac.checker import AccessChecker, AccessDenied, as_v8
from teleport_py.rbac.match import InvalidPattern, match_labels, match_value
from teleport_py.rbac.request import RequestInfo, classify

__all__ = [
    "AccessChecker",
    "AccessDenied",
    "InvalidPattern",
    "RequestInfo",
    "as_v8",
    "classify",
    "match_labels",
    "match_value",
]
