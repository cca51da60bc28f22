"""Recordings in Auth: chunked idempotent uploads by the owning agent, and
who may list and read them (role rules or the session's participant)."""
from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.trial.unittest import TestCase

from teleport_py.auth.errors import AccessDenied, AlreadyExists, BadParameter, NotFound
from teleport_py.auth.recordings import Recordings
from teleport_py.auth.server import AuthServer
from teleport_py.backend import MemoryBackend
from tests.support.recordings import BODY, KUBE, OTHER_KUBE, SID, START, user


def d(coro):
    return Deferred.fromCoroutine(coro)


class RecordingsTests(TestCase):
    async def _setup(self) -> Recordings:
        backend = MemoryBackend(reactor)
        self.addCleanup(backend.close)
        auth = await AuthServer.initialize(reactor, backend, "example")
        return Recordings(auth, self.mktemp(), run_blocking=maybeDeferred)

    def test_upload_is_chunked_idempotent_and_resumable(self):
        async def go():
            r = await self._setup()
            self.assertEqual(await r.stored(KUBE, SID), {"size": 0, "complete": False})
            self.assertEqual(await r.append(KUBE, SID, 0, START, False), {"size": len(START)})
            self.assertEqual(await r.append(KUBE, SID, 0, START, False), {"size": len(START)})  # retried
            with self.assertRaises(AlreadyExists) as gap:
                await r.append(KUBE, SID, len(START) + 5, BODY, False)
            self.assertEqual(gap.exception.details["size"], len(START))
            await r.append(KUBE, SID, len(START), BODY, True)
            self.assertEqual(await r.stored(KUBE, SID), {"size": len(START + BODY), "complete": True})
            page = await r.read(user("alice"), SID, 0)
            self.assertEqual((page["data"], page["complete"]), (START + BODY, True))
            page = await r.read(user("alice"), SID, len(START) + 2)
            self.assertEqual(page["data"], (START + BODY)[len(START) + 2:])
            meta = await r.get(user("alice"), SID)
            self.assertEqual((meta["user"], meta["pod"], meta["server_id"]), ("alice", "web-0", "kube-1"))
        return d(go())

    def test_only_the_owning_agent_uploads_and_a_recording_starts_properly(self):
        async def go():
            r = await self._setup()
            with self.assertRaises(BadParameter):
                await r.append(KUBE, SID, 0, BODY, False)
            with self.assertRaises(BadParameter):
                await r.append(KUBE, "../etc", 0, START, False)
            with self.assertRaises(AccessDenied):
                await r.append(user("alice", "editor"), SID, 0, START, False)
            await r.append(KUBE, SID, 0, START, False)
            with self.assertRaises(AccessDenied):
                await r.append(OTHER_KUBE, SID, len(START), BODY, False)
            with self.assertRaises(AccessDenied):
                await r.stored(user("alice", "editor"), SID)
        return d(go())

    def test_readers_are_role_rules_or_the_participant(self):
        async def go():
            r = await self._setup()
            await r.append(KUBE, SID, 0, START, True)
            self.assertEqual([m["session_id"] for m in await r.list(user("bob", "editor"))], [SID])
            self.assertEqual([m["session_id"] for m in await r.list(user("alice"))], [SID])
            self.assertEqual(await r.list(user("carol", "access")), [])
            await r.get(user("bob", "editor"), SID)
            with self.assertRaises(AccessDenied):
                await r.get(user("carol", "access"), SID)
            with self.assertRaises(AccessDenied):
                await r.read(user("carol", "access"), SID, 0)
            with self.assertRaises(NotFound):
                await r.get(user("carol", "access"), SID.replace("0", "1"))
            self.assertNotIn("chunks", await r.get(user("alice"), SID))
        return d(go())

    def test_bytes_are_in_a_file_and_a_crash_before_the_metadata_loses_nothing(self):
        async def go():
            r = await self._setup()
            await r.append(KUBE, SID, 0, START, False)
            path = os.path.join(r.files.directory, SID + ".rec")
            with open(path, "ab") as f:
                f.write(b"a chunk whose metadata was never written" * 100)
            self.assertEqual(await r.stored(KUBE, SID), {"size": len(START), "complete": False})
            self.assertEqual((await r.read(user("alice"), SID, 0))["data"], START)  # only what Auth holds
            await r.append(KUBE, SID, len(START), BODY, True)  # the agent resends from Auth's size
            with open(path, "rb") as f:
                self.assertEqual(f.read(), START + BODY)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
            self.assertEqual(await r.backend.get_range("/recording_data/"), [])
        return d(go())

    def test_recordings_stored_in_the_backend_still_play_and_grow(self):
        async def go():
            r = await self._setup()
            meta = {"server_id": "kube-1", "size": len(START), "complete": False, "chunks": [0],
                    "session_id": SID, "user": "alice"}
            await r.backend.put(f"/recording_meta/{SID}", json.dumps(meta).encode())
            await r.backend.put(f"/recording_data/{SID}/{0:016d}", START)
            await r.append(KUBE, SID, len(START), BODY, True)
            self.assertEqual((await r.read(user("alice"), SID, 0))["data"], START + BODY)
            self.assertEqual((await r.read(user("alice"), SID, 3))["data"], (START + BODY)[3:])
            self.assertFalse(os.path.exists(os.path.join(r.files.directory, SID + ".rec")))
        return d(go())


class SharedRecordingsTests(TestCase):
    """Two Auth servers on one backend and one shared directory (as on etcd
    with audit_sessions_uri): an upload begun through one resumes and plays
    through the other."""

    async def test_an_upload_moves_between_auth_servers(self):
        backend = MemoryBackend(reactor)
        self.addCleanup(backend.close)
        shared = self.mktemp()
        first, second = [
            Recordings(await AuthServer.initialize(reactor, backend, "example", shared_backend=True), shared,
                       run_blocking=maybeDeferred)
            for _ in range(2)
        ]
        await first.append(KUBE, SID, 0, START, False)
        self.assertEqual(await second.stored(KUBE, SID), {"size": len(START), "complete": False})
        await second.append(KUBE, SID, len(START), BODY, True)
        page = await first.read(user("alice"), SID, 0)
        self.assertEqual((page["data"], page["complete"]), (START + BODY, True))
        self.assertEqual([meta["session_id"] for meta in await second.list(user("alice", "editor"))], [SID])
