"""teleport_py.web.kube_client: the kube certificate a web session gets for a
cluster (issued once per session and cluster while valid, checked to be the
user's and that cluster's), the stream metadata it travels in, and an
offline cluster. The real chain is tests.test_web_terminal."""
from __future__ import annotations

from datetime import timedelta

import attr
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from teleport_py.auth.errors import AuthError
from teleport_py.web.kube_client import ClusterOffline, WebKube
from tests.support.pki import NOW, authority, user_cert_pem


@attr.s(frozen=True, auto_attribs=True)
class Session:
    user: str
    certificate_pem: bytes


class Auth:
    """Reissues as Auth would, or as a broken Auth would."""

    def __init__(self, user="alice", cluster=None):
        self.calls, self.user, self.cluster = [], user, cluster

    async def reissue(self, public_key_pem, kube_cluster=""):
        self.calls.append(kube_cluster)
        return {"cert": user_cert_pem(self.user, kube_cluster=self.cluster or kube_cluster,
                                      expires=NOW + timedelta(hours=1))}


class Tunnel:
    def __init__(self):
        self.opened = []

    def endpoint(self, kind, metadata):
        self.opened.append((kind, metadata))
        return object()


class Registry:
    def __init__(self, tunnel=None):
        self.tunnel = tunnel

    def pick(self, cluster):
        return None if self.tunnel is None else (self.tunnel, None)


class WebKubeTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.tunnel = Tunnel()
        self.kube = WebKube(self.clock, Registry(self.tunnel), authority("user").certificate, max_certificates=2)
        self.session = Session("alice", b"login certificate")

    async def test_one_certificate_per_session_and_cluster_while_valid(self):
        auth = Auth()
        first = await self.kube.certificate(auth, self.session, "c1")
        self.assertEqual(await self.kube.certificate(auth, self.session, "c1"), first)
        await self.kube.certificate(auth, self.session, "c2")
        self.assertEqual(auth.calls, ["c1", "c2"])
        self.clock.advance(3600 - 20)  # within 30 s of its end: a new one
        self.assertNotEqual(await self.kube.certificate(auth, self.session, "c1"), first)
        self.assertEqual(auth.calls, ["c1", "c2", "c1"])

    async def test_bounded(self):
        auth = Auth()
        for cluster in ("c1", "c2", "c3"):
            await self.kube.certificate(auth, self.session, cluster)
        await self.kube.certificate(auth, self.session, "c3")
        await self.kube.certificate(auth, self.session, "c1")  # the oldest was dropped
        self.assertEqual(auth.calls, ["c1", "c2", "c3", "c1"])

    async def test_a_certificate_for_someone_or_somewhere_else_is_refused(self):
        for auth in (Auth(user="mallory"), Auth(cluster="other")):
            with self.assertRaises(AuthError):
                await self.kube.certificate(auth, self.session, "c1")

    def test_streams_carry_the_certificate_as_kubectl_connections(self):
        self.kube.endpoint("c1", "PEM", "10.0.0.1:5555")
        self.assertEqual(self.tunnel.opened, [("kube", {"user_cert": "PEM", "client_addr": "10.0.0.1:5555",
                                                        "kube_cluster": "c1", "alpn": "http/1.1"})])

    def test_offline(self):
        kube = WebKube(self.clock, Registry(None), authority("user").certificate)
        with self.assertRaises(ClusterOffline) as raised:
            kube.endpoint("c1", "PEM", "")
        self.assertEqual((raised.exception.status, raised.exception.message),
                         (503, 'kubernetes cluster "c1" is offline'))
