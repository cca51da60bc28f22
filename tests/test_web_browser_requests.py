"""Access requests reviewed in the web UI, in a real browser (headless
chromium through selenium) against the real chain: auth+proxy and an agent as
twistd processes, real tsh and kubectl, a real kube-apiserver.

alice (role ``requester``, no kube access) runs ``tsh request create``, which
waits for the decision. In the browser: alice's own page lists her PENDING
request without review buttons; bob (``reviewer``) sees it pending with its
reason, a forged review POST without the CSRF token is refused and changes
nothing, bob approves with a reason; then alice's tsh reports APPROVED and her
kubectl works. Screenshots go to ``$TELEPORT_PY_SCREENSHOTS`` (default: the
test's temp directory).
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta, timezone

from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.e2e import PASSWORD, Deployment, coroutine_test
from tests.support.browser import browser_binaries, start_browser
from tests.support.request_roles import REVIEWER_ROLE, requester_role
from tests.support.seed import KUBE_ACCESS_ROLE

REASON = "incident 42: restart the web pods"
APPROVAL = "approved in the web UI: go ahead"
#: fetch() with a JSON body: what a forged cross-site-request would carry, minus the token.
FETCH_JSON = """
const [method, path, headers, body, done] = arguments;
fetch(path, {method, headers, body: JSON.stringify(body), credentials: 'same-origin'})
  .then(async (r) => done({status: r.status, body: await r.text()}))
  .catch((e) => done({status: -1, body: String(e)}));
"""


def rfc3339(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


class WebAccessRequestBrowserTests(TestCase):
    timeout = 600

    @coroutine_test
    async def test_review_a_tsh_request_in_the_browser(self):
        browser_binaries()  # before minutes of set-up: fails at once under CI=true
        d = await Deployment(self, self.mktemp()).start()
        for name, text in (("kube-access", KUBE_ACCESS_ROLE), ("requester", requester_role()),
                           ("reviewer", REVIEWER_ROLE)):
            await d.tctl("create", "-f", d.write(f"{name}.yaml", text))
        await d.add_user("alice", "requester")
        await d.add_user("bob", "reviewer")
        await d.add_user("erin", "editor")
        await d.login("alice")
        refused = await d.tsh("kube", "login", "my-cluster", expect=1)
        self.assertIn("not found", refused.err)

        waiting = Deferred.fromCoroutine(d.tsh("request", "create", "--roles=kube-access", f"--reason={REASON}",
                                               timeout=300))
        listed = ""
        for _ in range(120):
            listed = (await d.tsh("request", "ls")).out
            found = re.findall(r"^(\S+)\s+alice\s+kube-access\s+\S+\s+PENDING", listed, re.MULTILINE)
            if found:
                break
            await self.sleep(0.5)
        else:
            raise AssertionError(f"alice's request never listed:\n{listed}")
        [request_id] = found

        shots = os.environ.get("TELEPORT_PY_SCREENSHOTS") or os.path.abspath(self.mktemp())
        os.makedirs(shots, exist_ok=True)
        browser = start_browser(self)
        try:
            await threads.deferToThread(self.in_browser, browser, f"https://{d.proxy}", request_id, shots)
        except BaseException:
            browser.save_screenshot(os.path.join(shots, "failure-requests.png"))
            with open(os.path.join(shots, "failure-requests.html"), "w") as f:
                f.write(browser.page_source)
            raise

        # alice's waiting tsh got the decision and reissued her certificates.
        result = await waiting
        self.assertEqual(result.code, 0, result.out + result.err)
        self.assertIn(f"Approved: {APPROVAL}", result.out)
        self.assertRegex((await d.tsh("request", "ls")).out,
                         rf"{request_id}\s+alice\s+kube-access\s+\S+\s+APPROVED")
        self.assertIn(request_id, (await d.tsh("status")).out)
        await d.wait_for_clusters({"my-cluster"})
        await d.tsh("kube", "login", "my-cluster")
        pods = await d.kubectl("get", "pods", "-n", "default")
        self.assertEqual(pods.code, 0, pods.err)
        events = await d.wait_for_events("access_request.review", until=lambda evs: any(
            e.get("id") == request_id for e in evs))
        [review] = [e for e in events if e.get("id") == request_id]
        self.assertEqual((review["user"], review["reason"], review["state"]), ("bob", APPROVAL, "APPROVED"))

        # erin pages through the audit log up to now, 5 events a page (paged in
        # Auth by cursor): every event of tctl events once, in order; Previous
        # returns to exactly the page before.
        until = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
        since = until - timedelta(hours=1)
        pages = await threads.deferToThread(self.audit_pages, browser, f"https://{d.proxy}", since, until)
        logged = json.loads((await d.tctl("events", "--format=json", f"--from={rfc3339(since)}",
                                          f"--to={rfc3339(until)}")).out)
        self.assertGreater(len(pages), 2, pages)
        self.assertEqual([uid for page in pages for uid in page], [e["uid"] for e in logged])

    def audit_pages(self, browser, base, since, until):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(browser, 30)
        shown = "return [...document.querySelectorAll('#events tbody tr')].map((r) => r.dataset.uid)"
        browser.find_element(By.ID, "logout").click()
        wait.until(lambda b: b.find_elements(By.ID, "login"))
        self.sign_in(browser, base, "erin")
        browser.get(f"{base}/web/audit?from={rfc3339(since)}&to={rfc3339(until)}&page_size=5")
        pages = [wait.until(lambda b: b.execute_script(shown))]
        while browser.find_elements(By.ID, "next-page"):
            browser.find_element(By.ID, "next-page").click()
            pages.append(wait.until(lambda b: (rows := b.execute_script(shown)) and rows != pages[-1] and rows))
            self.assertLess(len(pages), 200)
        browser.find_element(By.ID, "previous-page").click()
        wait.until(lambda b: b.execute_script(shown) == pages[-2])
        return pages

    async def sleep(self, seconds: float) -> None:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, seconds, lambda: None)

    # -- the browser part: selenium blocks, so it runs on a thread -------------------

    def sign_in(self, browser, base, user):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(browser, 30)
        browser.get(f"{base}/web/login")
        wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#login input[name=user]"))).send_keys(user)
        browser.find_element(By.CSS_SELECTOR, "#login input[name=password]").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "main h1"), "Kubernetes clusters"))

    def in_browser(self, browser, base, request_id, shots):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(browser, 30)
        browser.set_script_timeout(30)
        row_of = f"#requests tr[data-request='{request_id}']"

        def find(selector):
            return wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, selector)))

        def sign_in(user):
            self.sign_in(browser, base, user)

        def shot(name):
            browser.save_screenshot(os.path.join(shots, f"web-ui-{name}.png"))

        # alice sees her own request pending, and nothing to review it with.
        sign_in("alice")
        find("a[data-nav=requests]").click()
        row = find(f"{row_of}[data-state='PENDING']")
        self.assertIn(REASON, row.text)
        self.assertIn("your request: others review it", row.text)
        self.assertEqual(row.find_elements(By.CSS_SELECTOR, "button"), [])
        self.assertEqual(browser.find_elements(By.CSS_SELECTOR, "#requests button.approve, #requests button.deny"), [])
        find("#logout").click()
        find("#login")

        # bob: the request, pending, with who asked for what and why.
        sign_in("bob")
        browser.get(f"{base}/web/requests")
        row = find(f"{row_of}[data-state='PENDING']")
        for text in ("alice", "roles: kube-access", REASON, "none yet"):
            self.assertIn(text, row.text)
        shot("requests")

        # A forged review (bob's cookie, no CSRF token) is refused and changes nothing.
        answer = browser.execute_async_script(
            FETCH_JSON, "POST", f"/web/api/access_requests/{request_id}/reviews",
            {"Content-Type": "application/json"}, {"state": "APPROVED", "reason": "forged"})
        self.assertEqual(answer["status"], 403, answer)
        self.assertIn("CSRF", json.loads(answer["body"])["error"]["message"])
        browser.refresh()
        row = find(f"{row_of}[data-state='PENDING']")

        # bob approves with a reason.
        row.find_element(By.CSS_SELECTOR, "input[name=reason]").send_keys(APPROVAL)
        row.find_element(By.CSS_SELECTOR, "button.approve").click()
        row = find(f"{row_of}[data-state='APPROVED']")
        self.assertIn(f"bob: APPROVED (“{APPROVAL}”)", row.text)
        self.assertEqual(row.find_elements(By.CSS_SELECTOR, "button"), [])
        self.assertIn("it is now APPROVED", find("#request-notice").text)
        shot("requests-approved")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "403" not in e["message"]
                  and "401" not in e["message"]]
        self.assertEqual(errors, [], "console errors (a CSP violation would show here)")
