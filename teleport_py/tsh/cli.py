"""tsh's command line: the argparse grammar of every command (docs/tsh.md).

teleport_py.tsh.main imports this only when the cached credential cannot
answer: building this parser imports argparse, gettext, locale and shutil,
several milliseconds that kubectl would wait for before every command.
"""
from __future__ import annotations

import argparse
import getpass


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tsh", description="Teleport-style client: log in and reach Kubernetes clusters.")
    sub = p.add_subparsers(dest="command", required=True)

    login = sub.add_parser("login", help="log in to a cluster through its proxy")
    login.add_argument("--proxy", required=True, help="proxy address host:port")
    login.add_argument("--user", default=getpass.getuser(), help="Teleport user name (default: local user)")
    login.add_argument("--ttl", default=None, help="requested certificate lifetime, e.g. 12h (capped by your roles)")
    login.add_argument("--insecure", action="store_true", help="do not verify the proxy's certificate (testing only)")
    login.add_argument("--request-id", action="append", default=[], metavar="ID",
                       help="log in with the roles of this approved access request (repeatable)")

    sub.add_parser("status", help="show the current login")
    sub.add_parser("logout", help="delete the current login's keys and kubeconfig entries")

    signup = sub.add_parser("signup", help="set your password from a sign-up link")
    signup.add_argument("--proxy", required=True, help="proxy address host:port")
    signup.add_argument("--insecure", action="store_true", help="do not verify the proxy's certificate (testing only)")
    signup.add_argument("token", help="the sign-up token or the whole link")

    kube = sub.add_parser("kube", help="Kubernetes clusters").add_subparsers(dest="kube_command", required=True)
    kube.add_parser("ls", help="list the Kubernetes clusters you can reach")
    kube_login = kube.add_parser("login", help="write a kubeconfig context for a cluster and select it")
    kube_login.add_argument("name")
    credentials = kube.add_parser("credentials", help="print an ExecCredential (kubectl runs this)")
    credentials.add_argument("--kube-cluster", required=True)
    credentials.add_argument("--teleport-cluster")
    credentials.add_argument("--proxy")

    proxy = sub.add_parser("proxy", help="local proxies").add_subparsers(dest="proxy_command", required=True)
    proxy_kube = proxy.add_parser("kube", help="a local Kubernetes proxy on 127.0.0.1")
    proxy_kube.add_argument("kube_clusters", nargs="*", metavar="CLUSTER", help="default: the selected cluster")
    proxy_kube.add_argument("--port", type=int, default=0, help="local port (default: any free port)")
    request = sub.add_parser("request", help="just-in-time access requests").add_subparsers(
        dest="request_command", required=True)
    request_create = request.add_parser(
        "create", help="request roles or resources, wait for the decision, then use them until the request expires")
    request_create.add_argument("--roles", default="", help="comma-separated roles to request")
    request_create.add_argument(
        "--resource", action="append", default=[], metavar="ID",
        help="resource id to request, e.g. /<teleport-cluster>/pod/<kube-cluster>/<namespace>/<pod> "
             "(repeatable; 'tsh request search' prints them)")
    request_create.add_argument("--reason", default="", help="why you need them (reviewers see it)")
    request_create.add_argument("--nowait", action="store_true", help="create the request and return at once")
    request.add_parser("ls", help="list your requests and those you may review")
    request_search = request.add_parser(
        "search", help="list resources you may request access to (through your roles' search_as_roles)")
    request_search.add_argument("--kind", required=True, choices=("kube_cluster", "namespace", "pod"),
                                help="the kind of resource to search for")
    request_search.add_argument("--kube-cluster", default="",
                                help="the kubernetes cluster to search (namespace and pod; default: the selected one)")
    request_search.add_argument("--kube-namespace", "--namespace", dest="kube_namespace", default="default",
                                help="the namespace to search for pods (default: default)")
    request_search.add_argument("--all-kube-namespaces", action="store_true", help="search pods in every namespace")
    request_search.add_argument("--search", default="",
                                help="comma-separated keywords a resource's name, namespace or labels must all contain")
    request_drop = request.add_parser(
        "drop", help="drop the elevated access of these requests (all of them without IDs, or with '*') "
                     "from your certificates")
    request_drop.add_argument("request_ids", nargs="*", metavar="ID",
                              help="request ids as 'tsh status' lists them under Active requests")
    request_show = request.add_parser("show", help="show one request with its reviews")
    request_show.add_argument("request_id", metavar="ID")
    request_review = request.add_parser("review", help="approve or deny someone else's request")
    decision = request_review.add_mutually_exclusive_group(required=True)
    decision.add_argument("--approve", action="store_true")
    decision.add_argument("--deny", action="store_true")
    request_review.add_argument("--reason", default="", help="why (the requester sees it)")
    request_review.add_argument("request_id", metavar="ID")

    recordings = sub.add_parser("recordings", help="recorded sessions").add_subparsers(
        dest="recordings_command", required=True)
    recordings.add_parser("ls", help="list the recorded sessions you may see")
    play = sub.add_parser("play", help="replay a recorded session")
    play.add_argument("session_id", help="the session id (see 'tsh recordings ls')")
    play.add_argument("--speed", type=_positive_float, default=1.0, help="playback speed (2 = twice as fast)")
    play.add_argument("--format", choices=("text", "json", "asciicast"), default="text",
                      help="text: the terminal output with its timing; json: one event per line, at once; "
                           "asciicast: asciicast v2 for any asciinema player, at once (as the web UI's download)")
    return p


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value
