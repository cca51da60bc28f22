"""
exec and port-forward through teleport_py versus straight to the API server,
in one run, on the same kube-apiserver and kubelet stand-in:

- exec stdout throughput: ``kubectl exec POD -- head -c N /dev/zero``;
- port-forward throughput: ``kubectl port-forward`` and one TCP connection
  echoing N bytes through a local echo server (both directions at once);
- exec sessions per second: a minimal SPDY exec client (``command=true``) on
  one TLS connection per session, sequential and concurrent.

Run: TELEPORT_PY_KUBE_BIN=... PATH=.venv/bin:$PATH .venv/bin/python bench/exec_throughput.py [--mb 300]

``--no-record-output`` runs the agent with ``record_exec_output: false``;
Each phase prints the CPU seconds every process used, including the upload
of the phase's recordings to Auth (the phase ends when the agent's spool is
empty; throughput is timed without that wait). ``--profile DIR``
also samples the Python processes with py-spy; ``--only teleport_py`` skips
the direct path.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, protocol, task  # noqa: E402
from twisted.internet.endpoints import (  # noqa: E402
    SSL4ClientEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS  # noqa: E402
from twisted.protocols.wire import Echo  # noqa: E402

from bench.support import Harness, Sampled, cpu_seconds  # noqa: E402
from teleport_py.spdy import Data, FrameEncoder, FrameParser, SynStream  # noqa: E402
from tests.e2e import Deployment  # noqa: E402
from tests.support.kubeenv import create_running_pod, kubectl_binaries, register_node  # noqa: E402
from tests.support.kubelet import KubeletStandin  # noqa: E402
from tests.support.procs import free_port, wait_until  # noqa: E402
from tests.support.session_roles import SESSIONS_RBAC, SESSIONS_ROLE  # noqa: E402


class _Count(protocol.ProcessProtocol):
    def __init__(self):
        self.stdout = 0
        self.head = b""  # the start of stdout, for readiness messages
        self.stderr = bytearray()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        if self.stdout < 4096:
            self.head += data[:4096]
        self.stdout += len(data)

    def errReceived(self, data):
        self.stderr += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


class _EchoClient(protocol.Protocol):
    """Streams ``size`` bytes out and counts them back."""

    CHUNK = os.urandom(64 * 1024)

    def __init__(self, size):
        self.size = self.total = size
        self.received = 0
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.registerProducer(self, False)

    def resumeProducing(self):
        if self.size <= 0:
            self.transport.unregisterProducer()
            return
        chunk = self.CHUNK[: self.size]
        self.size -= len(chunk)
        self.transport.write(chunk)

    def pauseProducing(self):
        pass

    def stopProducing(self):
        pass

    def dataReceived(self, data):
        self.received += len(data)
        if self.received >= self.total:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(self.received)


class _SpdyExec(protocol.Protocol):
    """One exec session at the protocol level: upgrade, streams, status, close."""

    def __init__(self, request):
        self.request = request
        self.head = b""
        self.upgraded = False
        self.encoder = FrameEncoder()
        self.parser = FrameParser()
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        if not self.upgraded:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, data = self.head.split(b"\r\n\r\n", 1)
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self.transport.loseConnection()
                self.done.errback(RuntimeError(head.split(b"\r\n", 1)[0].decode()))
                return
            self.upgraded = True
            for stream_id, kind in ((1, "error"), (3, "stdout")):
                self.transport.write(self.encoder.encode(SynStream(stream_id, {"streamtype": [kind]})))
        for frame in self.parser.feed(data):
            if isinstance(frame, Data) and frame.stream_id == 1 and frame.fin:
                self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.done.called:
            if self.upgraded:
                self.done.callback(None)
            else:
                self.done.errback(reason)


async def _exec_throughput(reactor, binary, env, pod, size):
    count = _Count()
    started = time.monotonic()
    reactor.spawnProcess(count, binary, [binary, "exec", pod, "--", "head", "-c", str(size), "/dev/zero"], env=env)
    code = await count.ended
    elapsed = time.monotonic() - started
    if code != 0 or count.stdout != size:
        raise RuntimeError(f"exec moved {count.stdout} of {size} bytes, exit {code}: {bytes(count.stderr[-300:])}")
    return size / elapsed / 2**20


async def _port_forward_throughput(reactor, binary, env, pod, remote, size):
    count = _Count()
    local = free_port()
    transport = reactor.spawnProcess(
        count, binary, [binary, "port-forward", f"pod/{pod}", f"{local}:{remote}"], env=env)
    try:
        client = _EchoClient(size)
        await wait_until(lambda: b"Forwarding from" in count.head, 60, interval=0.1, reactor=reactor)
        started = time.monotonic()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", local), client)
        received = await client.done
        elapsed = time.monotonic() - started
        if received != size:
            raise RuntimeError(f"port-forward echoed {received} of {size} bytes")
        return size / elapsed / 2**20
    finally:
        transport.signalProcess("TERM")
        await count.ended


async def _sessions_per_second(reactor, endpoint, pod, total, concurrency):
    request = (
        f"POST /api/v1/namespaces/default/pods/{pod}/exec?command=true&stdout=true HTTP/1.1\r\n"
        "Host: kube\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        "X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    remaining = iter(range(total))

    async def worker():
        for _ in remaining:
            session = _SpdyExec(request)
            await connectProtocol(endpoint, session)
            await session.done

    started = time.monotonic()
    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(concurrency)], consumeErrors=True)
    return total / (time.monotonic() - started)


async def _recordings_uploaded(reactor, d):
    """Wait until the agent's recordings spool is empty: a measurement must
    not pay for the upload of the previous one's recording."""
    spool = d.path("agent-data", "kube", "recordings")
    await wait_until(lambda: not os.path.isdir(spool) or not os.listdir(spool), 600, interval=0.2, reactor=reactor)


class _Profiled(Sampled):
    """One phase: every process's CPU seconds are printed (the stand-in's
    commands count with the bench process that waited for them); with a
    directory, py-spy also samples the Python processes (the samplers' own
    CPU then counts with the bench process too)."""

    def __enter__(self):
        super().__enter__()
        self.cpu = {name: cpu_seconds(pid, children=True) for name, pid in self.pids.items()}
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc_info):
        elapsed = time.monotonic() - self.started
        used = {name: cpu_seconds(pid, children=True) - self.cpu[name] for name, pid in self.pids.items()}
        print(f"{self.phase}: {elapsed:.1f} s, CPU seconds " +
              ", ".join(f"{name} {seconds:.1f}" for name, seconds in used.items()), flush=True)
        super().__exit__(*exc_info)


def _tls(pem_files, hostname):
    cert, key, ca = pem_files
    return optionsForClientTLS(hostname, trustRoot=Certificate.loadPEM(ca),
                               clientCertificate=PrivateCertificate.loadPEM(key + cert))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


async def main(reactor, args):
    harness = Harness(tempfile.mkdtemp(prefix="exec_bench."))
    try:
        d = await Deployment(harness, harness.root).start()
        await d.plane.apply(SESSIONS_RBAC)
        await d.tctl("create", "-f", d.write("sessions.yaml", SESSIONS_ROLE))
        await d.add_user("alice", "access")
        await d.tctl("users", "update", "alice", "--set-roles=access,kube-sessions")
        await d.login("alice")
        await d.wait_for_clusters({"my-cluster"})
        if not args.record_output:
            with open(d.agent_config, "a") as f:
                f.write("  record_exec_output: false\n")
            await d.agent.stop()
            await d.start_agent()
            await d.wait_for_clusters({"my-cluster"})
        await d.tsh("kube", "login", "my-cluster")
        standin = KubeletStandin(reactor, d.path("pod-root"), websocket=True)
        os.makedirs(d.path("pod-root"))
        harness.addCleanup(standin.stop)
        await register_node(d.plane, "bench-node", await standin.start())
        await create_running_pod(d.plane, "bench-pod", "default", "bench-node")
        echo = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(protocol.Factory.forProtocol(Echo))
        harness.addCleanup(echo.stopListening)

        binary = kubectl_binaries()[-1]
        direct_env = dict(d.env(), KUBECONFIG=d.plane.admin_kubeconfig)
        paths = {"direct": direct_env, "teleport_py": d.env()}
        await d.kubectl("exec", "bench-pod", "--", "true", binary=binary)  # issues alice's kube certificate

        keys = glob.glob(d.path("home", ".tsh", "keys", "*", "alice"))[0]
        admin = d.plane.issue_client_certificate("admin", ("system:masters",))
        endpoints = {
            "direct": SSL4ClientEndpoint(reactor, "127.0.0.1", d.plane.port, _tls(
                (admin.cert_pem, admin.key_pem, d.plane.serving_ca.cert_pem), "localhost")),
            "teleport_py": SSL4ClientEndpoint(reactor, "127.0.0.1", d.proxy_port, _tls(
                (_read(f"{keys}/kube/my-cluster/cert.pem"), _read(f"{keys}/key.pem"), _read(f"{keys}/host_ca.pem")),
                "kube-teleport-proxy-alpn.teleport.cluster.local")),
        }

        size = args.mb * 2**20
        results = {}
        processes = {"agent": d.agent.pid, "auth-proxy": d.main.pid, "apiserver": d.plane.apiserver.pid,
                     "etcd": d.plane.etcd.pid, "bench+stand-in": os.getpid()}
        for name, env in paths.items():
            if args.only not in (None, name):
                continue
            runs = []
            for _ in range(args.runs):
                await _recordings_uploaded(reactor, d)
                with _Profiled(reactor, args.profile, f"{name}-exec", processes, blocking=args.profile_blocking):
                    runs.append(await _exec_throughput(reactor, binary, env, "bench-pod", size))
                    await _recordings_uploaded(reactor, d)  # the recording's upload is part of its cost
            results[name, "exec MiB/s"] = max(runs)
            runs = []
            for _ in range(args.runs):
                await _recordings_uploaded(reactor, d)
                with _Profiled(reactor, args.profile, f"{name}-port-forward", processes, blocking=args.profile_blocking):
                    runs.append(await _port_forward_throughput(
                        reactor, binary, env, "bench-pod", echo.getHost().port, size // 2))
                    await _recordings_uploaded(reactor, d)
            results[name, "port-forward MiB/s"] = max(runs)
            for concurrency in args.concurrency if args.sessions else ():
                await _recordings_uploaded(reactor, d)
                with _Profiled(reactor, args.profile, f"{name}-sessions-x{concurrency}", processes,
                               blocking=args.profile_blocking):
                    results[name, f"sessions/s x{concurrency}"] = await _sessions_per_second(
                        reactor, endpoints[name], "bench-pod", args.sessions, concurrency)

        print(f"kubectl {binary}, {args.mb} MiB exec, {args.mb // 2} MiB each way port-forward, "
              f"{args.sessions} sessions, best of {args.runs} for throughput")
        print(f"{'metric':24} {'direct':>10} {'teleport_py':>12} {'ratio':>7}")
        for metric in sorted({m for _, m in results}):
            direct, through = results.get(("direct", metric), 0.0), results.get(("teleport_py", metric), 0.0)
            ratio = f"{through / direct:7.2f}" if direct and through else "      -"
            print(f"{metric:24} {direct:10.1f} {through:12.1f} {ratio}")
    except BaseException:
        await harness.close(keep=True)
        raise
    await harness.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--mb", type=int, default=300, help="MiB through exec (half of it each way for port-forward)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=200, help="0 skips the sessions/s phases")
    parser.add_argument("--no-record-output", dest="record_output", action="store_false",
                        help="the agent does not record non-interactive exec output")
    parser.add_argument("--profile", metavar="DIR", help="py-spy stacks and CPU seconds per process and phase")
    parser.add_argument("--profile-blocking", action="store_true",
                        help="sample in py-spy's blocking mode: a truer CPU breakdown (nonblocking over-weights "
                             "system calls), at the price of slower processes while sampled")
    parser.add_argument("--concurrency", type=lambda v: [int(n) for n in v.split(",")], default=[1, 8],
                        help="sessions at once, comma-separated (default 1,8)")
    parser.add_argument("--only", choices=("direct", "teleport_py"), help="measure one path")
    options = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))
