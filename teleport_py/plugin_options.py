"""Command-line options shared by every twistd plugin of teleport_py."""
from __future__ import annotations

import os

from twisted.python import usage

from teleport_py.config import Config, ConfigError, load_config
from teleport_py.lifecycle import RoleService, refuse, run_under_twistd

#: twistd's own default, which every role run from one directory would share.
TWISTD_DEFAULT_PIDFILE = "twistd.pid"


class ServiceOptions(usage.Options):
    optParameters = [
        ["config", "c", None, "Path to the teleport.yaml configuration file (default: embedded defaults)."],
    ]

    def postOptions(self):
        try:
            self.loaded: Config = load_config(self["config"])
        except ConfigError as e:
            # One line, not twistd's usage text: the file is wrong, not the flags.
            refuse(f"configuration error: {e}")
        self._pidfile_in_data_dir()

    def _pidfile_in_data_dir(self) -> None:
        """twistd writes ./twistd.pid unless told otherwise, so two roles
        started from one directory (the README's auth+proxy and agent) clash:
        "Another twistd server is running". Unless ``--pidfile`` was given,
        each role keeps its pidfile in its own data dir, named after the
        plugin (``<data_dir>/teleport-kube.pid``); ``--pidfile=`` turns it off."""
        parent = getattr(self, "parent", None)
        if parent is None or parent.get("pidfile") != TWISTD_DEFAULT_PIDFILE:
            return
        data_dir = self.loaded.data_dir
        try:
            os.makedirs(data_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            refuse(f"teleport.data_dir {data_dir}: cannot create it: {e.strerror}")
        parent["pidfile"] = os.path.join(os.path.abspath(data_dir), f"{parent.subCommand}.pid")


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
    reactor passed), run it as twistd should (``lifecycle.run_under_twistd``).
    """
    under_twistd = reactor is None
    if under_twistd:
        from twisted.internet import reactor
    config = options.loaded
    try:
        require(getattr(config, _CONFIG_FIELDS[section]), section, config)
    except usage.UsageError as e:
        if under_twistd:
            refuse(str(e))
        raise
    made: RoleService = build(reactor, config)
    if under_twistd:
        run_under_twistd(made)
    return made


_CONFIG_FIELDS = {"auth_service": "auth", "proxy_service": "proxy", "kubernetes_service": "kube"}
