"""Auth's storage from teleport.storage: the backend it opens and the one
line a person reads when etcd's settings are wrong."""
from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from teleport_py.auth.storage import open_backend, recordings_dir
from teleport_py.backend import SQLiteBackend
from teleport_py.backend.etcd import EtcdBackend
from teleport_py.config import StorageConfig
from teleport_py.lifecycle import StartError
from tests.support.etcd import shared_etcd, unique_prefix


class OpenBackendTests(TestCase):
    async def etcd_storage(self, **changes):
        server = await shared_etcd(tls=True)
        settings = dict(type="etcd", peers=(server.url,), prefix=unique_prefix().rstrip("/"),
                        tls_cert_file=server.files["client.pem"], tls_key_file=server.files["client-key.pem"],
                        tls_ca_file=server.files["ca.pem"])
        settings.update(changes)
        return StorageConfig(**settings)

    async def test_sqlite_by_default(self):
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        backend = await open_backend(reactor, StorageConfig(), data_dir)
        self.addCleanup(backend.close)
        self.assertIsInstance(backend, SQLiteBackend)
        self.assertEqual(recordings_dir(StorageConfig(), data_dir), os.path.join(data_dir, "session_recordings"))
        self.assertEqual(recordings_dir(StorageConfig(audit_sessions_dir="/mnt/r"), data_dir), "/mnt/r")

    async def test_etcd_with_its_certificates(self):
        backend = await open_backend(reactor, await self.etcd_storage(), self.mktemp())
        self.addCleanup(backend.close)
        self.assertIsInstance(backend, EtcdBackend)
        await backend.put("/a", b"1")

    async def test_bad_settings_are_one_line_naming_the_key(self):
        server = await shared_etcd(tls=True)
        for changes, words in [
            ({"tls_key_file": "/nonexistent/key.pem"}, "teleport.storage.tls_key_file /nonexistent/key.pem"),
            ({"tls_cert_file": server.files["ca.pem"], "tls_key_file": server.files["ca.pem"]},
             "teleport.storage.tls_key_file"),
            ({"tls_ca_file": server.files["client-key.pem"]}, "teleport.storage.tls_ca_file"),
            ({"peers": ("https://127.0.0.1:1",)}, "teleport.storage.peers"),
        ]:
            with self.assertRaises(StartError) as caught:
                await open_backend(reactor, await self.etcd_storage(**changes), self.mktemp())
            self.assertIn(words, str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))
