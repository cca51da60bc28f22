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

    def __init__(self, reactor, workdir: str, tls: bool = False):
        self._reactor = reactor
        self.workdir = workdir
        self.tls = tls
        self.port = free_port()
        self.peer_port = free_port()
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.process: ManagedProcess | None = None
        self.files: dict[str, str] = {}
        if tls:
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
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            kube_tool("etcd"),
            f"--data-dir={os.path.join(self.workdir, 'data')}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
        ]
        if self.tls:
            args += [
                f"--cert-file={self.files['server.pem']}",
                f"--key-file={self.files['server-key.pem']}",
                f"--trusted-ca-file={self.files['ca.pem']}",
                "--client-cert-auth",
            ]
        return args

    @defer.inlineCallbacks
    def start(self):
        self.process = ManagedProcess(self.args(), os.path.join(self.workdir, "etcd.log"), reactor=self._reactor)
        self.process.start()
        yield self.process.wait_for_port(self.port, ETCD_READY_TIMEOUT)
        # The port opens before the member has elected itself leader.
        yield self.process.wait_for_output(r"ready to serve client requests|serving client requests", ETCD_READY_TIMEOUT)
        return self

    def stop(self):
        return self.process.stop() if self.process else defer.succeed(None)

    def kill9(self):
        return self.process.kill9()


def shared_etcd(reactor=None, tls: bool = False):
    """The run's etcd for this reactor and TLS mode; fires with the started EtcdServer."""
    reactor = default_reactor(reactor)
    return shared_service(reactor, ("etcd", tls), lambda: EtcdServer(
        reactor, tempfile.mkdtemp(prefix="teleport_py_etcd."), tls=tls))
