"""Where the tsh profile store keeps each file, and the names it accepts.

Standard library only, and light: ``tsh kube credentials`` reads the store
through this module before anything heavy is imported (kubectl runs it
before every command; teleport_py.tsh.credentialcache).
tests.test_tsh_credentials pins what that path imports. The store itself
(writing, keys, certificates, locking) is teleport_py.tsh.profile.

Layout under ``$TELEPORT_HOME`` (default ``~/.tsh``), see docs/tsh.md::

    current-profile                      name of the active profile (proxy host:port)
    profiles/<proxy>.json                the Profile as JSON
    keys/<proxy>/<user>/                 IdentityFile: key.pem, cert.pem, user_ca.pem, host_ca.pem
    keys/<proxy>/<user>/kube/<kube>/     cert.pem, credential.json
"""
from __future__ import annotations

import json
import os

DEFAULT_PROXY_PORT = 3080
KEY_FILE = "key.pem"
#: The login certificate in a key directory, a kube certificate in its kube directory.
CERTIFICATE_FILE = "cert.pem"
CREDENTIAL_CACHE_FILE = "credential.json"


class ProfileError(Exception):
    """The store has no usable profile or certificate for what was asked; the message says what to run."""


def is_path_component(name) -> bool:
    """Names become directory names: nothing that could climb out of the store."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def normalize_proxy(address: str) -> str:
    """``--proxy`` as the ``host:port`` that names its profile (port 3080 when left out)."""
    if not address or "/" in address:
        raise ProfileError("--proxy must be host:port, got %r" % (address,))
    host, colon, port = address.rpartition(":")
    if not colon or "]" in port:
        return "%s:%d" % (address, DEFAULT_PROXY_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ProfileError("--proxy must be host:port, got %r" % (address,))
    return address


def check_kube_cluster_name(name: str) -> str:
    """A kube cluster name that is safe as a directory name (it comes from the user or the server)."""
    if not is_path_component(name):
        raise ProfileError("invalid kubernetes cluster name %r" % (name,))
    return name


def default_home(environ=os.environ) -> str:
    return environ.get("TELEPORT_HOME") or os.path.join(os.path.expanduser("~"), ".tsh")


def proxy_dir_name(proxy: str) -> str:
    """``host:port`` as a path component without ':' (KUBECONFIG and PATH-like
    variables split on it, so a kubeconfig under such a directory breaks)."""
    return proxy.replace("[", "").replace("]", "").replace(":", "_")


class StoreLayout:
    """The paths of one store, and reading the two small files that say who is logged in where."""

    def __init__(self, home: str | os.PathLike[str]):
        self.home = os.fspath(home)

    def current_profile_path(self) -> str:
        return os.path.join(self.home, "current-profile")

    def profile_path(self, proxy: str) -> str:
        return os.path.join(self.home, "profiles", "%s.json" % proxy_dir_name(proxy))

    def key_dir(self, proxy: str, user: str) -> str:
        return os.path.join(self.home, "keys", proxy_dir_name(proxy), user)

    def kube_dir(self, proxy: str, user: str, kube_cluster: str) -> str:
        return os.path.join(self.key_dir(proxy, user), "kube", check_kube_cluster_name(kube_cluster))

    def current_proxy(self) -> str:
        try:
            with open(self.current_profile_path()) as f:
                proxy = f.read().strip()
        except FileNotFoundError:
            proxy = ""
        if not proxy:
            raise ProfileError("not logged in; run 'tsh login --proxy=HOST:PORT --user=NAME'")
        return proxy

    def profile_fields(self, proxy: str) -> dict:
        """The stored profile's JSON object; ProfileError tells the user to log in."""
        try:
            with open(self.profile_path(proxy), "rb") as f:
                fields = json.loads(f.read())
        except FileNotFoundError:
            raise ProfileError("not logged in to %s; run 'tsh login --proxy=%s'" % (proxy, proxy)) from None
        except ValueError as error:
            raise ProfileError("profile for %s is damaged (%s); run 'tsh login' again" % (proxy, error)) from None
        if not isinstance(fields, dict):
            raise ProfileError("profile for %s is damaged (not an object); run 'tsh login' again" % (proxy,))
        return fields
