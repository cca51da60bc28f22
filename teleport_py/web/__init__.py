"""The web UI on the proxy's web port: browser sign-in with a server-side
session (``web.sessions``), the pages' JSON API (``web.ui``), the built
frontend's files (``web.assets``) and the headers every answer carries
(``web.site``). docs/web-ui.md."""
