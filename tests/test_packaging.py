"""pip's default editable install (``pip install -e .``) must leave the
twistd plugins visible: twistd finds them by scanning sys.path for
``twisted/plugins``, which setuptools' import-hook editable mode hides."""
from __future__ import annotations

import os
import shutil
import site
import sys

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.support.procs import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md")
LIST_PLUGINS = (
    "from twisted.plugin import getPlugins\n"
    "from twisted.application.service import IServiceMaker\n"
    "print(sorted(p.tapname for p in getPlugins(IServiceMaker)))\n"
)


class EditableInstallTests(TestCase):
    timeout = 300

    def test_default_editable_install_finds_the_plugins(self):
        async def go():
            work = os.path.abspath(self.mktemp())
            project = os.path.join(work, "project")
            os.makedirs(project)
            for name in PROJECT_FILES:
                shutil.copy(os.path.join(ROOT, name), project)
            for package in ("teleport_py", "twisted"):
                shutil.copytree(os.path.join(ROOT, package), os.path.join(project, package),
                                ignore=shutil.ignore_patterns("__pycache__", "dropin.cache", "node_modules", "dist"))
            venv = os.path.join(work, "venv")
            made = await run([sys.executable, "-m", "venv", venv], timeout=120)
            self.assertEqual(made.code, 0, made.err)
            python = os.path.join(venv, "bin", "python")
            # The dependencies come from this test's own environment.
            purelib = (await run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])).out.strip()
            with open(os.path.join(purelib, "deps.pth"), "w") as f:
                f.write("\n".join(site.getsitepackages()) + "\n")
            env = dict(os.environ, TELEPORT_PY_SKIP_WEB_BUILD="1")  # the web UI's npm build is not what this tests
            installed = await run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", project], env=env,
                                  timeout=240)
            self.assertEqual(installed.code, 0, installed.out + installed.err)
            listed = await run([python, "-c", LIST_PLUGINS], cwd=work, timeout=60)
            self.assertEqual(listed.code, 0, listed.err)
            for plugin in ("teleport", "teleport-auth", "teleport-proxy", "teleport-kube"):
                self.assertIn(f"'{plugin}'", listed.out)

        return Deferred.fromCoroutine(go())
