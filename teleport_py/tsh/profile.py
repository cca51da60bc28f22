"""The tsh profile store: who is logged in where, and the keys and certificates that prove it.

Layout under ``$TELEPORT_HOME`` (default ``~/.tsh``), see docs/tsh.md::

    current-profile                      name of the active profile (proxy host:port)
    profiles/<proxy>.json                Profile as JSON
    keys/<proxy>/<user>/                 IdentityFile: key.pem, cert.pem, user_ca.pem, host_ca.pem
    keys/<proxy>/<user>/kube/<kube>/cert.pem

Everything is written through ``write_private_file`` (0600, atomic, parent
directories 0700), so a crash never leaves a half-written key, and other local
users never see one. kubectl runs ``tsh kube credentials`` many times at once:
``lock`` serializes check-and-reissue between processes with ``fcntl.flock``.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from pathlib import Path

from attrs import asdict, field, frozen
from cryptography import x509

from teleport_py.identityfile import IdentityFile
from teleport_py.pki import certificate_pem, load_certificate_pem, make_private_dirs, write_private_file

LOCK_POLL_SECONDS = 0.02
DEFAULT_PROXY_PORT = 3080


class ProfileError(Exception):
    """The store has no usable profile or certificate for what was asked; the message says what to run."""


def _path_component(instance, attribute, value: str) -> None:
    """Names become directory names: nothing that could climb out of the store."""
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\0" in value:
        raise ValueError("%s is not usable as a file name: %r" % (attribute.name, value))


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
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ProfileError("invalid kubernetes cluster name %r" % (name,))
    return name


@frozen
class Profile:
    proxy: str = field(validator=_path_component)
    user: str = field(validator=_path_component)
    cluster: str
    kube_cluster: str = ""
    insecure: bool = False

    @property
    def proxy_host(self) -> str:
        return self.proxy.rsplit(":", 1)[0].strip("[]")

    @property
    def proxy_port(self) -> int:
        return int(self.proxy.rsplit(":", 1)[1])


def default_home(environ=os.environ) -> Path:
    return Path(environ.get("TELEPORT_HOME") or Path.home() / ".tsh")


class ProfileStore:
    def __init__(self, home: str | os.PathLike[str]):
        self.home = Path(home)

    # -- profiles -------------------------------------------------------------

    @staticmethod
    def _dir_name(proxy: str) -> str:
        """``host:port`` as a path component without ':' (KUBECONFIG and PATH-like
        variables split on it, so a kubeconfig under such a directory breaks)."""
        return proxy.replace("[", "").replace("]", "").replace(":", "_")

    def _profile_path(self, proxy: str) -> Path:
        return self.home / "profiles" / ("%s.json" % self._dir_name(proxy))

    def save_profile(self, profile: Profile) -> None:
        """Store the profile and make it the current one."""
        write_private_file(self._profile_path(profile.proxy), json.dumps(asdict(profile), indent=2).encode())
        write_private_file(self.home / "current-profile", profile.proxy.encode() + b"\n")

    def profile(self, proxy: str | None = None) -> Profile:
        """The named profile, or the current one; ProfileError tells the user to log in."""
        if proxy is None:
            proxy = self.current_proxy()
        try:
            data = json.loads(self._profile_path(proxy).read_bytes())
            return Profile(**data)
        except FileNotFoundError:
            raise ProfileError("not logged in to %s; run 'tsh login --proxy=%s'" % (proxy, proxy)) from None
        except (ValueError, TypeError) as error:
            raise ProfileError("profile for %s is damaged (%s); run 'tsh login' again" % (proxy, error)) from None

    def current_proxy(self) -> str:
        try:
            proxy = (self.home / "current-profile").read_text().strip()
        except FileNotFoundError:
            proxy = ""
        if not proxy:
            raise ProfileError("not logged in; run 'tsh login --proxy=HOST:PORT --user=NAME'")
        return proxy

    def remove(self, profile: Profile) -> None:
        """Forget the profile and delete its keys (every certificate with them)."""
        shutil.rmtree(self.key_dir(profile), ignore_errors=True)
        self._profile_path(profile.proxy).unlink(missing_ok=True)
        with contextlib.suppress(ProfileError):
            if self.current_proxy() == profile.proxy:
                (self.home / "current-profile").unlink(missing_ok=True)

    # -- keys and certificates -------------------------------------------------

    def key_dir(self, profile: Profile) -> Path:
        return self.home / "keys" / self._dir_name(profile.proxy) / profile.user

    def save_login(self, profile: Profile, identity: IdentityFile) -> None:
        """A new login replaces the key, so certificates issued for the old key go."""
        shutil.rmtree(self.key_dir(profile) / "kube", ignore_errors=True)
        make_private_dirs(self.key_dir(profile))
        identity.save(os.fspath(self.key_dir(profile)))
        self.save_profile(profile)

    def identity(self, profile: Profile) -> IdentityFile:
        directory = self.key_dir(profile)
        if not IdentityFile.exists(os.fspath(directory)):
            raise ProfileError("no keys for %s; run 'tsh login --proxy=%s'" % (profile.proxy, profile.proxy))
        try:
            return IdentityFile.load(os.fspath(directory))
        except (OSError, ValueError) as error:
            raise ProfileError("cannot read keys in %s (%s); run 'tsh login' again" % (directory, error)) from None

    def _kube_cert_path(self, profile: Profile, kube_cluster: str) -> Path:
        return self.key_dir(profile) / "kube" / check_kube_cluster_name(kube_cluster) / "cert.pem"

    def save_kube_certificate(self, profile: Profile, kube_cluster: str, certificate: x509.Certificate) -> None:
        write_private_file(self._kube_cert_path(profile, kube_cluster), certificate_pem(certificate))

    def kube_certificate(self, profile: Profile, kube_cluster: str) -> x509.Certificate | None:
        """The stored certificate routed to ``kube_cluster``, or None (missing or unreadable)."""
        try:
            return load_certificate_pem(self._kube_cert_path(profile, kube_cluster).read_bytes())
        except (OSError, ValueError):
            return None

    # -- locking -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, profile: Profile, reactor):
        """Exclusive between processes; waits by polling so the reactor keeps running."""
        from twisted.internet.task import deferLater  # only commands that may reissue lock

        path = self.key_dir(profile) / ".lock"
        make_private_dirs(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while not _try_lock(fd):
                await deferLater(reactor, LOCK_POLL_SECONDS)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True
