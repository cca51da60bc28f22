"""The web UI's API on a real proxy and Auth, over real TLS: sign-in and its
cookie, CSRF, logout, the security headers, authorization by Auth's role
rules (the pages' data), the asciicast download and the invitation page.
The browser itself is tests.test_web_browser."""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta, timezone

from twisted.trial.unittest import TestCase
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from teleport_py.auth.recordings import Recordings
from teleport_py.pki import HostIdentity, UserIdentity
from teleport_py.recording import asciicast
from teleport_py.recording.format import encode, read_all
from teleport_py.resources import parse_yaml, resource_to_dict
from teleport_py.web.assets import DIST
from teleport_py.web.site import CONTENT_SECURITY_POLICY
from tests.support.proxy_service import PASSWORD, InProcessProxy
from tests.support.auth_callers import ADMIN
from tests.support.recordings import KUBE, SID
from tests.support.request_roles import REVIEWER_ROLE, requester_role

PROXY = HostIdentity(host_id="proxy-test", nodename="test", system_role="proxy", teleport_cluster="example")

RECORDING = (
    encode({"type": "session.start", "ms": 0, "session_id": SID, "user": "alice", "kind": "exec",
            "namespace": "dev", "pod": "web-0", "container": "app", "command": ["sh"], "tty": True,
            "time": "2026-01-01T00:00:00Z", "participants": ["alice"]})
    + encode({"type": "resize", "ms": 1, "width": 100, "height": 30})
    + encode({"type": "print", "ms": 10, "stream": "stdout", "data": b"hello "})
    + encode({"type": "print", "ms": 250, "stream": "stdout", "data": b"world\r\n"})
    + encode({"type": "exit", "ms": 300, "code": 0})
    + encode({"type": "session.end", "ms": 301})
)


class Browser:
    """What a browser keeps between calls: the cookie and the CSRF token."""

    def __init__(self, running: InProcessProxy, port: int | None = None) -> None:
        self.running = running
        #: The proxy it talks to (the first one by default).
        self.port = port
        self.cookie: bytes | None = None
        self.csrf = ""

    async def call(self, method: str, path: str, body=None, *, csrf=None, origin=None, content_type="application/json"):
        headers = Headers()
        if self.cookie:
            headers.addRawHeader(b"cookie", self.cookie)
        if content_type:
            headers.addRawHeader(b"content-type", content_type.encode())
        token = self.csrf if csrf is None else csrf
        if token:
            headers.addRawHeader(b"x-csrf-token", token.encode())
        if origin:
            headers.addRawHeader(b"origin", origin.encode())
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        response = await self.running.http().request(method, self.running.url(path, self.port), data=data,
                                                        headers=headers,
                                                        allow_redirects=False)
        raw = await readBody(response)
        return response, raw

    async def json(self, method, path, body=None, **kw):
        response, raw = await self.call(method, path, body, **kw)
        return response.code, json.loads(raw)

    async def sign_in(self, user: str, password: str = PASSWORD):
        response, raw = await self.call("POST", "/web/api/login", {"user": user, "password": password})
        if response.code == 200:
            cookie = response.headers.getRawHeaders(b"set-cookie")[0]
            self.cookie = cookie.split(b";")[0]
            self.csrf = json.loads(raw)["csrf_token"]
        return response, json.loads(raw)


class WebUITests(TestCase):
    timeout = 60

    async def setUp(self):
        self.running = await InProcessProxy.start(self)
        self.auth = self.running.auth
        for name, roles in (("alice", ("kube-access",)), ("bob", ("kube-access",)), ("erin", ("kube-access", "editor"))):
            token = await self.running.add_user(name, roles)
            await self.auth.users.complete_signup(PROXY, token, PASSWORD)

    async def test_sign_in_sets_a_strict_session_cookie_that_ends_with_the_certificate(self):
        browser = Browser(self.running)
        response, body = await browser.sign_in("alice")
        self.assertEqual(response.code, 200, body)
        cookie = response.headers.getRawHeaders(b"set-cookie")[0].decode()
        self.assertRegex(cookie, r"^__Host-session=[A-Za-z0-9_-]{43}; Path=/; Max-Age=\d+; Secure; HttpOnly; SameSite=Strict$")
        max_age = int(re.search(r"Max-Age=(\d+)", cookie).group(1))
        self.assertTrue(11 * 3600 < max_age <= 12 * 3600, max_age)  # the certificate's 12 h
        self.assertEqual(body["user"], "alice")
        session = await self.running.proxy.web_sessions.get(browser.cookie.split(b"=", 1)[1].decode())
        self.assertIn(b"BEGIN CERTIFICATE", session.certificate_pem)
        code, me = await browser.json("GET", "/web/api/session")
        self.assertEqual((code, me["user"], me["csrf_token"]), (200, "alice", browser.csrf))

    async def test_session_ends_when_its_certificate_would(self):
        browser = Browser(self.running)
        await browser.sign_in("alice")
        sessions = self.running.proxy.web_sessions
        sid = browser.cookie.split(b"=", 1)[1].decode()
        clock = sessions._clock

        class Later:
            def seconds(self):
                return clock.seconds() + 12 * 3600 + 1
        sessions._clock = Later()
        self.addCleanup(setattr, sessions, "_clock", clock)
        self.assertIsNone(await sessions.get(sid))
        code, body = await browser.json("GET", "/web/api/session")
        self.assertEqual((code, body["error"]["kind"]), (401, "unauthenticated"))

    async def test_a_session_from_one_proxy_works_on_another_and_ends_on_both(self):
        """Sessions live in Auth's backend: proxy B honours proxy A's cookie
        and CSRF token; signing out on B ends it on A too."""
        on_a = Browser(self.running)
        await on_a.sign_in("alice")
        on_b = Browser(self.running, await self.running.another_proxy(self))
        on_b.cookie, on_b.csrf = on_a.cookie, on_a.csrf
        code, me = await on_b.json("GET", "/web/api/session")
        self.assertEqual((code, me["user"], me["csrf_token"]), (200, "alice", on_a.csrf))
        code, body = await on_b.json("POST", "/web/api/logout", {}, csrf="wrong")
        self.assertEqual(code, 403, body)
        code, _ = await on_b.json("POST", "/web/api/logout", {})
        self.assertEqual(code, 200)
        code, body = await on_a.json("GET", "/web/api/session")
        self.assertEqual((code, body["error"]["kind"]), (401, "unauthenticated"))

    async def test_wrong_password_and_throttling_shared_with_tsh_login(self):
        browser = Browser(self.running)
        response, body = await browser.sign_in("alice", "wrong password")
        self.assertEqual((response.code, body["error"]["message"]), (403, "invalid username or password"))
        self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
        for _ in range(4):
            await browser.sign_in("alice", "wrong password")
        # Locked now, for tsh as for the browser: one limiter in Auth.
        code, body = await self.running.request_json("POST", "/webapi/login", {
            "user": "alice", "password": PASSWORD, "public_key": "x"})
        self.assertEqual(code, 429, body)
        response, body = await browser.sign_in("alice")
        self.assertEqual(response.code, 429, body)

    async def test_sign_in_must_be_json_and_same_origin(self):
        browser = Browser(self.running)
        response, raw = await browser.call("POST", "/web/api/login", b"user=alice&password=x",
                                           content_type="application/x-www-form-urlencoded")
        self.assertEqual(response.code, 400, raw)
        response, raw = await browser.call("POST", "/web/api/login", {"user": "alice", "password": PASSWORD},
                                           origin="https://evil.example")
        self.assertEqual(response.code, 403, raw)

    async def test_state_changing_calls_need_the_csrf_token_and_logout_ends_the_session(self):
        browser = Browser(self.running)
        await browser.sign_in("alice")
        code, body = await browser.json("POST", "/web/api/logout", {}, csrf="wrong")
        self.assertEqual(code, 403, body)
        self.assertIn("CSRF", body["error"]["message"])
        browser_without = Browser(self.running)
        browser_without.cookie = browser.cookie
        code, body = await browser_without.json("POST", "/web/api/logout", {})
        self.assertEqual(code, 403, body)
        code, _ = await browser.json("GET", "/web/api/session")
        self.assertEqual(code, 200)
        response, _ = await browser.call("POST", "/web/api/logout", {})
        self.assertEqual(response.code, 200)
        self.assertRegex(response.headers.getRawHeaders(b"set-cookie")[0].decode(), r"^__Host-session=; Path=/; Max-Age=0;")
        code, body = await browser.json("GET", "/web/api/session")
        self.assertEqual((code, body["error"]["kind"]), (401, "unauthenticated"))

    async def test_every_answer_carries_the_security_headers(self):
        self.assertIn("frame-ancestors 'none'", CONTENT_SECURITY_POLICY)
        self.assertIn("script-src 'self';", CONTENT_SECURITY_POLICY)
        browser = Browser(self.running)
        for path in ("/web/", "/web/api/session", "/webapi/ping", "/web/invite/00"):
            response, _ = await browser.call("GET", path)
            headers = response.headers
            self.assertEqual(headers.getRawHeaders(b"content-security-policy"), [CONTENT_SECURITY_POLICY.encode()], path)
            self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"], path)
            self.assertEqual(headers.getRawHeaders(b"x-frame-options"), [b"DENY"], path)
            self.assertEqual(headers.getRawHeaders(b"referrer-policy"), [b"no-referrer"], path)

    async def test_clusters_with_kube_principals_and_the_login_command(self):
        await self.running.heartbeat()
        browser = Browser(self.running)
        code, body = await browser.json("GET", "/web/api/clusters")
        self.assertEqual(code, 401)
        await browser.sign_in("alice")
        code, body = await browser.json("GET", "/web/api/clusters")
        self.assertEqual(code, 200, body)
        [cluster] = body["items"]
        self.assertEqual((cluster["name"], cluster["labels"], cluster["kubernetes_users"], cluster["kubernetes_groups"]),
                         ("k8s", {"env": "test"}, ["alice"], ["system:authenticated", "viewers"]))
        self.assertIn("tsh kube login k8s", cluster["login_command"])

    async def test_audit_log_by_the_event_rule_with_filters_and_pages(self):
        for i in range(7):
            await self.auth.audit.emit("exec", user="alice" if i % 2 else "bob", command=f"cmd {i}")
        alice, erin = Browser(self.running), Browser(self.running)
        await alice.sign_in("alice")
        code, body = await alice.json("GET", "/web/api/events")
        self.assertEqual(code, 403, body)  # kube-access has no event rule
        await erin.sign_in("erin")
        code, body = await erin.json("GET", "/web/api/events?type=exec&user=alice&page_size=2")
        self.assertEqual(code, 200, body)
        self.assertEqual([e["command"] for e in body["items"]], ["cmd 1", "cmd 3"])
        self.assertTrue(body["has_more"])
        code, body = await erin.json("GET", "/web/api/events?type=exec&user=alice&page_size=2&after=" + body["next"])
        self.assertEqual(([e["command"] for e in body["items"]], body["has_more"], body["next"]), (["cmd 5"], False, ""))
        code, body = await erin.json("GET", "/web/api/events?page_size=0")
        self.assertEqual(code, 400, body)
        code, body = await erin.json("GET", "/web/api/events?after=nonsense")
        self.assertEqual((code, body["error"]["kind"]), (400, "bad_parameter"), body)
        code, body = await alice.json("GET", "/web/api/events?after=nonsense")
        self.assertEqual(code, 403, body)  # the rule first, for every page

    async def _recording(self):
        recordings = Recordings(self.auth, os.path.join(self.running.data_dir, "session_recordings"))
        await recordings.append(KUBE, SID, 0, RECORDING, True)

    async def test_recordings_own_or_by_the_session_rule_and_a_403_for_others(self):
        await self._recording()
        alice, bob, erin = Browser(self.running), Browser(self.running), Browser(self.running)
        for browser, name in ((alice, "alice"), (bob, "bob"), (erin, "erin")):
            await browser.sign_in(name)
        for browser in (alice, erin):
            code, body = await browser.json("GET", "/web/api/recordings")
            self.assertEqual([(m["session_id"], m["duration_ms"]) for m in body["items"]], [(SID, 301)])
            code, body = await browser.json("GET", f"/web/api/recordings/{SID}/data?offset=0")
            self.assertEqual(code, 200, body)
        code, body = await bob.json("GET", "/web/api/recordings")
        self.assertEqual((code, body["items"]), (200, []))
        for path in (f"/web/api/recordings/{SID}", f"/web/api/recordings/{SID}/data", f"/web/api/recordings/{SID}/asciicast"):
            code, body = await bob.json("GET", path)
            self.assertEqual((code, body["error"]["kind"]), (403, "access_denied"), path)
            self.assertIn("you may not view recording", body["error"]["message"])
        code, body = await bob.json("GET", "/web/api/recordings/not-a-uuid")
        self.assertEqual(code, 400)

    async def test_asciicast_download_is_what_tsh_play_writes(self):
        await self._recording()
        browser = Browser(self.running)
        await browser.sign_in("alice")
        response, raw = await browser.call("GET", f"/web/api/recordings/{SID}/asciicast")
        self.assertEqual(response.code, 200, raw)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/x-asciicast"])
        self.assertEqual(response.headers.getRawHeaders(b"content-disposition"),
                         [f'attachment; filename="{SID}.cast"'.encode()])
        lines = [json.loads(line) for line in raw.decode().splitlines()]
        self.assertEqual({k: lines[0][k] for k in ("version", "width", "height")},
                         {"version": 2, "width": 100, "height": 30})
        self.assertEqual(lines[1:], [[0.01, "o", "hello "], [0.25, "o", "world\r\n"], [0.3, "m", "exited with code 0"]])
        self.assertEqual(raw.decode(), asciicast.convert(read_all(RECORDING)))

    async def test_pages_are_the_bundle_or_say_it_is_not_built(self):
        browser = Browser(self.running)
        response, raw = await browser.call("GET", "/")
        self.assertEqual((response.code, response.headers.getRawHeaders(b"location")), (302, [b"/web/"]))
        response, raw = await browser.call("GET", "/web/recordings/" + SID)
        if (DIST / "index.html").exists():
            self.assertEqual(response.code, 200)
            self.assertIn(b"<script", raw)
        else:
            self.assertEqual(response.code, 503)
            self.assertIn(b"pip install", raw)

    async def test_the_invitation_page_refuses_a_used_token(self):
        token = await self.running.add_user("carol")
        response, raw = await Browser(self.running).call("GET", f"/web/invite/{token}")
        self.assertEqual(response.code, 200, raw)
        self.assertIn(b"carol", raw)
        await self.auth.users.complete_signup(PROXY, token, PASSWORD)
        response, raw = await Browser(self.running).call("GET", f"/web/invite/{token}")
        self.assertEqual(response.code, 404, raw)
        self.assertIn(b"already been used or has expired", raw)
        self.assertNotIn(b'name="password"', raw)



class WebAccessRequestTests(TestCase):
    """The access requests page's calls: what Auth shows each user, reviews
    relayed to Auth (the same rules as ``tsh request review``), CSRF."""

    timeout = 60

    async def setUp(self):
        self.running = await InProcessProxy.start(self)
        self.auth = self.running.auth
        for text in (requester_role(), REVIEWER_ROLE):
            await self.auth.resources.upsert(ADMIN, resource_to_dict(parse_yaml(text)[0]))
        for name, roles in (("rita", ("requester",)), ("rex", ("reviewer",)), ("alice", ("kube-access",)),
                            ("mallory", ("requester", "reviewer"))):
            token = await self.running.add_user(name, roles)
            await self.auth.users.complete_signup(PROXY, token, PASSWORD)
        self.browsers = {}
        for name in ("rita", "rex", "alice", "mallory"):
            self.browsers[name] = Browser(self.running)
            await self.browsers[name].sign_in(name)

    async def request_as(self, name: str, reason: str) -> str:
        """A request for kube-access made as ``tsh request create`` makes it."""
        identity = UserIdentity(username=name, roles=("requester",) if name == "rita" else ("requester", "reviewer"),
                                expires=datetime.now(timezone.utc) + timedelta(hours=1), teleport_cluster="example")
        created = await self.auth.access_requests.create(identity, ["kube-access"], reason)
        return created["metadata"]["name"]

    async def test_listed_for_the_requester_and_reviewers_only_reviewable_by_reviewers(self):
        request_id = await self.request_as("rita", "incident 7")
        code, body = await self.browsers["rita"].json("GET", "/web/api/access_requests")
        self.assertEqual(code, 200, body)
        self.assertEqual([(r["metadata"]["name"], r["spec"]["state"], r["spec"]["request_reason"]) for r in body["items"]],
                         [(request_id, "PENDING", "incident 7")])
        self.assertEqual(body["reviewable"], [])
        code, body = await self.browsers["rex"].json("GET", "/web/api/access_requests")
        self.assertEqual(([r["metadata"]["name"] for r in body["items"]], body["reviewable"]), ([request_id], [request_id]))
        code, body = await self.browsers["alice"].json("GET", "/web/api/access_requests")
        self.assertEqual((code, body["items"], body["reviewable"]), (200, [], []))

    async def test_a_review_needs_the_csrf_token_and_is_decided_by_auth(self):
        request_id = await self.request_as("rita", "incident 7")
        path = f"/web/api/access_requests/{request_id}/reviews"
        rex = self.browsers["rex"]
        # Forged: the cookie without the token, or from another origin.
        code, body = await rex.json("POST", path, {"state": "APPROVED", "reason": "x"}, csrf="")
        self.assertEqual(code, 403, body)
        self.assertIn("CSRF", body["error"]["message"])
        code, body = await rex.json("POST", path, {"state": "APPROVED"}, origin="https://evil.example")
        self.assertEqual(code, 403, body)
        # Not a reviewer of kube-access, or the requester: Auth refuses.
        code, body = await self.browsers["alice"].json("POST", path, {"state": "APPROVED", "reason": "x"})
        self.assertEqual(code, 403, body)
        code, body = await self.browsers["rita"].json("POST", path, {"state": "APPROVED", "reason": "x"})
        self.assertEqual((code, body["error"]["message"]), (403, "you cannot review your own access request"))
        self.assertEqual((await self.auth.access_requests.list(ADMIN))[0]["spec"]["state"], "PENDING")
        code, body = await rex.json("POST", path, {"state": "MAYBE"})
        self.assertEqual(code, 400, body)
        code, body = await rex.json("POST", path, {"state": "APPROVED", "reason": "go ahead"})
        self.assertEqual(code, 200, body)
        self.assertEqual(body["spec"]["state"], "APPROVED")
        self.assertEqual([(r["author"], r["proposed_state"], r["reason"]) for r in body["spec"]["reviews"]],
                         [("rex", "APPROVED", "go ahead")])
        code, body = await rex.json("GET", "/web/api/access_requests")
        self.assertEqual(body["reviewable"], [])
        reviews = [e for e in await self.auth.audit.search(datetime.now(timezone.utc) - timedelta(hours=1),
                                                             datetime.now(timezone.utc) + timedelta(hours=1),
                                                             ["access_request.review"])]
        self.assertEqual([(e["user"], e["id"], e["reason"]) for e in reviews], [("rex", request_id, "go ahead")])

    async def test_a_reviewer_never_reviews_their_own(self):
        own = await self.request_as("mallory", "mine")
        other = await self.request_as("rita", "hers")
        code, body = await self.browsers["mallory"].json("GET", "/web/api/access_requests")
        self.assertEqual(({r["metadata"]["name"] for r in body["items"]}, body["reviewable"]), ({own, other}, [other]))
        code, body = await self.browsers["mallory"].json("POST", f"/web/api/access_requests/{own}/reviews",
                                                         {"state": "APPROVED"})
        self.assertEqual(code, 403, body)


class BundleScriptTests(TestCase):
    def test_an_entrys_script_is_found_by_its_name_in_the_bundle(self):
        from teleport_py.web.assets import Assets

        bundle = Assets({"index.html": b"", "assets/app-AAAA.js": b"", "assets/invite-BBBB.js": b"",
                         "assets/invite-BBBB.js.LEGAL.txt": b"", "assets/app-AAAA.css": b""})
        self.assertEqual(bundle.script("invite"), "/web/assets/invite-BBBB.js")
        self.assertEqual(bundle.script("app"), "/web/assets/app-AAAA.js")
        self.assertIsNone(bundle.script("other"))
        self.assertIsNone(Assets({}).script("invite"))
