"""Command-line options shared by every twistd plugin of teleport_py."""
from __future__ import annotations

import atexit
import os
import sys

from twisted.python import usage

from teleport_py.config import Config, ConfigError, load_config


class ServiceOptions(usage.Options):
    optParameters = [
        ["config", "c", None, "Path to the teleport.yaml configuration file (default: embedded defaults)."],
    ]

    def postOptions(self):
        try:
            self.loaded: Config = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(f"configuration error: {e}") from None


def require(enabled, what: str, config: Config):
    """A single-role plugin refuses a config that disables its own role."""
    if enabled is None:
        raise usage.UsageError(f"{what} is disabled in {config.source}")
    return enabled


def single_role_service(options: ServiceOptions, reactor, section: str, build):
    """
    What every single-role plugin's makeService does: refuse a config that
    disables the role (``section``, e.g. ``"proxy_service"``), build the
    service with ``build(reactor, config)``, and, when twistd made it (no
    reactor passed), exit non-zero if it cannot start.
    """
    under_twistd = reactor is None
    if under_twistd:
        from twisted.internet import reactor
    config = options.loaded
    require(getattr(config, _CONFIG_FIELDS[section]), section, config)
    made = build(reactor, config)
    if under_twistd:
        exit_nonzero_if_start_fails(made)
    return made


_CONFIG_FIELDS = {"auth_service": "auth", "proxy_service": "proxy", "kubernetes_service": "kube"}


def exit_nonzero_if_start_fails(*services) -> None:
    """
    twistd exits 0 whenever its reactor stops, and a service that cannot
    start (port taken, auth unreachable, token refused) stops it: make that
    exit code 1 instead, so systemd's ``Restart=on-failure`` and anyone
    scripting twistd see the failure. Only for services made by twistd (the
    plugins' makeService without a reactor), never in a test process.
    """

    def failed(failure):
        atexit.register(_exit_failed)
        return failure

    for svc in services:
        ready = getattr(svc, "ready", None)
        if ready is not None:
            ready.addErrback(failed)


def _exit_failed() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
