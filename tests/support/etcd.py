"""A real etcd (Debian's etcd-server 3.4) for backend tests: one per reactor
and TLS mode for the whole run, started on first use, stopped at shutdown.

Tests share it and keep apart by key prefix (``unique_prefix``). With
``tls=True`` it serves https only and requires a client certificate
(``--client-cert-auth``) signed by a CA the test run made; ``client_tls``
is what a client shows it, ``other_client_tls`` one from a CA etcd does not trust.
"""
from __future__ import annotations

import itertools
import os
import tempfile

from twisted.internet import defer

from teleport_py.backend.etcd_gateway import EtcdTLS
from teleport_py.pki import certificate_pem, private_key_pem
from tests.support.kubeenv import kube_tool
from tests.support.pki import authority, host_cert
from tests.support.procs import ManagedProcess, default_reactor, free_port, shared_service

ETCD_READY_TIMEOUT = 30.0
_counter = itertools.count()


def unique_prefix(name: str = "test") -> str:
    """A key prefix no other test in this run uses."""
    return f"/teleport_py_test/{os.getpid()}/{name}{next(_counter)}/"


class EtcdServer:
    """One etcd member on free 127.0.0.1 ports under ``workdir``."""

    def __init__(self, reactor, workdir: str, tls: bool = False, *, name: str = "default",
                 certificates: "EtcdServer | None" = None):
        """``name`` and ``certificates``: a member of an ``EtcdCluster``, its
        certificate files and client credentials copied from ``certificates``
        (the first member), so every member trusts one CA."""
        self._reactor = reactor
        self.workdir = workdir
        self.tls = tls
        self.name = name
        self.port = free_port()
        self.peer_port = free_port()
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        #: ``--initial-cluster``: this member alone unless an EtcdCluster sets it.
        self.initial_cluster = f"{name}={self.peer_url}"
        self.cluster_token = ""
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.process: ManagedProcess | None = None
        self.files: dict[str, str] = {}
        os.makedirs(workdir, exist_ok=True)
        if tls and certificates is not None:
            self.files = dict(certificates.files)
            self.client_tls = certificates.client_tls
            self.other_client_tls = certificates.other_client_tls
        elif tls:
            self._make_certificates()

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.workdir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self.files[name] = path
        return path

    def _make_certificates(self) -> None:
        ca = authority("host", "etcd")
        server, server_key = host_cert("etcd-server", ca)
        client, client_key = host_cert("etcd-client", ca)
        self._write("ca.pem", certificate_pem(ca.certificate))
        self._write("server.pem", certificate_pem(server))
        self._write("server-key.pem", private_key_pem(server_key))
        self._write("client.pem", certificate_pem(client))
        self._write("client-key.pem", private_key_pem(client_key))
        self.client_tls = EtcdTLS((ca.certificate,), client, client_key)
        stranger_ca = authority("host", "etcd", copy=1)
        stranger, stranger_key = host_cert("etcd-client", stranger_ca)
        self.other_client_tls = EtcdTLS((ca.certificate,), stranger, stranger_key)

    def args(self) -> list[str]:
        # On a restart with its data dir, etcd ignores the --initial-* flags
        # and rejoins the cluster it was a member of.
        args = [
            kube_tool("etcd"),
            f"--name={self.name}",
            f"--data-dir={os.path.join(self.workdir, 'data')}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
        ]
        if self.cluster_token:
            args.append(f"--initial-cluster-token={self.cluster_token}")
        if self.tls:
            args += [
                f"--cert-file={self.files['server.pem']}",
                f"--key-file={self.files['server-key.pem']}",
                f"--trusted-ca-file={self.files['ca.pem']}",
                "--client-cert-auth",
            ]
        return args

    def spawn(self) -> ManagedProcess:
        """Start the process (again, after a kill: same ports, same data dir)."""
        self.process = ManagedProcess(self.args(), os.path.join(self.workdir, "etcd.log"), reactor=self._reactor)
        return self.process.start()

    @defer.inlineCallbacks
    def start(self):
        self.spawn()
        yield self.process.wait_for_port(self.port, ETCD_READY_TIMEOUT)
        # The port opens before the member has elected itself leader.
        yield self.process.wait_for_output(r"ready to serve client requests|serving client requests", ETCD_READY_TIMEOUT)
        return self

    def stop(self):
        return self.process.stop() if self.process else defer.succeed(None)

    def kill9(self):
        return self.process.kill9()


class EtcdCluster:
    """``size`` etcd members on 127.0.0.1 forming one cluster, serving
    https with ``--client-cert-auth`` (one CA for all), each under its own
    directory of ``workdir``; peers talk plain http on loopback."""

    def __init__(self, reactor, workdir: str, size: int = 3):
        self._reactor = reactor
        first = EtcdServer(reactor, os.path.join(workdir, "etcd0"), tls=True, name="etcd0")
        self.members = [first] + [
            EtcdServer(reactor, os.path.join(workdir, f"etcd{i}"), tls=True, name=f"etcd{i}", certificates=first)
            for i in range(1, size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        token = f"teleport-py-{os.getpid()}-{next(_counter)}"
        for member in self.members:
            member.initial_cluster, member.cluster_token = initial, token
        self.files = first.files
        self.client_tls = first.client_tls

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    @defer.inlineCallbacks
    def start(self):
        # All at once: a member waits for a quorum before it serves.
        yield defer.gatherResults([m.start() for m in self.members], consumeErrors=True)
        return self

    def stop(self):
        return defer.gatherResults([m.stop() for m in self.members], consumeErrors=True)


def shared_etcd(reactor=None, tls: bool = False):
    """The run's etcd for this reactor and TLS mode; fires with the started EtcdServer."""
    reactor = default_reactor(reactor)
    return shared_service(reactor, ("etcd", tls), lambda: EtcdServer(
        reactor, tempfile.mkdtemp(prefix="teleport_py_etcd."), tls=tls))
