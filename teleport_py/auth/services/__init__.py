"""The Auth service's resources, one small service each over the backend (as
Teleport's ``lib/services``): certificate authorities, roles, users and their
sign-up, join tokens, kube_server heartbeats, the audit log's callers, and the
generic resource calls ``tctl`` makes. ``auth.server.AuthServer`` builds them
over one backend; ``auth.api`` composes them into the HTTP API.

Each public method that a caller can reach takes the caller first and
authorizes it (``auth.authorizer``); the rest are for the other services.
A new resource (access requests, locks) is a new module here.
"""
