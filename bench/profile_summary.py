"""Where a process's CPU goes, from the py-spy stacks a bench wrote.

``bench/kube_path.py --profile DIR --profile-blocking`` leaves collapsed
stacks (``DIR/<phase>-<process>.txt``). On a loaded machine even blocking
samples count a thread descheduled in a system call (``send`` inside
Twisted's ``untilConcludes``, ``fsync``, an idle ``epoll_wait`` or
``Condition.wait``) as busy, though /proc shows the processes spend ~90 %
of their CPU in user space: those leaves are dropped here, and each
remaining sample is charged to the innermost frame that names a part of
the path (h11, TLS, audit, ...).

    python3 bench/profile_summary.py DIR/get-agent.txt DIR/get-proxy.txt
"""
from __future__ import annotations

import collections
import re
import sys

#: Leaves that are a wait, not CPU.
WAITING = ("Condition.wait", "EPollReactor.doPoll", "untilConcludes", "_write (teleport_py/disk.py",
           # disk.file_thread's worker waiting on its queue (a C call: no frame of its own)
           "_FileThread._work (teleport_py/disk.py")
#: Leaves that are a socket system call (the kernel's copy, and on loopback
#: the receiver's TCP work too): Twisted's ``recv`` and ``send`` sit in these.
SOCKET_CALLS = ("Connection.doRead (twisted/internet/tcp.py", "Connection.writeSomeData (twisted/internet/tcp.py")
PARTS = [
    ("h11", r"\(h11/"),
    ("HTTP/1.1 heads and framing (ours, replacing h11)",
     r"kube/http1_server\.py|kube/http1_client\.py|kube/request_head\.py|kube/bodyframing"),
    ("TLS (pyOpenSSL, twisted's TLS protocol)", r"\(OpenSSL/|twisted/protocols/tls\.py"),
    ("audit (event, JSON, spool)", r"\.audit \(|event_spool|events/__init__|disk\.py|\(json/"),
    ("authorization (canonical request, roles)", r"kube/authorize\.py|/rbac/|kube/canonical\.py"),
    ("tunnel framing", r"teleport_py/tunnel/"),
    ("kube front end and upstream (the rest of ours)",
     r"kube/http1\.py|kube/http2\.py|kube/upstream|kube/connection_watch"),
    ("Deferreds and coroutines", r"twisted/internet/defer\.py"),
    ("proxy, auth, backend (ours)", r"teleport_py/(proxy|auth|backend|limits)"),
]


def summarize(path: str) -> tuple[int, collections.Counter]:
    parts: collections.Counter = collections.Counter()
    for line in open(path):
        stack, _, count = line.rstrip().rpartition(" ")
        frames = stack.split(";")
        if frames[-1].startswith(WAITING):
            continue
        if frames[-1].startswith(SOCKET_CALLS):
            parts["socket reads and writes (system calls)"] += int(count)
            continue
        part = "reactor and the rest"
        for frame in reversed(frames):
            part = next((name for name, pattern in PARTS if re.search(pattern, frame)), None) or part
            if part != "reactor and the rest":
                break
        parts[part] += int(count)
    return sum(parts.values()), parts


def main() -> None:
    for path in sys.argv[1:]:
        total, parts = summarize(path)
        print(f"{path}: {total} samples on CPU")
        for part, count in parts.most_common():
            print(f"  {100 * count / max(total, 1):5.1f} %  {part}")


if __name__ == "__main__":
    main()
