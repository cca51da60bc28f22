"""The web UI in a real browser (headless chromium through selenium) against
the real chain: auth+proxy and an agent as twistd processes, a real
kube-apiserver, kubectl and the kubelet stand-in.

alice runs a real ``kubectl exec -it`` session (terminal resized to 111x33,
two outputs three seconds apart); bob runs a non-interactive exec and a
port-forward (each shown in the player as what it is); erin
(``editor`` and ``kube-access``) reviews. In the browser: a wrong password; erin signs
in, sees the cluster, filters the audit log to alice's exec events, opens the
recording and plays it at 4x: each output appears in order and never before
its recorded time; seeking shows exactly what was on screen by then; the
asciicast download parses and equals ``tsh play --format=asciicast``; the
session cookie's flags; a POST without the CSRF token is refused; bob, who may
not read alice's recording, gets a 403 page. Screenshots of each page go to
``$TELEPORT_PY_SCREENSHOTS`` (default: the test's temp directory).
"""
from __future__ import annotations

import json
import os
import time

from twisted.internet import threads
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.protocols.wire import Echo
from twisted.trial.unittest import TestCase

from tests.e2e import PASSWORD, coroutine_test
from tests.support.clients import Collect
from tests.support.procs import free_port
from tests.support.browser import FLUSH_PLAYER as FLUSH_TERMINAL, browser_binaries, start_browser
from tests.support.kubeenv import kubectl_binaries
from tests.support.sessions import SessionsMixin

SPEED = 4
#: Seconds between the two outputs of alice's session.
GAP = 3.0

FETCH = """
const [method, path, headers, done] = arguments;
fetch(path, {method, headers, credentials: 'same-origin'})
  .then(async (r) => done({status: r.status, body: await r.text()}))
  .catch((e) => done({status: -1, body: String(e)}));
"""


def parse_cast(text: str):
    lines = [json.loads(line) for line in text[:-1].split("\n")]
    return lines[0], lines[1:]


class WebBrowserTests(SessionsMixin, TestCase):
    timeout = 900
    maxDiff = None

    @coroutine_test
    async def test_review_a_real_session_in_the_browser(self):
        browser_binaries()  # before minutes of set-up: fails at once under CI=true
        d = await self.deployment()
        binary = kubectl_binaries()[0]
        await d.add_user("bob", "access")
        await d.tctl("users", "update", "bob", "--set-roles=access,kube-sessions")
        await d.add_user("erin", "editor")
        await d.tctl("users", "update", "erin", "--set-roles=editor,kube-access")

        # alice's interactive session, through the real chain.
        terminal, transport = await self.sized_terminal(binary, 33, 111, "sh")
        await self.typed(terminal, transport, b"echo first-$((1+1))\n", b"first-2")
        await self.sleep(GAP)
        await self.typed(terminal, transport, b"echo second-$((2+2))\n", b"second-4")
        transport.write(b"exit 0\n")
        self.assertEqual(await terminal.ended, 0)
        deadline = self.reactor.seconds() + 60
        while not [r for r in await self.recordings() if r[4] == "sh" and r[6] == "yes"]:
            self.assertLess(self.reactor.seconds(), deadline, await self.recordings())
            await self.sleep(1)
        [sid] = [r[0] for r in await self.recordings() if r[4] == "sh" and r[6] == "yes"]
        tsh_cast = (await d.tsh("play", sid, "--format=asciicast")).out

        # bob's non-interactive exec (in the audit log, not in alice's filter) and port-forward.
        await d.login("bob")
        await d.tsh("kube", "login", "my-cluster")
        await self.kubectl(binary, "exec", self.pod, "--", "echo", "from-bob")
        echo = await TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Echo))
        self.addCleanup(echo.stopListening)
        remote, port = echo.getHost().port, free_port()
        forwarder = d.spawn("port-forward", [binary, "port-forward", f"pod/{self.pod}", f"{port}:{remote}"], env=self.env())
        await forwarder.wait_for_output("Forwarding from", 60)
        client = Collect(b"ping")
        await connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", port), client)
        self.assertEqual(await client.done, b"ping")
        await forwarder.stop()
        await d.wait_for_events("exec", until=lambda events: {"alice", "bob"} <= {e.get("user") for e in events})
        deadline = self.reactor.seconds() + 60
        while True:
            rows = {r[2]: r[0] for r in await self.recordings() if r[6] == "yes"}
            if {"exec", "portforward"} <= set(rows):
                break
            self.assertLess(self.reactor.seconds(), deadline, await self.recordings())
            await self.sleep(1)
        bobs = {"exec": rows["exec"], "portforward": rows["portforward"], "port": remote}

        shots = os.environ.get("TELEPORT_PY_SCREENSHOTS") or os.path.abspath(self.mktemp())
        os.makedirs(shots, exist_ok=True)
        browser = start_browser(self)
        try:
            await threads.deferToThread(self.in_browser, browser, f"https://{d.proxy}", sid, tsh_cast, bobs, shots)
        except BaseException:
            browser.save_screenshot(os.path.join(shots, "failure.png"))
            with open(os.path.join(shots, "failure.html"), "w") as f:
                f.write(browser.page_source)
            raise

    # -- the browser part: selenium blocks, so it runs on a thread -------------------

    def in_browser(self, browser, base, sid, tsh_cast, bobs, shots):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import Select, WebDriverWait

        wait = WebDriverWait(browser, 30)
        browser.set_script_timeout(30)

        def find(selector):
            return wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, selector)))

        def sign_in(user, password=PASSWORD):
            browser.get(f"{base}/web/login")
            find("#login input[name=user]").send_keys(user)
            find("#login input[name=password]").send_keys(password)
            find("#login button[type=submit]").click()

        def shot(name):
            browser.save_screenshot(os.path.join(shots, f"web-ui-{name}.png"))

        def fetch(method, path, headers=None):
            return browser.execute_async_script(FETCH, method, path, headers or {})

        # A wrong password: a clear message, no session.
        sign_in("erin", "not the password")
        wait.until(ec.text_to_be_present_in_element((By.ID, "login-error"), "Wrong user name or password."))
        self.assertIsNone(browser.get_cookie("__Host-session"))
        shot("login")

        # erin signs in: the clusters page.
        sign_in("erin")
        row = find("#clusters tr[data-cluster='my-cluster']")
        self.assertIn("tsh kube login my-cluster", row.text)
        self.assertIn("env=prod", row.text)
        shot("clusters")

        # The cookie: HttpOnly, Secure, SameSite=Strict, invisible to scripts.
        cookie = browser.get_cookie("__Host-session")
        self.assertEqual((cookie["httpOnly"], cookie["secure"], cookie["sameSite"], cookie["path"]),
                         (True, True, "Strict", "/"))
        self.assertNotIn("__Host-session", browser.execute_script("return document.cookie"))
        # A state-changing call without the CSRF token is refused; the session stays.
        answer = fetch("POST", "/web/api/logout", {"Content-Type": "application/json"})
        self.assertEqual(answer["status"], 403, answer)
        self.assertIn("CSRF", answer["body"])
        self.assertEqual(fetch("GET", "/web/api/session")["status"], 200)

        # The audit log, filtered to alice's exec events; one event's detail.
        find("a[data-nav=audit]").click()
        form = find("#audit-filters")
        form.find_element(By.NAME, "type").send_keys("exec")
        form.find_element(By.NAME, "user").send_keys("alice")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        # The table of this search (not the one before it) says what it was filtered by.
        rows = wait.until(lambda b: b.find_elements(
            By.CSS_SELECTOR, "#events[data-user-filter='alice'][data-type-filter='exec'] tbody tr"))
        self.assertTrue(rows)
        self.assertEqual({(r.get_attribute("data-event"), r.get_attribute("data-user")) for r in rows},
                         {("exec", "alice")})
        rows[0].click()
        detail = json.loads(find("#event-detail").text)
        self.assertEqual((detail["event"], detail["user"]), ("exec", "alice"))
        shot("audit")
        browser.get(f"{base}/web/audit?type=exec")
        users = {r.get_attribute("data-user") for r in wait.until(
            lambda b: b.find_elements(By.CSS_SELECTOR, "#events tbody tr"))}
        self.assertEqual(users, {"alice", "bob"})

        # A page still loading when the user moves on does not draw over the
        # page they moved to: the audit log's answer is held back 2 s and the
        # user goes on to the clusters page meanwhile.
        browser.execute_script("""
            const original = window.fetch;
            window.fetch = (url, options) => String(url).includes("/web/api/events")
                ? new Promise((resolve) => setTimeout(resolve, 2000)).then(() => original(url, options))
                : original(url, options);""")
        find("a[data-nav=audit]").click()
        find("a[data-nav=clusters]").click()
        find("#clusters tr[data-cluster='my-cluster']")
        time.sleep(3)
        self.assertEqual(browser.find_element(By.CSS_SELECTOR, "#main h1").text, "Kubernetes clusters")
        self.assertEqual(browser.find_elements(By.ID, "events"), [])

        # Session recordings, then alice's in the player.
        find("a[data-nav=recordings]").click()
        row = find(f"#recordings tr[data-session='{sid}']")
        self.assertIn("alice", row.text)
        self.assertIn("exec (interactive)", row.text)
        shot("recordings")
        row.find_element(By.CSS_SELECTOR, "a.play").click()
        find("#terminal .xterm-rows")
        # The recorded size: the header's, then each "r" event. kubectl sends
        # the terminal's size right after the streams open, and the shell's
        # prompt may be recorded before it (then the header is asciinema's
        # 80x24 and a resize to 111x33 follows, as it happened).
        header, events = parse_cast(tsh_cast)
        recorded = f"{header['width']}x{header['height']}"
        wait.until(lambda b: find("#size").get_attribute("data-size") == recorded)
        first = next(t for t, kind, data in events if kind == "o" and "first-2" in data)
        sizes = [recorded] + [data for t, kind, data in events if kind == "r" and t <= first]
        self.assertEqual(sizes[-1], "111x33", f"the size in effect at the first output: {sizes}")
        second = next(t for t, kind, data in events if kind == "o" and "second-4" in data)
        self.assertGreaterEqual(second - first, GAP)

        # Play at 4x: in order, and never before the recorded time.
        Select(find("#speed")).select_by_value(str(SPEED))
        started = time.monotonic()
        find("#play").click()
        seen: dict[str, float] = {}
        both_apart = False
        deadline = time.monotonic() + 60 + second / SPEED
        while len(seen) < 2:
            text, position = browser.execute_script(
                "return [document.querySelector('.xterm-rows').innerText, window.teleportPlayer.position]")
            elapsed = time.monotonic() - started
            for word, at in (("first-2", first), ("second-4", second)):
                if word in text and word not in seen:
                    seen[word] = elapsed
                    self.assertGreaterEqual(position, at, f"{word} shown at {position} s of the recording, recorded at {at}")
                    self.assertGreaterEqual(elapsed * SPEED, at - 0.05, f"{word} shown after {elapsed} s at {SPEED}x")
            both_apart = both_apart or ("first-2" in text and "second-4" not in text)
            self.assertLess(time.monotonic(), deadline, f"playback never showed both outputs: {text!r}")
            time.sleep(0.02)
        self.assertTrue(both_apart, "the first output was never on screen without the second")
        self.assertLess(seen["first-2"], seen["second-4"])
        wait.until(lambda b: find("#play").get_attribute("data-state") == "paused")  # ran to its end
        self.assertEqual(find("#size").get_attribute("data-size"), "111x33")
        shot("player")

        # Seek: exactly what was on screen by then.
        def seek(seconds):
            browser.execute_script(
                "const s = document.getElementById('seek'); s.value = String(arguments[0]);"
                "s.dispatchEvent(new Event('input'));", round(seconds * 1000))
            return browser.execute_async_script(FLUSH_TERMINAL)

        middle = seek((first + second) / 2)
        self.assertIn("first-2", middle)
        self.assertNotIn("second-4", middle)
        before = seek(first - 0.001)
        self.assertNotIn("first-2", before)
        after = seek(second)
        self.assertLess(after.index("first-2"), after.index("second-4"))

        # bob's non-interactive exec says what it is; its output plays.
        browser.get(f"{base}/web/recordings/{bobs['exec']}")
        self.assertIn("non-interactive", find("#kind-note").text)
        find("#terminal .xterm-rows")
        self.assertIn("from-bob", seek(3600))
        # bob's port-forward: its connection, no terminal.
        browser.get(f"{base}/web/recordings/{bobs['portforward']}")
        listed = find("#port-events").text
        self.assertIn(f"port-forward to port {bobs['port']} opened", listed)
        self.assertIn(f"port-forward to port {bobs['port']} closed (4 bytes in, 4 bytes out)", listed)
        self.assertEqual(browser.find_elements(By.ID, "terminal"), [])
        shot("port-forward")
        browser.get(f"{base}/web/recordings/{sid}")
        find("#terminal .xterm-rows")

        # The asciicast download parses and is what tsh play writes.
        answer = fetch("GET", f"/web/api/recordings/{sid}/asciicast")
        self.assertEqual(answer["status"], 200)
        self.assertEqual(answer["body"], tsh_cast)
        header, events = parse_cast(answer["body"])
        self.assertEqual(header["version"], 2)
        output = "".join(data for _, kind, data in events if kind == "o")
        self.assertLess(output.index("first-2"), output.index("second-4"))

        # Sign out; bob may not read alice's recording: a 403 page.
        find("#logout").click()
        find("#login")
        self.assertEqual(fetch("GET", "/web/api/session")["status"], 401)
        sign_in("bob")
        find("#clusters")
        browser.get(f"{base}/web/recordings/{sid}")
        page = find(".problem[data-status='403']")
        self.assertIn("403 Forbidden", page.text)
        self.assertIn("you may not view recording", page.text)
        shot("forbidden")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "403" not in e["message"]
                  and "401" not in e["message"]]
        self.assertEqual(errors, [], "console errors (a CSP violation would show here)")
