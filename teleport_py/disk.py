"""Blocking file work kept off the reactor, and writes that are on disk when they return.

Every directory of files a service owns (the agent's event and recording
spools, Auth's recordings) runs its file operations on one ``file_thread``:
one worker, so they happen in the order they were asked for (an append is
never overtaken by the read of an upload), and never on the reactor thread.
Files are created 0600.
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def file_thread(reactor, name: str, *, before_stop: Callable[[], Any] | None = None) -> Callable[..., Deferred]:
    """``run(f, *args)``: ``f(*args)`` on this one worker thread, its result
    in a Deferred. ``before_stop`` (it may return a Deferred) runs before the
    reactor shuts down, while the thread still takes work: a spool commits
    what it holds in memory, so a clean stop loses nothing."""
    worker = _FileThread(reactor, name)
    if before_stop is not None:
        reactor.addSystemEventTrigger("before", "shutdown", before_stop)
    reactor.addSystemEventTrigger("during", "shutdown", worker.stop)
    return worker.run


class _FileThread:
    """One thread taking work from a queue, in order, each result handed
    back with ``callFromThread``. The agent's audit spool hands it one
    fsync'd append per response (kube/durable_responses.py); Twisted's
    ThreadPool (``deferToThreadPool``) cost about 4 % of the agent's CPU per
    small GET in that hand-off alone (its Team and Condition coordination
    in Python, blocking py-spy, issue 12), where a ``SimpleQueue`` put is
    one C call."""

    def __init__(self, reactor, name: str) -> None:
        self._reactor = reactor
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def run(self, f: Callable, *args) -> Deferred:
        done = Deferred()
        self._queue.put((f, args, done))
        return done

    def _work(self) -> None:
        call_from_thread = self._reactor.callFromThread
        while (item := self._queue.get()) is not None:
            f, args, done = item
            try:
                result = f(*args)
            except BaseException:
                call_from_thread(done.errback, Failure())
            else:
                call_from_thread(done.callback, result)
            del item, f, args, done

    def stop(self) -> None:
        """Work already queued is done first; later work never runs."""
        self._queue.put(None)
        self._thread.join()


def append(path: str, data: bytes, *, sync: bool = True) -> None:
    """``data`` at the end of ``path``. With ``sync`` it is on disk when this
    returns; without, it outlives the process (kill -9), not the machine."""
    _write(path, os.O_APPEND, data, None, sync)


def write_at(path: str, offset: int, data: bytes) -> None:
    """``data`` at ``offset`` of ``path``, whatever was past ``offset``
    dropped first; on disk when this returns."""
    _write(path, 0, data, offset, True)


def sync_directory(directory: str) -> None:
    """Make a directory's entries (a file created or renamed in it) survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: str, mode: int, data: bytes, offset: int | None, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | mode, 0o600)
    try:
        if offset is not None:
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
