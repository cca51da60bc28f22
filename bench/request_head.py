"""What HTTP/1.1 framing costs the agent per small GET, step by step.

The agent's pass-through path runs h11 four times per request: it reads
kubectl's request head (server side), writes the request to the API server
(client side), reads the API server's response head, and writes that head
back to kubectl. Each step is timed alone here (CPU time, so a loaded machine
slows it less than wall time would), on kubectl's real head and a typical
API server response head, next to the strict parser of
kube/request_head.py for the first step. No sockets, no reactor.

    .venv/bin/python bench/request_head.py [--rounds 20000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import h11

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from teleport_py.kube.http1_client import ClientConnection  # noqa: E402
from teleport_py.kube.http1_server import ServerConnection  # noqa: E402
from teleport_py.kube.request_head import parse_request_head  # noqa: E402

KUBECTL_GET = (b"GET /api/v1/namespaces/default HTTP/1.1\r\nHost: 127.0.0.1:3026\r\n"
               b"User-Agent: kubectl/v1.37.0 (linux/amd64) kubernetes/0000000\r\n"
               b"Accept: application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;"
               b"g=meta.k8s.io,application/json\r\nKubectl-Command: kubectl get\r\n"
               b"Kubectl-Session: 0d0e3b1a-5b8f-4a43-9a3e-0e8b4c6f7a21\r\nAccept-Encoding: gzip\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nAudit-Id: 0d0e3b1a-5b8f-4a43-9a3e-0e8b4c6f7a21\r\nCache-Control: no-cache, private\r\n"
            b"Content-Type: application/json\r\nX-Kubernetes-Pf-Flowschema-Uid: 1f0e\r\n"
            b"X-Kubernetes-Pf-Prioritylevel-Uid: 2a1b\r\nDate: Sun, 06 Dec 2026 04:00:00 GMT\r\n"
            b"Content-Length: 285\r\n\r\n")
FORWARDED = [(b"host", b"127.0.0.1:6443"), (b"user-agent", b"kubectl/v1.37.0"), (b"accept", b"application/json"),
             (b"impersonate-user", b"alice"), (b"impersonate-group", b"dev"), (b"accept-encoding", b"gzip")]


def h11_read_request() -> None:
    http = h11.Connection(h11.SERVER)
    http.receive_data(KUBECTL_GET)
    http.next_event()
    http.next_event()


def strict_read_request() -> None:
    parse_request_head(KUBECTL_GET)


def h11_write_request() -> None:
    http = h11.Connection(h11.CLIENT)
    http.send(h11.Request(method=b"GET", target=b"/api/v1/namespaces/default", headers=FORWARDED))
    http.send(h11.EndOfMessage())


def h11_read_response() -> None:
    http = h11.Connection(h11.CLIENT)
    http.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")]))
    http.send(h11.EndOfMessage())
    http.receive_data(RESPONSE)
    http.next_event()


def h11_write_response() -> None:
    http = h11.Connection(h11.SERVER)
    http.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    http.next_event()
    http.next_event()
    response = h11.Connection(h11.CLIENT)
    response.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")]))
    response.receive_data(RESPONSE)
    http.send(response.next_event())


def ours_server_side() -> None:
    """What replaced h11 on kubectl's side: read the request, write the response head."""
    http = ServerConnection()
    http.receive_data(KUBECTL_GET)
    http.next_event()
    http.next_event()
    http.send(RESPONSE_EVENT)


def ours_client_side() -> None:
    """What replaced h11 on the API server's side: write the request, read the response head."""
    http = ClientConnection()
    http.send_request(b"GET", b"/api/v1/namespaces/default", FORWARDED)
    http.send_end()
    http.receive_data(RESPONSE)
    http.next_event()


def _response_event():
    http = h11.Connection(h11.CLIENT)
    http.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")]))
    http.receive_data(RESPONSE)
    return http.next_event()


RESPONSE_EVENT = _response_event()


def cpu_us(step, rounds: int) -> float:
    for _ in range(rounds // 10):
        step()
    started = time.process_time()
    for _ in range(rounds):
        step()
    return (time.process_time() - started) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20000)
    options = parser.parse_args()
    # A step that needs a connection in some state gets there with h11 (its
    # label says what else it includes): subtract the rows named.
    rows = [
        ("h11: read kubectl's request head (new connection)", cpu_us(h11_read_request, options.rounds)),
        ("strict parser (kube/request_head.py): same head", cpu_us(strict_read_request, options.rounds)),
        ("h11: write the request upstream", cpu_us(h11_write_request, options.rounds)),
        ("h11: read the response head (incl. writing a request)", cpu_us(h11_read_response, options.rounds)),
        ("h11: write the response head (incl. reading a request, a response)", cpu_us(h11_write_response, options.rounds)),
        ("ours (kube/http1_server.py): read the request, write the response head",
         cpu_us(ours_server_side, options.rounds)),
        ("ours (kube/http1_client.py): write the request, read the response head",
         cpu_us(ours_client_side, options.rounds)),
    ]
    print(f"load average {os.getloadavg()[0]:.1f}; CPU us per step, {options.rounds} rounds")
    for name, us in rows:
        print(f"{us:8.1f}  {name}")


if __name__ == "__main__":
    main()
