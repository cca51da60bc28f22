"""The proxy's web port as a browser and tsh reach it: ``/web/`` (the UI,
``web.ui``), ``/web/invite/`` and ``/webapi/`` (tsh's JSON API and the
invitation page, ``proxy.webapi``); ``/`` redirects to ``/web/``.

Every answer carries the security headers: a strict Content-Security-Policy
(scripts, images and connections only from this origin, no inline or eval'd
script, nothing may frame the page; styles from this origin and inline, as
Teleport's own web UI allows, because xterm.js's renderer writes the
terminal's size and colours as ``<style>`` elements and inline styles), ``X-Frame-Options: DENY`` for browsers
that predate ``frame-ancestors``, ``nosniff``, no referrer (an invitation
link carries its token), and HSTS, since the port speaks only TLS.
"""
from __future__ import annotations

from twisted.web import resource

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode("ascii")),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"strict-transport-security", b"max-age=31536000"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


class WebRoot(resource.Resource):
    isLeaf = True

    def __init__(self, api: resource.Resource, ui: resource.Resource) -> None:
        super().__init__()
        self._api = api
        self._ui = ui

    def render(self, request):
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)
        path = request.postpath
        if path in ([], [b""]) and request.method in (b"GET", b"HEAD"):
            request.redirect(b"/web/")
            return b""
        if path and path[0] == b"web" and path[1:2] != [b"invite"]:
            return self._ui.render(request)
        return self._api.render(request)
