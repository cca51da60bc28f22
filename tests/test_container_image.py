"""The Containerfile's steps without a container runtime (none runs on these
machines): the wheel is built from this tree, installed on its own (not the
editable checkout), Twisted's plugin cache built as the image build does,
the install made read-only, and ``twistd`` started with the chart's
arguments as the image's non-root user. What is NOT tested here: the base
image, ``useradd`` and the image build itself (docs/helm.md)."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.support.procs import run

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
IMAGE_UID = 10001  # the Containerfile's USER
#: ``twistd`` as the console script runs it, on an explicit sys.path (-S:
#: no site-packages .pth, so the editable checkout stays out of the way).
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


#: The image's user cannot reach an interpreter under /root (pyenv); Debian's
#: python3 of the same minor version runs the same wheels.
SYSTEM_PYTHON = "/usr/bin/python3"


def _system_python_matches() -> bool:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    return version == str(tuple(sys.version_info[:2]))


def _read_only(path: str) -> None:
    for directory, dirs, files in os.walk(path):
        for name in files:
            os.chmod(os.path.join(directory, name), 0o444)
        os.chmod(directory, 0o555)


def _writable(path: str) -> None:
    for directory, dirs, files in os.walk(path):
        os.chmod(directory, 0o755)


class ContainerImageStepsTests(TestCase):
    timeout = 300

    def test_wheel_runs_non_root_from_a_read_only_install(self):
        return Deferred.fromCoroutine(self._steps())

    async def _steps(self):
        with open(os.path.join(ROOT, "Containerfile")) as f:
            containerfile = f.read()
        self.assertIn("USER 10001:10001", containerfile)
        self.assertIn('ENTRYPOINT ["twistd"]', containerfile)
        work = tempfile.mkdtemp(prefix="teleport_py_image.")  # reachable by the image's user
        os.chmod(work, 0o755)
        self.addCleanup(shutil.rmtree, work, True)
        wheels, site = os.path.join(work, "wheels"), os.path.join(work, "site")
        built = await run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, ROOT],
                          timeout=240)
        self.assertEqual(built.code, 0, built.err)
        (wheel,) = os.listdir(wheels)
        installed = await run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site,
                               os.path.join(wheels, wheel)], timeout=120)
        self.assertEqual(installed.code, 0, installed.err)
        self.assertTrue(os.path.exists(os.path.join(site, "twisted", "plugins", "teleport_py_plugins.py")))
        path = os.pathsep.join([site, sysconfig.get_paths()["purelib"]])
        env = {"PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1", "PATH": os.environ.get("PATH", os.defpath)}
        cache = await run([sys.executable, "-S", "-m", "compileall", "-q", site], env=env, timeout=120)
        self.assertEqual(cache.code, 0, cache.err)
        plugins = await run([sys.executable, "-S", "-c",
                             "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"], env=env)
        self.assertEqual(plugins.code, 0, plugins.err)
        self.assertTrue(os.path.exists(os.path.join(site, "twisted", "plugins", "dropin.cache")))
        _read_only(site)
        self.addCleanup(_writable, site)  # runs before the rmtree
        home = os.path.join(work, "var-lib-teleport")
        os.makedirs(home, mode=0o700)
        config = os.path.join(work, "teleport.yaml")
        with open(config, "w") as f:
            f.write("version: v3\nteleport:\n  data_dir: " + home + "\n  proxy_server: 127.0.0.1:1\n"
                    "  ca_pin: sha256:" + "a" * 64 + "\nauth_service: {enabled: false}\n"
                    "proxy_service: {enabled: false}\n"
                    "kubernetes_service: {enabled: true, kube_cluster_name: my-cluster}\n")
        args = ["-S", "-c", TWISTD, "--nodaemon", "--pidfile=", "--logfile=-", "teleport-kube", f"--config={config}"]
        argv = [sys.executable, *args]
        if os.getuid() == 0 and _system_python_matches():  # as the image's user, who cannot write the install
            os.chown(home, IMAGE_UID, IMAGE_UID)
            os.chmod(config, 0o644)
            argv = ["setpriv", f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups", SYSTEM_PYTHON, *args]
        before = os.stat(os.path.join(site, "twisted", "plugins", "dropin.cache")).st_mtime
        # No KUBERNETES_SERVICE_HOST: the plugin from the wheel loads and
        # refuses with one line naming the fix (the pod would have it set).
        agent = await run(argv, env={**env, "HOME": home}, timeout=60)
        output = agent.out + agent.err
        self.assertNotEqual(agent.code, 0, output)
        self.assertIn("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set", output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("Unable to write to plugin cache", output)
        self.assertEqual(os.stat(os.path.join(site, "twisted", "plugins", "dropin.cache")).st_mtime, before)
        self.assertFalse(stat.S_IWUSR & os.stat(site).st_mode)
