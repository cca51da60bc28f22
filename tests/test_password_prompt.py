"""Passwords for tsh and tctl: read before the reactor starts, from a
terminal (confirmed when chosen) or one line of stdin."""
from __future__ import annotations

import io
import os
import sys

from twisted.trial.unittest import SynchronousTestCase, TestCase

from teleport_py import password_prompt
from teleport_py.password_prompt import PasswordInputError, read_password
from tests.support.procs import run

BIN = os.path.dirname(sys.executable)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


class ReadPasswordTests(SynchronousTestCase):
    def use_stdin(self, stream):
        self.patch(password_prompt.sys, "stdin", stream)

    def test_one_line_of_stdin_without_its_newline(self):
        self.use_stdin(io.StringIO("correct horse \r\nnext line\n"))
        self.assertEqual(read_password("Password: "), "correct horse ")

    def test_empty_stdin_is_an_error(self):
        self.use_stdin(io.StringIO(""))
        self.assertRaises(PasswordInputError, read_password, "Password: ")

    def test_a_terminal_is_asked_twice_when_choosing(self):
        self.use_stdin(_Terminal())
        answers = iter(["s3cret", "s3cret", "s3cret", "typo"])
        prompts = []
        self.patch(password_prompt.getpass, "getpass", lambda prompt: prompts.append(prompt) or next(answers))
        self.assertEqual(read_password("Enter password: ", confirm=True), "s3cret")
        self.assertEqual(prompts, ["Enter password: ", "Confirm password: "])
        error = self.assertRaises(PasswordInputError, read_password, "Enter password: ", confirm=True)
        self.assertIn("do not match", str(error))

    def test_a_terminal_is_asked_once_to_log_in(self):
        self.use_stdin(_Terminal())
        self.patch(password_prompt.getpass, "getpass", lambda prompt: "pw")
        self.assertEqual(read_password("Enter password: "), "pw")


class CommandLineTests(TestCase):
    async def test_no_password_ends_the_command_before_anything_else(self):
        home = os.path.abspath(self.mktemp())
        env = {**os.environ, "HOME": home, "TELEPORT_HOME": home}
        for command in (
            [os.path.join(BIN, "tctl"), "users", "signup", "0123abcd"],
            [os.path.join(BIN, "tsh"), "login", "--proxy=127.0.0.1:1", "--user=alice"],
        ):
            result = await run(command, env=env, stdin=b"", timeout=60)
            self.assertEqual(result.code, 1, result.err)
            self.assertIn("ERROR: no password given on stdin", result.err)
