"""tsh: the user's CLI. Log in once, then reach Kubernetes clusters with plain kubectl.

This module is the entry point (console script ``tsh``) and imports only
the standard library: kubectl runs ``tsh kube credentials`` before every
command and waits for it, so the request exactly as ``tsh kube login``
writes it into the kubeconfig is recognized here without argparse, and a
good cached credential answers it (teleport_py.tsh.credentialcache) with
nothing else imported; tests.test_tsh_credentials pins the modules that
path loads. Every other command line goes to the argparse grammar in
teleport_py.tsh.cli, and every other command runs in teleport_py.tsh.commands.
"""
from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

#: ``tsh kube credentials`` options as the kubeconfig passes them, and their argparse ``dest``.
_CREDENTIALS_OPTIONS = {"--kube-cluster": "kube_cluster", "--teleport-cluster": "teleport_cluster", "--proxy": "proxy"}


def plain_credentials_request(argv) -> SimpleNamespace | None:
    """
    ``kube credentials`` with only ``--kube-cluster=``, ``--teleport-cluster=``
    and ``--proxy=`` options, each at most once and written with ``=`` (as
    ``tsh kube login`` writes them), read as argparse reads them; None for
    any other command line, which then goes to argparse.
    """
    argv = list(argv)
    if argv[:2] != ["kube", "credentials"]:
        return None
    values = {"teleport_cluster": None, "proxy": None}
    seen = set()
    for arg in argv[2:]:
        name, equals, value = arg.partition("=")
        dest = _CREDENTIALS_OPTIONS.get(name)
        if not equals or dest is None or dest in seen:
            return None
        seen.add(dest)
        values[dest] = value
    if "kube_cluster" not in seen:
        return None
    return SimpleNamespace(command="kube", kube_command="credentials", **values)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    request = plain_credentials_request(argv)
    if request is not None:
        from teleport_py.tsh.credentialcache import read_credential_cache

        credential = read_credential_cache(request, os.environ)
        if credential is not None:
            _print_credential(credential)
            return
    from teleport_py.tsh.cli import parser

    args = parser().parse_args(argv)
    if args.command == "kube" and args.kube_command == "credentials":
        from teleport_py.tsh.credentials import cached_exec_credential

        credential = cached_exec_credential(args, os.environ)
        if credential is not None:
            _print_credential(credential)
            return
    from teleport_py.tsh.commands import run

    run(args)


def _print_credential(credential: dict) -> None:
    sys.stdout.write(json.dumps(credential, indent=2) + "\n")
    sys.stdout.flush()
