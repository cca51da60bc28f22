"""The shipped systemd units are valid and start a plugin that exists."""
import os
import re
import shutil
import sys

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from tests.support.procs import run

UNITS = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "systemd")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class SystemdUnitTests(TestCase):
    def units(self):
        return sorted(f for f in os.listdir(UNITS) if f.endswith(".service"))

    def test_units_verify(self):
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed")

        async def go():
            workdir = self.mktemp()
            os.makedirs(workdir)
            for name in self.units():
                text = open(os.path.join(UNITS, name)).read()
                # Point ExecStart at this checkout's twistd so verify can check it.
                text = text.replace("/opt/teleport_py/bin/twistd", TWISTD)
                path = os.path.join(workdir, name)
                with open(path, "w") as f:
                    f.write(text)
                result = await run([analyze, "verify", path], timeout=60)
                problems = [
                    line for line in (result.out + result.err).splitlines()
                    if name in line or "Failed" in line or "not executable" in line
                ]
                self.assertEqual(problems, [], f"{name}: {result.out}{result.err}")

        return Deferred.fromCoroutine(go())

    def test_units_start_existing_plugins(self):
        async def go():
            listing = (await run([TWISTD, "--help"], timeout=60)).out
            for name in self.units():
                text = open(os.path.join(UNITS, name)).read()
                plugin = re.search(r"--logfile=- (\S+)", text).group(1)
                self.assertRegex(listing, rf"\n\s+{re.escape(plugin)}\s")

        return Deferred.fromCoroutine(go())

    def test_units_give_the_drain_time_before_sigkill(self):
        """SIGTERM drains for teleport.shutdown_timeout; systemd must not
        SIGKILL before that (and twistd's own shutdown) is over."""
        from teleport_py.config import DEFAULT_SHUTDOWN_TIMEOUT

        for name in self.units():
            text = open(os.path.join(UNITS, name)).read()
            stop = re.search(r"^TimeoutStopSec=(\d+)$", text, re.MULTILINE)
            self.assertIsNotNone(stop, name)
            self.assertGreaterEqual(int(stop.group(1)), DEFAULT_SHUTDOWN_TIMEOUT + 10, name)
            self.assertIn("KillSignal=SIGTERM", text)
