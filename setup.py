"""Packaging glue that setup.cfg cannot express: the twistd plugin dropin,
and the web UI's frontend, built during installation.

``twisted/plugins/`` must stay a plain directory without ``__init__.py`` (it
is merged into Twisted's own ``twisted.plugins`` package at import time), so
it is listed here explicitly instead of being found by ``find_packages``.
``package_dir={"": "."}`` makes pip's default editable install (``pip
install -e .``) put the project directory itself on ``sys.path`` (a static
.pth) rather than an import hook that knows only the packages: twistd finds
plugins by scanning ``sys.path`` for ``twisted/plugins``, and with the hook
it saw none ("Unknown command: teleport"). tests/test_packaging.py holds it.

The web UI (docs/web-ui.md) is bundled from npm packages pinned by
``teleport_py/web/frontend/package-lock.json``: ``build_py`` runs ``npm ci
&& npm run build`` there first, so ``pip install .`` (the README's first
command) builds it, and the bundle ships in the package. Neither the bundle
nor node_modules is committed. Without npm the install stops with a message
saying so; TELEPORT_PY_SKIP_WEB_BUILD=1 installs without the UI (its pages
then say it was not built).
"""
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

FRONTEND = Path(__file__).resolve().parent / "teleport_py" / "web" / "frontend"


class BuildWithFrontend(build_py):
    def run(self):
        if os.environ.get("TELEPORT_PY_SKIP_WEB_BUILD") != "1":
            build_frontend()
        super().run()


def build_frontend() -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(
            "teleport_py: building the web UI needs node and npm on the PATH "
            "(Debian: apt-get install nodejs npm); or set TELEPORT_PY_SKIP_WEB_BUILD=1 to install without it"
        )
    for args in ([npm, "ci", "--no-audit", "--no-fund"], [npm, "run", "build"]):
        result = subprocess.run(args, cwd=FRONTEND)
        if result.returncode != 0:
            raise SystemExit(f"teleport_py: '{' '.join(args[1:])}' in {FRONTEND} failed (exit {result.returncode}); "
                             "its output is above")


setup(
    package_dir={"": "."},
    packages=find_packages(include=["teleport_py", "teleport_py.*"]) + ["twisted.plugins"],
    package_data={
        "twisted.plugins": ["teleport_py_plugins.py"],
        "teleport_py.web": ["frontend/dist/*.html", "frontend/dist/assets/*"],
    },
    cmdclass={"build_py": BuildWithFrontend},
)
