"""Command-line options shared by every twistd plugin of teleport_py."""
from __future__ import annotations

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
