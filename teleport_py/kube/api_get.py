"""One GET to a cluster's API server with the agent's own credentials,
optionally impersonating a user (kube/resource_search.py) or not (API
discovery, kube/authorize.py), its body read whole but bounded."""
from __future__ import annotations

from urllib.parse import quote

from twisted.web.client import Agent
from twisted.web.http_headers import Headers

from teleport_py.bounded_body import BodyTooLarge, read_bounded
from teleport_py.kube.credentials import ClusterCredentials, ClusterTLSPolicy


class APIGetError(Exception):
    """The API server's answer could not be had, or was too large."""


def api_path(*segments: str, api_group: str = "", version: str = "v1") -> str:
    """``/api/<version>/...`` (core) or ``/apis/<group>/<version>/...``, each segment percent-encoded."""
    base = ["apis", api_group, version] if api_group else ["api", version]
    return "/" + "/".join(quote(s, safe="") for s in (*base, *segments))


async def api_get(reactor, credentials: ClusterCredentials, path: str, *, max_body: int,
                  impersonate: tuple[str, tuple[str, ...]] | None = None) -> tuple[int, bytes]:
    """``(status, body)`` of ``GET path`` asking for JSON; ``impersonate``:
    the user and groups the API server is told the caller is."""
    host = f"[{credentials.host}]" if ":" in credentials.host else credentials.host
    headers = Headers({b"accept": [b"application/json"]})
    token = credentials.bearer_token()
    if token:
        headers.addRawHeader(b"authorization", b"Bearer " + token.encode("ascii"))
    if impersonate is not None:
        user, groups = impersonate
        headers.addRawHeader(b"impersonate-user", user.encode("utf-8"))
        for group in groups:
            headers.addRawHeader(b"impersonate-group", group.encode("utf-8"))
    agent = Agent(reactor, contextFactory=ClusterTLSPolicy(credentials))
    response = await agent.request(b"GET", f"https://{host}:{credentials.port}{path}".encode("ascii"), headers)
    try:
        return response.code, await read_bounded(response, max_body)
    except BodyTooLarge:
        raise APIGetError(f"GET {path}: answer larger than {max_body} bytes") from None
