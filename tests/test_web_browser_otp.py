"""The OTP second factor end to end: auth+proxy as a twistd process with
``auth_service.authentication.second_factor: otp``, real tsh and tctl, and
headless chromium (selenium) for the invitation and sign-in pages.

``tctl users add`` invites alice; ``tsh signup`` is refused with a pointer to
the invitation page; in the browser the page shows the OTP secret (as text, as its
otpauth:// URI and as that URI's QR code, drawn in the page), refuses a
wrong code (showing the secret again) and registers the device with the
right one; ``tsh login`` asks for a code after the password and refuses one
used already and a missing one; the web sign-in page asks for the code too,
refuses a wrong one and signs in with the next. Codes are computed from the
secret the page showed, as an authenticator app would.
"""
from __future__ import annotations

import os
import re
import time

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from teleport_py.auth import totp
from tests.e2e import PASSWORD, Deployment, coroutine_test
from tests.support.browser import browser_binaries, start_browser


def next_step_code(secret: str, after_step: int) -> str:
    """A code for a step after ``after_step`` that Auth accepts now (one
    step of skew), waiting for the clock when it must."""
    while totp.step_at(time.time()) + 1 <= after_step:
        time.sleep(1)
    return totp.code_at(secret, (after_step + 1) * totp.PERIOD)


class OtpEndToEndTests(TestCase):
    timeout = 300

    @coroutine_test
    async def test_register_on_the_invitation_page_then_tsh_and_web_sign_in_ask_for_codes(self):
        browser_binaries()
        d = Deployment(self, self.mktemp())
        d.auth_settings = "  authentication: {second_factor: otp}\n"
        await d.start_auth_and_proxy()
        out = (await d.tctl("users", "add", "alice", "--roles=access")).out
        token = re.search(r"/web/invite/([0-9a-f]+)", out).group(1)
        refused = await d.tsh("signup", f"--proxy={d.proxy}", "--insecure", token,
                              stdin=PASSWORD.encode() + b"\n", expect=1)
        self.assertIn("requires an OTP device: open the invitation link in a browser", refused.err)
        self.assertNotIn("Traceback", refused.err)

        shots = os.environ.get("TELEPORT_PY_SCREENSHOTS") or os.path.abspath(self.mktemp())
        os.makedirs(shots, exist_ok=True)
        browser = start_browser(self)
        base = f"https://{d.proxy}"
        try:
            secret, used = await threads.deferToThread(self.register, browser, base, token, shots)
        except BaseException:
            browser.save_screenshot(os.path.join(shots, "failure-otp.png"))
            raise

        # tsh login: password, then the code; a used code and no code are refused.
        login = ("login", f"--proxy={d.proxy}", "--user=alice", "--insecure")
        code = await threads.deferToThread(next_step_code, secret, used)
        await d.tsh(*login, stdin=f"{PASSWORD}\n{code}\n".encode())
        self.assertIn("alice", (await d.tsh("status")).out)
        again = await d.tsh(*login, stdin=f"{PASSWORD}\n{code}\n".encode(), expect=1)
        self.assertIn("invalid username, password or OTP code", again.err)
        missing = await d.tsh(*login, stdin=f"{PASSWORD}\n".encode(), expect=1)
        self.assertIn("asks for an OTP code", missing.err)
        self.assertNotIn("Traceback", again.err + missing.err)

        try:
            await threads.deferToThread(self.sign_in, browser, base, secret, used + 1, shots)
        except BaseException:
            browser.save_screenshot(os.path.join(shots, "failure-otp.png"))
            raise
        events = await d.events("user.login")
        self.assertEqual([e["success"] for e in events if e.get("user") == "alice"], [True, False, False, True])
        for path in (d.path("teleport-1.log"),):
            with open(path) as f:
                self.assertNotIn(secret, f.read(), "the OTP secret reached the log")

    # -- the browser parts: selenium blocks, so they run on threads --------------------

    def register(self, browser, base, token, shots):
        """The invitation page: a wrong code, then the right one. Returns the
        secret and the step the sign-up took."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))

        def shown(selector, text):
            """Once the page the form posted to is loaded: the element holding ``text``."""
            return wait.until(lambda b: next((e for e in b.find_elements(By.CSS_SELECTOR, selector) if text in e.text), None))

        def fill(code):
            browser.find_element(By.NAME, "password").send_keys(PASSWORD)
            browser.find_element(By.NAME, "password_confirm").send_keys(PASSWORD)
            browser.find_element(By.NAME, "otp").send_keys(code)

        browser.get(f"{base}/web/invite/{token}")
        cache = browser.execute_async_script(
            "const done = arguments[0]; fetch(location.href).then((r) => done(r.headers.get('cache-control')))")
        self.assertEqual(cache, "no-store")
        secret = browser.find_element(By.ID, "otp-secret").text.replace(" ", "")
        self.assertIn(f"secret={secret}", browser.find_element(By.ID, "otp-uri").text)
        self.qr_code_drawn(browser, wait, By)
        browser.save_screenshot(os.path.join(shots, "web-ui-invite-otp.png"))
        fill(totp.code_at(secret, time.time() + 600))
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        shown("[role=alert]", "not the one your authenticator shows")
        self.assertEqual(browser.find_element(By.ID, "otp-secret").text.replace(" ", ""), secret)
        now = time.time()
        fill(totp.code_at(secret, now))
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        shown("body", "is ready")
        return secret, totp.step_at(now)

    def qr_code_drawn(self, browser, wait, By):
        """The otpauth:// URI is also drawn as a QR code: an SVG of a whole
        QR symbol (17 + 4 x version modules, and the 4-module margin on each
        side), 200 px square, with no console error (a CSP violation would show)."""
        holder = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#otp-qr[data-rendered=svg]"))
        uri = browser.find_element(By.ID, "otp-uri").text
        self.assertEqual(holder.get_attribute("data-uri"), uri)
        width, height, view_box = browser.execute_script(
            "const s = document.querySelector('#otp-qr svg'); const r = s.getBoundingClientRect();"
            "return [r.width, r.height, s.getAttribute('viewBox')]")
        self.assertEqual((width, height), (200, 200))
        x, y, w, h = (int(n) for n in view_box.split())
        self.assertEqual((x, y, w), (0, 0, h))
        version, rest = divmod(w - 8 - 17, 4)
        self.assertEqual(rest, 0, view_box)
        self.assertTrue(2 <= version <= 40, view_box)  # an otpauth URI needs more than version 1's 14 bytes
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        self.assertEqual(errors, [], "console errors on the invitation page")

    def sign_in(self, browser, base, secret, used, shots):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(browser, 30)

        def attempt(code):
            browser.get(f"{base}/web/login")
            wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#login[data-second-factor=otp] input[name=otp]")))
            browser.find_element(By.CSS_SELECTOR, "#login input[name=user]").send_keys("alice")
            browser.find_element(By.CSS_SELECTOR, "#login input[name=password]").send_keys(PASSWORD)
            browser.find_element(By.CSS_SELECTOR, "#login input[name=otp]").send_keys(code)
            browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()

        attempt("000000" if totp.code_at(secret, time.time()) != "000000" else "111111")
        wait.until(ec.text_to_be_present_in_element((By.ID, "login-error"), "Wrong user name, password or OTP code."))
        self.assertIsNone(browser.get_cookie("__Host-session"))
        browser.save_screenshot(os.path.join(shots, "web-ui-login-otp.png"))
        attempt(next_step_code(secret, used))
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "main h1"), "Kubernetes clusters"))
        self.assertEqual(browser.find_element(By.ID, "who").text, "alice")
