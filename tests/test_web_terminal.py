"""Kube exec from the browser (docs/web-ui.md, "Terminal"), in a real headless
chromium against the real chain: auth+proxy and an agent as twistd
processes, a real kube-apiserver and the kubelet stand-in.

alice (``access``, ``kube-sessions``) signs in, picks the cluster, namespace,
pod and container the proxy lists through the agent as her, runs ``sh`` and
types a command whose output shows in the terminal, which fills the window
(the shell's ``stty size`` sees its columns and rows); shrinks the window
(the terminal follows, and the shell sees the new size); exits with status 3 (the page says so).
The agent audited and recorded it as her exec: the audit log holds her
``exec`` and ``session.start``/``session.end`` events and a ``resize`` to
the smaller size, and the recording plays in the UI's player with what she
typed. vic (only ``kube-readers``: get/list/watch, no ``exec``; ``access`` would allow every verb) sees the pods but
his terminal is refused with the agent's message, and no exec reached the
API server (the kubelet stand-in saw no new upgrade). Screenshots go to
``$TELEPORT_PY_SCREENSHOTS`` (default: the test's temp directory).
"""
from __future__ import annotations

import os
import time

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from tests.e2e import PASSWORD, coroutine_test
from tests.support.browser import FLUSH_PLAYER, browser_binaries, start_browser
from tests.support.sessions import SessionsMixin

#: May see (get, list, watch) everything, may not exec.
READERS_ROLE = """\
kind: role
version: v8
metadata:
  name: kube-readers
spec:
  allow:
    kubernetes_labels:
      '*': '*'
    kubernetes_groups: [session-users]
    kubernetes_resources:
      - kind: '*'
        api_group: '*'
        namespace: '*'
        name: '*'
        verbs: [get, list, watch]
"""

#: The namespaces list the picker shows (the shared sessions RBAC has none).
NAMESPACES_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: teleport-test-namespaces}
rules:
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: teleport-test-namespaces}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: teleport-test-namespaces}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: session-users}
"""

SCREEN = "return document.querySelector('#terminal .xterm-rows').innerText"


class WebTerminalTests(SessionsMixin, TestCase):
    timeout = 900

    @coroutine_test
    async def test_exec_from_the_browser(self):
        browser_binaries()  # before minutes of set-up: fails at once under CI=true
        d = await self.deployment()
        await d.plane.apply(NAMESPACES_RBAC)
        await d.tctl("create", "-f", d.write("kube-readers.yaml", READERS_ROLE))
        await d.add_user("vic", "access")
        await d.tctl("users", "update", "vic", "--set-roles=kube-readers")

        shots = os.environ.get("TELEPORT_PY_SCREENSHOTS") or os.path.abspath(self.mktemp())
        os.makedirs(shots, exist_ok=True)
        browser = start_browser(self)
        base = f"https://{d.proxy}"
        try:
            cols, rows = await threads.deferToThread(self.alices_terminal, browser, base, shots)
            # The agent recorded and audited it as alice's exec.
            events = await d.wait_for_events(
                "exec", "session.start", "session.end", "resize",
                until=lambda es: {"exec", "session.start", "session.end"} <= {e["event"] for e in es
                                                                             if e.get("user") == "alice"})
            alices = [e for e in events if e.get("user") == "alice"]
            [execs] = [[e for e in alices if e["event"] == "exec"]]
            self.assertEqual([(e.get("kubernetes_pod_name"), e.get("kubernetes_container_name"), e.get("command"), e.get("exitCode")) for e in execs],
                             [(self.pod, "app", "sh", "3")], execs)
            self.assertIn(f"{cols}:{rows}", [e.get("terminal_size") for e in alices if e["event"] == "resize"], alices)
            deadline = self.reactor.seconds() + 60
            while not [r for r in await self.recordings() if r[4] == "sh" and r[6] == "yes"]:
                self.assertLess(self.reactor.seconds(), deadline, await self.recordings())
                await self.sleep(1)
            [sid] = [r[0] for r in await self.recordings() if r[4] == "sh" and r[6] == "yes"]
            before = len(self.standin.negotiated)
            await threads.deferToThread(self.played_and_refused, browser, base, sid, shots, (cols, rows))
            # vic's refused exec never reached the API server (nor the kubelet behind it).
            self.assertEqual(len(self.standin.negotiated), before, self.standin.negotiated)
            await d.wait_for_events("kube.request", until=lambda es: any(
                e.get("user") == "vic" and e.get("verb") == "exec" and e.get("success") is False for e in es))
        except BaseException:
            browser.save_screenshot(os.path.join(shots, "terminal-failure.png"))
            with open(os.path.join(shots, "terminal-failure.html"), "w") as f:
                f.write(browser.page_source)
            raise

    # -- selenium blocks, so these run on a thread ---------------------------------

    def _helpers(self, browser, base):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(browser, 30)
        browser.set_script_timeout(30)

        def find(selector):
            return wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, selector)))

        def sign_in(user):
            browser.delete_all_cookies()
            browser.get(f"{base}/web/login")
            find("#login input[name=user]").send_keys(user)
            find("#login input[name=password]").send_keys(PASSWORD)
            find("#login button[type=submit]").click()
            find("#clusters")

        return wait, find, sign_in, By

    def _pick(self, browser, find, wait, By):
        from selenium.webdriver.support.ui import Select

        def options(name):
            find(f"#pick-{name}")
            return browser.execute_script(
                "return [...document.querySelectorAll(arguments[0])].map((o) => o.value)", f"#pick-{name} option")

        # From the clusters page: its Terminal link names the cluster.
        find("#clusters tr[data-cluster='my-cluster'] a.terminal").click()
        wait.until(lambda b: "my-cluster" in options("cluster"))
        self.assertEqual(find("#pick-cluster").get_attribute("value"), "my-cluster")
        wait.until(lambda b: "default" in options("namespace"))
        Select(find("#pick-namespace")).select_by_value("default")
        wait.until(lambda b: self.pod in options("pod"))
        Select(find("#pick-pod")).select_by_value(self.pod)
        wait.until(lambda b: options("container") == ["app"])

    def alices_terminal(self, browser, base, shots):
        wait, find, sign_in, By = self._helpers(browser, base)
        sign_in("alice")
        self._pick(browser, find, wait, By)
        self.assertEqual(find("#pick-command").get_attribute("value"), "sh")
        find("#connect").click()
        wait.until(lambda b: find("#terminal-state").get_attribute("data-state") == "open")
        from selenium.webdriver.common.action_chains import ActionChains

        find("#terminal .xterm-screen").click()  # focus: keys go to xterm.js's own input

        def type_keys(text):
            ActionChains(browser).send_keys(text).perform()

        def typed(text, expect):
            type_keys(text)
            deadline = time.monotonic() + 30
            while expect not in browser.execute_script(SCREEN):
                self.assertLess(time.monotonic(), deadline, browser.execute_script(SCREEN))
                time.sleep(0.1)

        typed("echo web-$((6*7))\n", "web-42")
        # The terminal fills the window and the shell sees its size; a
        # smaller window gives fewer columns and rows, and the shell sees those.
        large = self._fills_the_window(browser)
        typed("stty size\n", f"{large[1]} {large[0]}")
        browser.set_window_size(1000, 700)
        wait.until(lambda b: self._size(b) != large)
        small = self._fills_the_window(browser)
        self.assertLess(small[0], large[0])
        self.assertLess(small[1], large[1])
        find("#terminal .xterm-screen").click()
        typed("stty size\n", f"{small[1]} {small[0]}")
        browser.save_screenshot(os.path.join(shots, "web-ui-terminal.png"))
        type_keys("exit 3\n")
        wait.until(lambda b: find("#terminal-state").get_attribute("data-state") == "exited")
        self.assertIn("exited with status 3", find("#terminal-state").text)
        browser.set_window_size(1280, 900)
        return small

    @staticmethod
    def _size(browser):
        return tuple(browser.execute_script("return [window.teleportTerminal.cols, window.teleportTerminal.rows]"))

    def _fills_the_window(self, browser):
        """The terminal's (columns, rows), once it fits the window: inside it,
        with less than a cell (and the page's margins) left over to the right."""
        cols, rows = self._size(browser)
        right, bottom, width, inner_width, inner_height = browser.execute_script(
            "const r = document.querySelector('#terminal .xterm-screen').getBoundingClientRect();"
            "return [r.right, r.bottom, r.width, window.innerWidth, window.innerHeight]")
        self.assertLessEqual(right, inner_width)
        self.assertLessEqual(bottom, inner_height)
        self.assertLess(inner_width - right, width / cols + 64, (cols, rows, right, inner_width))
        return cols, rows

    def played_and_refused(self, browser, base, sid, shots, size):
        wait, find, sign_in, By = self._helpers(browser, base)
        # alice's web exec plays in the UI's player.
        browser.get(f"{base}/web/recordings/{sid}")
        find("#terminal .xterm-rows")
        browser.execute_script(
            "const s = document.getElementById('seek'); s.value = s.max; s.dispatchEvent(new Event('input'));")
        screen = browser.execute_async_script(FLUSH_PLAYER)
        self.assertIn("web-42", screen)
        self.assertIn(f"{size[1]} {size[0]}", screen)
        self.assertEqual(find("#size").get_attribute("data-size"), f"{size[0]}x{size[1]}")

        # vic may list the pods, but not exec: the agent's refusal, in the page.
        sign_in("vic")
        self._pick(browser, find, wait, By)
        find("#connect").click()
        wait.until(lambda b: find("#terminal-state").get_attribute("data-state") == "refused")
        error = find("#terminal-error")
        self.assertEqual(error.get_attribute("data-code"), "403")
        self.assertIn("exec", error.text)
        browser.save_screenshot(os.path.join(shots, "web-ui-terminal-refused.png"))
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "403" not in e["message"]
                  and "401" not in e["message"]]
        self.assertEqual(errors, [], "console errors (a CSP violation would show here)")
