"""The proxy's browser sessions (teleport_py.web.sessions): random ids, an
end no later than the certificate's, a bound on how many, CSRF tokens; and
the download's back-pressure gate."""
from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from teleport_py.web.sessions import TooManySessions, WebSessions
from teleport_py.web.ui import WriteGate


class WebSessionsTests(TestCase):
    def test_a_session_ends_at_its_certificates_expiry(self):
        clock = Clock()
        sessions = WebSessions(clock)
        sid, session = sessions.create("alice", b"PEM", expires=100.0)
        self.assertIs(sessions.get(sid), session)
        clock.advance(99.9)
        self.assertIs(sessions.get(sid), session)
        clock.advance(0.1)
        self.assertIsNone(sessions.get(sid))
        self.assertEqual(len(sessions), 0)

    def test_ids_and_tokens_are_random_and_unknown_ids_find_nothing(self):
        sessions = WebSessions(Clock())
        made = [sessions.create("alice", b"PEM", 10.0) for _ in range(50)]
        self.assertEqual(len({sid for sid, _ in made}), 50)
        self.assertEqual(len({s.csrf_token for _, s in made}), 50)
        self.assertTrue(all(len(sid) == 43 for sid, _ in made))
        for bad in (None, "", "x", made[0][1].csrf_token):
            self.assertIsNone(sessions.get(bad))

    def test_csrf_token_comparison(self):
        _, session = WebSessions(Clock()).create("alice", b"PEM", 10.0)
        self.assertTrue(session.csrf_matches(session.csrf_token))
        for bad in (None, "", session.csrf_token[:-1], session.csrf_token + "x", "\udcff"):
            self.assertFalse(session.csrf_matches(bad))

    def test_logout_ends_only_that_session(self):
        sessions = WebSessions(Clock())
        a, _ = sessions.create("alice", b"PEM", 10.0)
        b, _ = sessions.create("alice", b"PEM", 10.0)
        sessions.end(a)
        sessions.end(None)
        self.assertIsNone(sessions.get(a))
        self.assertIsNotNone(sessions.get(b))

    def test_bounded_and_full_refuses_rather_than_evicting(self):
        clock = Clock()
        sessions = WebSessions(clock, max_sessions=2)
        first, _ = sessions.create("alice", b"PEM", 5.0)
        sessions.create("bob", b"PEM", 50.0)
        self.assertRaises(TooManySessions, sessions.create, "eve", b"PEM", 50.0)
        self.assertIsNotNone(sessions.get(first))
        clock.advance(5)
        sessions.create("eve", b"PEM", 50.0)  # the expired one made room
        self.assertEqual(len(sessions), 2)


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
