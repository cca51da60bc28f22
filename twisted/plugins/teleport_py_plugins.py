"""twistd dropin: one ServiceMaker per teleport_py service role.

Kept light on purpose: twistd imports every dropin to list plugins, so the real
service modules are imported only when a service is actually made.
"""
from twisted.application.service import ServiceMaker

teleportAll = ServiceMaker(
    "teleport_py all-in-one",
    "teleport_py.runner",
    "Run every teleport_py role enabled in the config (auth+proxy by default).",
    "teleport",
)
teleportAuth = ServiceMaker(
    "teleport_py auth",
    "teleport_py.auth.plugin",
    "Run the Auth service: certificate authorities, users, roles, tokens, audit log.",
    "teleport-auth",
)
teleportProxy = ServiceMaker(
    "teleport_py proxy",
    "teleport_py.proxy.plugin",
    "Run the Proxy service: one public TLS port for tsh, kubectl and agent tunnels.",
    "teleport-proxy",
)
teleportKube = ServiceMaker(
    "teleport_py kubernetes service",
    "teleport_py.kube.plugin",
    "Run the Kubernetes service agent: reverse tunnel, RBAC, impersonation, audit.",
    "teleport-kube",
)
