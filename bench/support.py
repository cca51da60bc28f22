"""What the benchmarks share: just enough of a TestCase for tests/e2e.py's
Deployment, a process's CPU time and memory from /proc, and py-spy sampling
of one phase."""
from __future__ import annotations

import os
import shutil
import sys

from twisted.internet import defer, protocol

#: Not Python: py-spy cannot sample them.
NOT_PYTHON = ("apiserver", "etcd")


class Harness:
    """Collects the Deployment's cleanups; ``close`` runs them, newest first."""

    def __init__(self, root: str | None = None):
        self.root = root
        self.cleanups: list = []

    def addCleanup(self, f, *args):
        self.cleanups.append((f, args))

    def assertEqual(self, a, b, message=None):
        if a != b:
            raise AssertionError(message or f"{a!r} != {b!r}")

    async def close(self, keep: bool = False) -> None:
        """Stop everything; ``root`` (logs, data) stays when ``keep``."""
        for f, args in reversed(self.cleanups):
            await defer.maybeDeferred(f, *args)
        if self.root is None:
            return
        if keep:
            print(f"kept {self.root} (logs of every process)")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU time of a process so far; with ``children``, also of
    the children it has waited for (the kubelet stand-in's commands)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(t) for t in fields[11:15 if children else 13]) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


class Sampled:
    """With a directory, py-spy samples the Python processes during one phase
    (collapsed stacks in DIR/<phase>-<process>.txt, the input of flame graph
    tools), so a cost is found in the profile rather than guessed."""

    def __init__(self, reactor, directory: str | None, phase: str, pids: dict[str, int], rate: int = 200,
                 blocking: bool = False):
        self.reactor, self.directory, self.phase, self.pids, self.rate = reactor, directory, phase, pids, rate
        #: Blocking mode stops the process for each sample: slower, but the
        #: CPU breakdown is not skewed towards system calls as nonblocking's is.
        self.blocking = blocking
        self.samplers: list = []

    def __enter__(self):
        if self.directory:
            os.makedirs(self.directory, exist_ok=True)
            spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
            self.samplers = [
                self.reactor.spawnProcess(
                    protocol.ProcessProtocol(), spy,
                    [spy, "record", *(() if self.blocking else ("--nonblocking",)), "-r", str(self.rate),
                     "--pid", str(pid), "--format", "raw",
                     "-o", os.path.join(self.directory, f"{self.phase}-{name}.txt")],
                    env=os.environ, childFDs={0: "r", 1: "r", 2: "r"})
                for name, pid in self.pids.items() if name not in NOT_PYTHON]
        return self

    def __exit__(self, *exc_info):
        for sampler in self.samplers:
            sampler.signalProcess("INT")
