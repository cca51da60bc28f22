"""What one idle TLS connection costs in memory, before any of our code.

Every open watch holds two TLS connections in this design (kubectl to the
proxy, the agent to the API server), so this floor bounds the memory per
watch that bench/kube_path.py measures. Pairs of pyOpenSSL connections made
from the contexts our ``teleport_py.pki`` builds complete a handshake through
memory BIOs, exchange a few bytes and stay open; the process's RSS growth is
divided by the number of pairs. No sockets, no Twisted, no Python protocol
objects: only OpenSSL's own state.

    .venv/bin/python bench/tls_connection_memory.py [--pairs 1000]
"""
from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from OpenSSL import SSL

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from teleport_py.pki import (  # noqa: E402
    CertAuthority,
    HostIdentity,
    client_tls_options,
    generate_private_key,
    server_tls_options,
)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def contexts(release_buffers: bool, tls12: bool) -> tuple[SSL.Context, SSL.Context]:
    now = datetime.now(timezone.utc)
    ca = CertAuthority.generate("host", "bench", now)
    key = generate_private_key()
    identity = HostIdentity(host_id="api", nodename="api", system_role="kube", teleport_cluster="bench")
    cert = ca.issue_host_certificate(key.public_key(), identity, now, now + timedelta(hours=1),
                                     ip_addresses=["127.0.0.1"])
    server = server_tls_options(cert, key, trusted_cas=[], require_client_certificate=False).getContext()
    client = client_tls_options("127.0.0.1", trusted_cas=[ca.certificate]).context
    if not release_buffers:
        for context in (server, client):
            context.clear_mode(SSL.MODE_RELEASE_BUFFERS)
    if tls12:
        server.set_max_proto_version(SSL.TLS1_2_VERSION)
    return server, client


def _pump(source: SSL.Connection, sink: SSL.Connection) -> None:
    try:
        while True:
            sink.bio_write(source.bio_read(65536))
    except SSL.WantReadError:
        pass


def connected_pair(server_context: SSL.Context, client_context: SSL.Context):
    server = SSL.Connection(server_context, None)
    server.set_accept_state()
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    for _ in range(10):
        for one, other in ((client, server), (server, client)):
            try:
                one.do_handshake()
            except SSL.WantReadError:
                pass
            _pump(one, other)
    client.sendall(b"x" * 100)
    _pump(client, server)
    if server.recv(1000) != b"x" * 100:
        raise RuntimeError("handshake did not complete")
    return server, client


def per_pair_kib(pairs: int, release_buffers: bool, tls12: bool) -> float:
    server_context, client_context = contexts(release_buffers, tls12)
    kept = [connected_pair(server_context, client_context) for _ in range(20)]  # warm up allocators
    gc.collect()
    before = rss_kib()
    kept += [connected_pair(server_context, client_context) for _ in range(pairs)]
    gc.collect()
    return (rss_kib() - before) / pairs


VARIANTS = {"tls1.3-keep-buffers": (False, False), "tls1.3-release-buffers": (True, False),
            "tls1.2-release-buffers": (True, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--variant", choices=VARIANTS, help="measure one variant (each runs in its own process, "
                        "since memory freed by one would be reused by the next)")
    options = parser.parse_args()
    if options.variant:
        kib = per_pair_kib(options.pairs, *VARIANTS[options.variant])
        print(f"{options.variant:24} {kib:6.1f} KiB per connected pair, {kib / 2:5.1f} KiB per connection end")
        return
    print(SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode())
    for variant in VARIANTS:
        subprocess.run([sys.executable, __file__, "--pairs", str(options.pairs), "--variant", variant], check=True)

if __name__ == "__main__":
    main()
