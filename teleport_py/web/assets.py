"""The built frontend's files, read once at startup and served from memory.

The bundle (``teleport_py/web/frontend/dist``, built by ``npm ci && npm run
build`` during installation, see setup.py) is small; reading it once, on a
thread, keeps file reads off the reactor. Every path under ``/web/`` that is
not an asset or an API call answers ``index.html``: the pages are routed in
the browser. When the bundle is missing (a checkout nobody installed), each
page says so and how to fix it.
"""
from __future__ import annotations

import os
from pathlib import Path

from twisted.internet import threads

DIST = Path(__file__).resolve().parent / "frontend" / "dist"
#: The bundle is a few hundred KiB; anything past this is not ours.
MAX_FILE = 8 << 20
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    ".woff2": b"font/woff2",
    ".map": b"application/json",
    ".txt": b"text/plain; charset=utf-8",
}
NOT_BUILT = (
    b"<!doctype html><title>Web UI not built</title><h1>The web UI was not built</h1>"
    b"<p>This installation has no frontend bundle. Install again with node and npm on the PATH: "
    b"<code>.venv/bin/pip install .</code> builds it (docs/web-ui.md).</p>"
)


def read_bundle(directory: Path) -> dict[str, bytes]:
    """``{relative path: bytes}`` for every file of the bundle (blocking)."""
    files: dict[str, bytes] = {}
    if not directory.is_dir():
        return files
    for root, _dirs, names in os.walk(directory):
        for name in names:
            path = Path(root) / name
            if Path(name).suffix in CONTENT_TYPES and path.stat().st_size <= MAX_FILE:
                files[path.relative_to(directory).as_posix()] = path.read_bytes()
    return files


class Assets:
    def __init__(self, files: dict[str, bytes]) -> None:
        self._files = files

    @classmethod
    async def load(cls, reactor, directory: Path = DIST) -> "Assets":
        return cls(await threads.deferToThreadPool(reactor, reactor.getThreadPool(), read_bundle, directory))

    @property
    def built(self) -> bool:
        return "index.html" in self._files

    def script(self, entry: str) -> str | None:
        """The URL of the built script of ``entry`` (``assets/<entry>-<hash>.js``,
        build.mjs), or None without a bundle."""
        names = sorted(p for p in self._files if p.startswith(f"assets/{entry}-") and p.endswith(".js"))
        return f"/web/{names[0]}" if names else None

    def render(self, request, path: str) -> bytes:
        """``path`` is relative to ``/web/``."""
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return b""
        if not self.built:
            request.setResponseCode(503)
            request.setHeader(b"content-type", CONTENT_TYPES[".html"])
            return NOT_BUILT
        if path.startswith("assets/"):
            body = self._files.get(path)
            if body is None:
                request.setResponseCode(404)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return b"no such file\n"
            request.setHeader(b"content-type", CONTENT_TYPES[Path(path).suffix])
            # Built file names carry a hash of their content.
            request.setHeader(b"cache-control", b"public, max-age=31536000, immutable")
            return body
        request.setHeader(b"content-type", CONTENT_TYPES[".html"])
        request.setHeader(b"cache-control", b"no-store")
        return self._files["index.html"]
