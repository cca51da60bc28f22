"""Browser sessions (teleport_py.web.sessions over Auth's
auth.services.web_sessions on a real MemoryBackend): random ids stored only
as their hash, an end no later than the certificate's, any proxy honouring
any proxy's session, CSRF tokens; and the download's back-pressure gate."""
from __future__ import annotations

import json
from datetime import timedelta

import attr
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from teleport_py.auth.authorizer import Authorizer
from teleport_py.auth.errors import AccessDenied, AlreadyExists, BadParameter
from teleport_py.auth.services.roles import Roles
from teleport_py.auth.services.web_sessions import WebSessionStore
from teleport_py.backend.memory import MemoryBackend
from teleport_py.pki import HostIdentity
from teleport_py.web.sessions import WebSessions, csrf_token_for, session_key
from teleport_py.web.ui import WriteGate
from tests.support.pki import NOW, authority, user_cert_pem

PROXY = HostIdentity(host_id="proxy-1", nodename="p", system_role="proxy", teleport_cluster="example")
AGENT = HostIdentity(host_id="agent-1", nodename="a", system_role="kube", teleport_cluster="example")


@attr.s(auto_attribs=True)
class _Authorities:
    user_ca: object


class LocalAuth:
    """What a proxy's Auth client does for web sessions, called in process with the proxy's identity."""

    def __init__(self, store: WebSessionStore, caller=PROXY) -> None:
        self.store, self.caller = store, caller

    def create_web_session(self, id_hash, cert):
        return Deferred.fromCoroutine(self.store.create(self.caller, id_hash, cert))

    def get_web_session(self, id_hash):
        return Deferred.fromCoroutine(self.store.get(self.caller, id_hash))

    def delete_web_session(self, id_hash):
        return Deferred.fromCoroutine(self.store.delete(self.caller, id_hash))


class WebSessionsTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.ca = authority("user")
        self.backend = MemoryBackend(self.clock)
        self.store = WebSessionStore(self.clock, self.backend, Authorizer(Roles(self.backend)), _Authorities(self.ca))
        self.sessions = WebSessions(self.clock, LocalAuth(self.store))
        self.cert = user_cert_pem("alice", ca=self.ca, expires=NOW + timedelta(hours=1))

    async def test_only_the_hash_of_the_id_is_stored_and_any_proxy_honours_it(self):
        sid, session = await self.sessions.create(self.cert.encode())
        self.assertEqual((session.user, session.certificate_pem, session.expires),
                         ("alice", self.cert.encode(), (NOW + timedelta(hours=1)).timestamp()))
        [item] = await self.backend.get_range("/web_sessions/")
        self.assertEqual(item.key, "/web_sessions/" + session_key(sid))
        self.assertNotIn(sid, item.key + item.value.decode())
        self.assertNotIn(session.csrf_token, item.value.decode())
        self.assertEqual(json.loads(item.value)["user"], "alice")
        # Another proxy (its own WebSessions over the same Auth) finds it, with the same CSRF token.
        other = WebSessions(self.clock, LocalAuth(self.store))
        self.assertEqual(await other.get(sid), session)
        await other.end(sid)
        self.assertIsNone(await self.sessions.get(sid))

    async def test_a_session_ends_at_its_certificates_expiry(self):
        sid, session = await self.sessions.create(self.cert.encode())
        self.clock.advance(3600 - 0.1)
        self.assertEqual(await self.sessions.get(sid), session)
        self.clock.advance(0.1)
        self.assertIsNone(await self.sessions.get(sid))

    async def test_ids_and_tokens_are_random_and_unknown_ids_find_nothing(self):
        made = [await self.sessions.create(self.cert.encode()) for _ in range(50)]
        self.assertEqual(len({sid for sid, _ in made}), 50)
        self.assertEqual(len({s.csrf_token for _, s in made}), 50)
        self.assertTrue(all(len(sid) == 43 for sid, _ in made))
        for bad in (None, "", "x", made[0][1].csrf_token, session_key(made[0][0])):
            self.assertIsNone(await self.sessions.get(bad))

    async def test_csrf_token_comparison(self):
        sid, session = await self.sessions.create(self.cert.encode())
        self.assertEqual(session.csrf_token, csrf_token_for(sid))
        self.assertNotIn(session.csrf_token, (sid, session_key(sid)))
        self.assertTrue(session.csrf_matches(session.csrf_token))
        for bad in (None, "", session.csrf_token[:-1], session.csrf_token + "x", "\udcff"):
            self.assertFalse(session.csrf_matches(bad))

    async def test_logout_ends_only_that_session(self):
        a, _ = await self.sessions.create(self.cert.encode())
        b, _ = await self.sessions.create(self.cert.encode())
        await self.sessions.end(a)
        await self.sessions.end(None)
        self.assertIsNone(await self.sessions.get(a))
        self.assertIsNotNone(await self.sessions.get(b))

    async def test_auth_refuses_what_is_not_a_live_user_certificate_of_the_cluster_from_a_proxy(self):
        key = session_key("x" * 43)
        refusals = [
            (AGENT, key, self.cert, AccessDenied),
            (PROXY, "not-a-hash", self.cert, BadParameter),
            (PROXY, key, user_cert_pem("alice", ca=authority("user", copy=1)), BadParameter),
            (PROXY, key, user_cert_pem("alice", ca=self.ca, expires=NOW - timedelta(seconds=1)), BadParameter),
            (PROXY, key, "not PEM", BadParameter),
            (PROXY, key, 5, BadParameter),
        ]
        for caller, id_hash, cert, error in refusals:
            with self.assertRaises(error, msg=(caller.system_role, id_hash, str(cert)[:20])):
                await self.store.create(caller, id_hash, cert)
        with self.assertRaises(AccessDenied):
            await self.store.get(AGENT, key)
        # The user is the certificate's: bob's certificate makes bob's session.
        record = await self.store.create(PROXY, key, user_cert_pem("bob", ca=self.ca))
        self.assertEqual(record["user"], "bob")
        with self.assertRaises(AlreadyExists):
            await self.store.create(PROXY, key, self.cert)


class WriteGateTests(TestCase):
    """The asciicast download's back-pressure (teleport_py.web.ui.WriteGate)."""

    def test_ready_waits_while_paused_and_is_false_once_stopped(self):
        gate = WriteGate()
        self.assertTrue(self.successResultOf(Deferred.fromCoroutine(gate.ready())))
        gate.pauseProducing()
        gate.pauseProducing()
        waiting = Deferred.fromCoroutine(gate.ready())
        self.assertNoResult(waiting)
        gate.resumeProducing()
        self.assertTrue(self.successResultOf(waiting))
        gate.pauseProducing()
        waiting = Deferred.fromCoroutine(gate.ready())
        gate.stopProducing()
        self.assertFalse(self.successResultOf(waiting))
        self.assertFalse(self.successResultOf(Deferred.fromCoroutine(gate.ready())))
