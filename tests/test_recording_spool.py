"""The agent's recordings spool and uploader against Auth's real Recordings
logic: complete upload and deletion, resume after a failure or a restart,
only whole lines from a file still being written, orphans of a killed agent."""
from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from teleport_py.auth.recordings import Recordings
from teleport_py.auth.server import AuthServer
from teleport_py.backend import MemoryBackend
from teleport_py.pki import HostIdentity
from teleport_py.recording import spool as spool_module
from teleport_py.recording.format import MAX_PRINT, encode, read_all
from teleport_py.recording.spool import RecordingSpool
from tests.support.recordings import SID, user

KUBE = HostIdentity(host_id="kube-1", nodename="k", system_role="kube", teleport_cluster="example")
START = {"type": "session.start", "ms": 0, "session_id": SID, "user": "alice"}


def synchronous(f, *args):
    return maybeDeferred(f, *args)


def d(coro):
    return Deferred.fromCoroutine(coro)


class FlakyAuth:
    """Auth's recordings logic behind the two calls the spool makes; ``fail`` breaks the next upload."""

    def __init__(self, recordings: Recordings):
        self.recordings = recordings
        self.fail = 0
        self.uploads: list[tuple[int, int, bool]] = []
        self.asked: list[str] = []

    async def upload(self, session_id, offset, data, final):
        if self.fail:
            self.fail -= 1
            raise ConnectionError("tunnel down")
        self.uploads.append((offset, len(data), final))
        return (await self.recordings.append(KUBE, session_id, offset, data, final))["size"]

    async def stored(self, session_id):
        self.asked.append(session_id)
        return (await self.recordings.stored(KUBE, session_id))["size"]


class SpoolTests(TestCase):
    async def _setup(self):
        backend = MemoryBackend(reactor)
        self.addCleanup(backend.close)
        auth = await AuthServer.initialize(reactor, backend, "example")
        self.auth = FlakyAuth(Recordings(auth, self.mktemp(), run_blocking=synchronous))
        self.clock = Clock()
        self.directory = self.mktemp()

    def spool(self) -> RecordingSpool:
        spool = RecordingSpool(self.clock, self.directory, upload=self.auth.upload, stored=self.auth.stored,
                               run_blocking=synchronous)
        self.addCleanup(spool.stop)
        return spool

    async def stored_events(self):
        page = await self.auth.recordings.read(user("alice"), SID, 0)
        return page, read_all(page["data"])

    def test_closed_recording_is_uploaded_then_deleted(self):
        async def go():
            await self._setup()
            spool = self.spool()
            writer = spool.open(SID)
            writer.record(START)
            writer.output("stdout", 5, b"hello")
            await writer.close()
            await spool.upload_all()
            page, events = await self.stored_events()
            self.assertTrue(page["complete"])
            self.assertEqual([e["type"] for e in events], ["session.start", "print"])
            self.assertEqual(os.listdir(self.directory), [])
            self.assertEqual(self.auth.asked, [])  # a session we started: Auth cannot have any of it
        return d(go())

    def test_upload_resumes_after_failures_in_chunks(self):
        async def go():
            await self._setup()
            self.patch(spool_module, "CHUNK_SIZE", 256)
            spool = self.spool()
            writer = spool.open(SID)
            writer.record(START)
            for i in range(40):
                writer.output("stdout", i, b"x" * 50)
            await writer.close()
            self.auth.fail = 1
            with self.assertRaises(ConnectionError):
                await spool.upload_all()
            await spool.upload_all()  # first chunks arrive, then the tunnel drops again
            self.assertTrue(self.auth.uploads[-1][2])
            self.assertGreater(len(self.auth.uploads), 10)
            page, events = await self.stored_events()
            self.assertEqual(len(events), 41)
            offsets = [o for o, _, _ in self.auth.uploads]
            self.assertEqual(offsets, sorted(offsets))
        return d(go())

    def test_a_restarted_agent_resumes_from_what_auth_has(self):
        async def go():
            await self._setup()
            spool = self.spool()
            writer = spool.open(SID)
            writer.record(START)
            writer.flush()
            await spool.upload_all()  # the open recording's complete lines
            self.assertEqual(self.auth.uploads, [(0, len(encode(START)), False)])
            # The agent is killed mid-line: a torn line is on disk.
            with open(os.path.join(self.directory, SID + ".part"), "ab") as f:
                f.write(encode({"type": "print", "ms": 1, "data": b"before the kill"}) + b'{"type":"pri')
            restarted = self.spool()
            await restarted.upload_all()
            self.assertEqual(self.auth.asked, [SID])
            page, events = await self.stored_events()
            self.assertTrue(page["complete"])
            self.assertEqual([e.get("data") for e in events], [None, b"before the kill"])
            self.assertEqual(self.auth.uploads[1][0], len(encode(START)))  # not sent twice
            self.assertEqual(os.listdir(self.directory), [])
        return d(go())

    def test_only_whole_lines_of_an_open_recording_are_sent(self):
        async def go():
            await self._setup()
            spool = self.spool()  # started (and recovered) before the session
            with open(os.path.join(self.directory, SID + ".part"), "wb") as f:  # a write in progress
                f.write(encode(START) + b'{"type":"print","ms":3,')
            await spool.upload_all()
            self.assertEqual(self.auth.uploads, [(0, len(encode(START)), False)])
        return d(go())

    def test_background_uploads_retry_with_backoff(self):
        async def go():
            await self._setup()
            spool = self.spool()
            writer = spool.open(SID)
            writer.record(START)
            self.auth.fail = 1
            await writer.close()  # schedules an upload
            self.clock.advance(0)
            self.assertEqual(self.auth.uploads, [])
            self.clock.advance(5)
            await spool.upload_all()
            page, _ = await self.stored_events()
            self.assertTrue(page["complete"])
        return d(go())



class WriterTests(TestCase):
    """How the writer paces its disk writes."""

    def test_a_busy_session_is_written_without_waiting_for_the_timer(self):
        clock, writes = Clock(), []

        def disk(f, *args):
            writes.append(f.__name__)
            return maybeDeferred(f, *args)

        spool = RecordingSpool(clock, self.mktemp(), upload=None, stored=None, run_blocking=disk, max_backlog=1000)
        spool.stop()
        writer = spool.open(SID)
        writer.record(START)
        self.assertEqual(writes, ["recover"])  # a small recording waits for the timer
        writer.output("stdout", 1, b"x" * 600)
        self.assertEqual(writes, ["recover", "append"])  # more than half the backlog: written at once
        clock.advance(1.0)
        self.assertEqual(writes, ["recover", "append"])  # nothing left for the timer
        with open(os.path.join(spool.files.directory, SID + ".part"), "rb") as f:
            self.assertEqual([e["type"] for e in read_all(f.read())], ["session.start", "print"])
        writer.close()

    def test_output_in_one_millisecond_becomes_one_record_and_still_reaches_the_disk(self):
        clock = Clock()
        spool = RecordingSpool(clock, self.mktemp(), upload=None, stored=None, run_blocking=synchronous)
        spool.stop()
        writer = spool.open(SID)
        writer.record(START)
        for byte in b"typed":
            writer.output("stdout", 7, bytes([byte]))
        writer.record({"type": "print", "ms": 7, "stream": "stderr", "data": b"!"})  # the same as output()
        writer.output("stderr", 8, b"?")
        clock.advance(1.0)  # the flush timer seals the open record: a kill -9 now loses nothing
        with open(os.path.join(spool.files.directory, SID + ".part"), "rb") as f:
            events = read_all(f.read())
        self.assertEqual([(e.get("stream"), e.get("data")) for e in events[1:]],
                         [("stdout", b"typed"), ("stderr", b"!"), ("stderr", b"?")])
        writer.close()

    def test_output_fills_records_up_to_max_print(self):
        clock = Clock()
        spool = RecordingSpool(clock, self.mktemp(), upload=None, stored=None, run_blocking=synchronous)
        spool.stop()
        writer = spool.open(SID)
        writer.record(START)
        reads = [bytes([n]) * (MAX_PRINT // 2 + 1) for n in range(3)] + [b"z" * (2 * MAX_PRINT + 5)]
        for data in reads:
            writer.output("stdout", 3, data)
        writer.output("stdout", 4, b"later")
        writer.close()
        with open(os.path.join(spool.files.directory, SID + ".rec"), "rb") as f:
            events = read_all(f.read())[1:]
        self.assertEqual([len(e["data"]) for e in events], [MAX_PRINT] * 3 + [MAX_PRINT // 2 + 8, 5])
        self.assertEqual(b"".join(e["data"] for e in events), b"".join(reads) + b"later")
        self.assertEqual([e["ms"] for e in events], [3] * 4 + [4])


class FilesTests(TestCase):
    def test_an_open_recording_closed_after_the_listing_is_still_read(self):
        """The uploader lists a .part, the session ends and renames it: the read must not fail."""
        files = spool_module.RecordingFiles(self.mktemp())
        files.append(SID, encode(START))
        self.assertEqual(files.listing(), [(SID, False)])
        files.close(SID)
        self.assertEqual(files.read(SID, False, 0, 1 << 20), encode(START))
        files.remove(SID)
        self.assertRaises(FileNotFoundError, files.read, SID, False, 0, 1)
