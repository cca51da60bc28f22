"""The OTP second factor (``second_factor: otp``): RFC 6238 codes, and Auth's
sign-up and login with them (a code taken once, wrong codes counted as failed
logins, a reset forgets the device). In-memory backend, a movable clock.
The browser sign-up page, tsh login and web sign-in are in
tests.test_web_browser_otp."""
from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from teleport_py.auth import totp
from teleport_py.auth.errors import AccessDenied, BadParameter, LimitExceeded, NotFound
from teleport_py.auth.server import AuthServer
from teleport_py.backend import MemoryBackend
from teleport_py.config import ConfigError, parse_config
from teleport_py.resources import parse_yaml
from tests.support.auth_callers import ADMIN, PROXY, public_pem
from tests.support.clocks import ShiftedClock

PASSWORD = "correct horse battery"
#: RFC 6238 appendix B: the SHA-1 seed, and (time, 8-digit TOTP) pairs.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
RFC_VECTORS = ((59, "94287082"), (1111111109, "07081804"), (1111111111, "14050471"),
               (1234567890, "89005924"), (2000000000, "69279037"), (20000000000, "65353130"))


class TotpTests(TestCase):
    def test_rfc_6238_vectors(self):
        key = base64.b32decode(RFC_SECRET)
        for seconds, expected in RFC_VECTORS:
            self.assertEqual(totp.hotp(key, totp.step_at(seconds), digits=8), expected, seconds)
            self.assertEqual(totp.code_at(RFC_SECRET, seconds), expected[-6:], seconds)

    def test_one_step_of_skew_and_each_step_once(self):
        now = 1_700_000_000.0
        step = totp.step_at(now)
        for offset, accepted in ((-60, False), (-30, True), (0, True), (30, True), (60, False)):
            code = totp.code_at(RFC_SECRET, now + offset)
            self.assertEqual(totp.match(RFC_SECRET, code, now, -1) is not None, accepted, offset)
        code = totp.code_at(RFC_SECRET, now)
        self.assertEqual(totp.match(RFC_SECRET, code, now, step - 1), step)
        self.assertIsNone(totp.match(RFC_SECRET, code, now, step), "a code for a step already taken")
        self.assertIsNone(totp.match(RFC_SECRET, code, now + 29.9 + 60, -1), "two steps later")

    @given(st.text(max_size=12))
    def test_any_text_is_a_step_or_none(self, code):
        result = totp.match(RFC_SECRET, code, 1_700_000_000.0, -1)
        self.assertTrue(result is None or code.strip() == totp.code_at(RFC_SECRET, result * totp.PERIOD))

    def test_secrets_and_their_uri(self):
        secret = totp.new_secret()
        self.assertEqual((len(secret), len(base64.b32decode(secret + "=" * (-len(secret) % 8)))), (32, 20))
        self.assertNotEqual(secret, totp.new_secret())
        self.assertEqual(totp.provisioning_uri("JBSWY3DPEHPK3PXP", "alice", "example"),
                         "otpauth://totp/example%3Aalice?secret=JBSWY3DPEHPK3PXP&issuer=example"
                         "&algorithm=SHA1&digits=6&period=30")

    def test_config(self):
        def config(second_factor):
            return parse_config("version: v3\nteleport: {data_dir: /tmp/x}\nauth_service:\n  cluster_name: example\n"
                                f"  authentication: {{second_factor: {second_factor}}}\n")
        self.assertEqual(config("otp").auth.second_factor, "otp")
        self.assertEqual(config("off").auth.second_factor, "off")
        for wrong in ("webauthn", "on"):
            with self.assertRaises(ConfigError) as caught:
                config(wrong)
            self.assertIn("auth_service.authentication.second_factor", str(caught.exception))


class AuthOtpTests(TestCase):
    async def setUp(self):
        self.clock = ShiftedClock(reactor)
        self.backend = MemoryBackend(self.clock)
        self.addCleanup(self.backend.close)
        self.auth = await AuthServer.initialize(self.clock, self.backend, "example", second_factor="otp")

    async def invite(self, name="alice"):
        created = await self.auth.users.create(ADMIN, parse_yaml(
            f"kind: user\nversion: v2\nmetadata: {{name: {name}}}\nspec: {{roles: [access]}}\n")[0])
        return created["token"]

    async def sign_up(self, name="alice"):
        token = await self.invite(name)
        secret = (await self.auth.users.signup_user(PROXY, token))["otp_secret"]
        await self.auth.users.complete_signup(PROXY, token, PASSWORD, totp.code_at(secret, self.clock.seconds()))
        return secret

    def login(self, code, name="alice", password=PASSWORD):
        return self.auth.user_certificates.login(PROXY, name, password, public_pem(), otp_code=code,
                                                 client_addr="192.0.2.1")

    async def test_sign_up_registers_the_device_with_its_first_code(self):
        token = await self.invite()
        shown = await self.auth.users.signup_user(PROXY, token)
        self.assertEqual(shown["user"], "alice")
        self.assertTrue(shown["otp_uri"].startswith("otpauth://totp/example%3Aalice?secret=" + shown["otp_secret"]))
        with self.assertRaises(BadParameter) as caught:
            await self.auth.users.complete_signup(PROXY, token, PASSWORD)
        self.assertIn("requires an OTP device", caught.exception.message)
        wrong = totp.code_at(shown["otp_secret"], self.clock.seconds() + 300)
        with self.assertRaises(BadParameter) as caught:
            await self.auth.users.complete_signup(PROXY, token, PASSWORD, wrong)
        self.assertIn("not the one your authenticator shows", caught.exception.message)
        # Neither used the token up; the right code does, once.
        code = totp.code_at(shown["otp_secret"], self.clock.seconds())
        self.assertEqual(await self.auth.users.complete_signup(PROXY, token, PASSWORD, code), "alice")
        with self.assertRaises(NotFound):
            await self.auth.users.complete_signup(PROXY, token, PASSWORD, code)
        # The secret is kept for the user only, never in the audit log.
        events = await self.auth.audit.search(*self._day(), (), 100)
        self.assertNotIn(shown["otp_secret"], repr(events))

    def _day(self):
        from datetime import datetime, timedelta, timezone
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        return now - timedelta(days=1), now + timedelta(days=1)

    async def test_login_takes_each_code_once(self):
        secret = await self.sign_up()
        denied = "invalid username, password or OTP code"
        for code in ("", "000000x", totp.code_at(secret, self.clock.seconds() + 120)):
            with self.assertRaises(AccessDenied) as caught:
                await self.login(code)
            self.assertEqual(caught.exception.message, denied)
        # The sign-up's code was taken: the next step's code logs in, once.
        self.clock.offset += totp.PERIOD
        code = totp.code_at(secret, self.clock.seconds())
        self.assertIn("cert", await self.login(code))
        with self.assertRaises(AccessDenied):
            await self.login(code)
        # A right code with a wrong password is refused the same way.
        self.clock.offset += totp.PERIOD
        with self.assertRaises(AccessDenied) as caught:
            await self.login(totp.code_at(secret, self.clock.seconds()), password="wrong password")
        self.assertEqual(caught.exception.message, denied)
        events = await self.auth.audit.search(*self._day(), ["user.login"], 100)
        self.assertEqual([e["success"] for e in events], [False, False, False, True, False, False])
        self.assertNotIn(secret, repr(events))

    async def test_wrong_codes_count_as_failed_logins(self):
        secret = await self.sign_up()
        for _ in range(5):
            with self.assertRaises(AccessDenied):
                await self.login("123456" if totp.code_at(secret, self.clock.seconds()) != "123456" else "654321")
        self.clock.offset += totp.PERIOD
        with self.assertRaises(LimitExceeded):
            await self.login(totp.code_at(secret, self.clock.seconds()))

    async def test_reset_forgets_the_device(self):
        old = await self.sign_up()
        token = (await self.auth.users.reset(ADMIN, "alice"))["token"]
        self.clock.offset += totp.PERIOD
        with self.assertRaises(AccessDenied):
            await self.login(totp.code_at(old, self.clock.seconds()))
        new = (await self.auth.users.signup_user(PROXY, token))["otp_secret"]
        self.assertNotEqual(new, old)
        await self.auth.users.complete_signup(PROXY, token, PASSWORD, totp.code_at(new, self.clock.seconds()))
        self.clock.offset += totp.PERIOD
        self.assertIn("cert", await self.login(totp.code_at(new, self.clock.seconds())))
