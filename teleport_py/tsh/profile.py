"""The tsh profile store: who is logged in where, and the keys and certificates that prove it.

Where each file lives is teleport_py.tsh.layout (docs/tsh.md). Everything is
written through ``write_private_file`` (0600, atomic, parent directories
0700), so a crash never leaves a half-written key, and other local users
never see one. kubectl runs ``tsh kube credentials`` many times at once:
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
from teleport_py.pki import (
    certificate_pem,
    load_certificate_pem,
    make_private_dirs,
    private_key_pem,
    write_private_file,
)
from teleport_py.tsh.credentialcache import credential_cache
from teleport_py.tsh.layout import (
    CERTIFICATE_FILE,
    CREDENTIAL_CACHE_FILE,
    KEY_FILE,
    ProfileError,
    StoreLayout,
    is_path_component,
)

LOCK_POLL_SECONDS = 0.02


def _path_component(instance, attribute, value: str) -> None:
    if not is_path_component(value):
        raise ValueError("%s is not usable as a file name: %r" % (attribute.name, value))


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


class ProfileStore:
    def __init__(self, home: str | os.PathLike[str]):
        self.home = Path(home)
        self.layout = StoreLayout(home)

    # -- profiles -------------------------------------------------------------

    def save_profile(self, profile: Profile) -> None:
        """Store the profile and make it the current one."""
        write_private_file(self.layout.profile_path(profile.proxy), json.dumps(asdict(profile), indent=2).encode())
        write_private_file(self.layout.current_profile_path(), profile.proxy.encode() + b"\n")

    def profile(self, proxy: str | None = None) -> Profile:
        """The named profile, or the current one; ProfileError tells the user to log in."""
        if proxy is None:
            proxy = self.current_proxy()
        fields = self.layout.profile_fields(proxy)
        try:
            return Profile(**fields)
        except (ValueError, TypeError) as error:
            raise ProfileError("profile for %s is damaged (%s); run 'tsh login' again" % (proxy, error)) from None

    def current_proxy(self) -> str:
        return self.layout.current_proxy()

    def remove(self, profile: Profile) -> None:
        """Forget the profile and delete its keys (every certificate with them)."""
        shutil.rmtree(self.key_dir(profile), ignore_errors=True)
        Path(self.layout.profile_path(profile.proxy)).unlink(missing_ok=True)
        with contextlib.suppress(ProfileError):
            if self.current_proxy() == profile.proxy:
                Path(self.layout.current_profile_path()).unlink(missing_ok=True)

    # -- keys and certificates -------------------------------------------------

    def key_dir(self, profile: Profile) -> Path:
        return Path(self.layout.key_dir(profile.proxy, profile.user))

    def save_login(self, profile: Profile, identity: IdentityFile) -> None:
        """A new login replaces the key, so certificates issued for the old key
        (and their cached credentials) go first."""
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

    def _kube_dir(self, profile: Profile, kube_cluster: str) -> Path:
        return Path(self.layout.kube_dir(profile.proxy, profile.user, kube_cluster))

    def save_kube_certificate(self, profile: Profile, kube_cluster: str, certificate: x509.Certificate) -> None:
        write_private_file(self._kube_dir(profile, kube_cluster) / CERTIFICATE_FILE, certificate_pem(certificate))

    def kube_certificate(self, profile: Profile, kube_cluster: str) -> x509.Certificate | None:
        """The stored certificate routed to ``kube_cluster``, or None (missing or unreadable)."""
        try:
            return load_certificate_pem((self._kube_dir(profile, kube_cluster) / CERTIFICATE_FILE).read_bytes())
        except (OSError, ValueError):
            return None

    def save_credential_cache(self, profile: Profile, identity: IdentityFile, kube_cluster: str,
                              certificate: x509.Certificate) -> bool:
        """
        Write ``kube/<kube_cluster>/credential.json``, the ExecCredential for
        ``certificate`` that teleport_py.tsh.credentialcache answers kubectl
        from. The caller holds the lock and has checked ``certificate`` (ours,
        signed, routed to ``kube_cluster``, saved as the stored certificate).
        Nothing is written when ``identity`` is no longer this profile's login
        (a logout or a new login since it was read), nor when the file already
        says exactly this; returns whether it now does.
        """
        key_pem, login_certificate_pem = private_key_pem(identity.private_key), certificate_pem(identity.certificate)
        try:
            if ((self.key_dir(profile) / KEY_FILE).read_bytes() != key_pem
                    or (self.key_dir(profile) / CERTIFICATE_FILE).read_bytes() != login_certificate_pem):
                return False
        except OSError:
            return False
        cache = credential_cache(
            proxy=profile.proxy,
            user=profile.user,
            teleport_cluster=profile.cluster,
            kube_cluster=kube_cluster,
            login_certificate_pem=login_certificate_pem.decode(),
            login_expires=int(identity.expires.timestamp()),
            certificate_pem=certificate_pem(certificate).decode(),
            key_pem=key_pem.decode(),
            expires=int(certificate.not_valid_after_utc.timestamp()),
        )
        path = self._kube_dir(profile, kube_cluster) / CREDENTIAL_CACHE_FILE
        with contextlib.suppress(OSError):
            if path.read_bytes() == cache:
                return True
        write_private_file(path, cache)
        return True

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

    @contextlib.contextmanager
    def lock_if_free(self, profile: Profile):
        """The same lock taken at once or not at all, for a process without a
        reactor: yields whether it is held. Creates no directory (after a
        logout there is nothing left to write under it)."""
        try:
            fd = os.open(self.key_dir(profile) / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:
            yield False
            return
        try:
            yield _try_lock(fd)
        finally:
            os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True
