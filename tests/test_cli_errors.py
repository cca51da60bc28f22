"""tsh and tctl never print a traceback for an error they did not foresee:
one line naming it, exit 1 (TELEPORT_DEBUG=1 adds the traceback)."""
from __future__ import annotations

import os
import sys

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.support.procs import run

BIN = os.path.dirname(sys.executable)


class UnexpectedErrorTests(TestCase):
    timeout = 120

    def test_tsh_with_a_home_that_is_a_file(self):
        async def go():
            home = os.path.abspath(self.mktemp())
            with open(home, "w"):
                pass
            env = dict(os.environ, TELEPORT_HOME=home)
            env.pop("TELEPORT_DEBUG", None)
            result = await run([os.path.join(BIN, "tsh"), "status"], env=env, timeout=60)
            self.assertEqual(result.code, 1, result.err)
            self.assertNotIn("Traceback", result.out + result.err)
            lines = [line for line in result.err.splitlines() if line.strip()]
            self.assertEqual(len(lines), 1, result.err)
            self.assertIn("ERROR: Not a directory", lines[0])
            self.assertIn(home, lines[0])
            debug = await run([os.path.join(BIN, "tsh"), "status"], env=dict(env, TELEPORT_DEBUG="1"), timeout=60)
            self.assertEqual(debug.code, 1)
            self.assertIn("Traceback", debug.err)

        return Deferred.fromCoroutine(go())
