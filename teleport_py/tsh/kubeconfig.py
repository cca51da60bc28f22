"""Read-merge-write of the user's kubeconfig.

``tsh kube login`` adds its own cluster, context and user entries and leaves
everything else in the file alone (other clusters, preferences, extensions).
The file holds credentials in general, so it is written atomically with mode
0600. Like kubectl, the file we write is the first entry of ``KUBECONFIG``
(a colon-separated list), or ``~/.kube/config``.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import os
from collections.abc import Sequence
from pathlib import Path

import yaml
from teleport_py.pki import write_private_file
from teleport_py.tsh.credentialcache import EXEC_API_VERSION

KUBE_PROXY_SERVER_NAME = "kube-teleport-proxy-alpn.teleport.cluster.local"


class KubeconfigError(Exception):
    """The kubeconfig exists but is not something we can merge into without losing data."""


def kubeconfig_path(environ=os.environ) -> Path:
    for entry in environ.get("KUBECONFIG", "").split(os.pathsep):
        if entry:
            return Path(entry)
    return Path.home() / ".kube" / "config"


def load(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise KubeconfigError("%s is not valid YAML: %s" % (path, error)) from None
    if not isinstance(config, dict):
        raise KubeconfigError("%s is not a kubeconfig (expected a mapping)" % path)
    for section in ("clusters", "contexts", "users"):
        if not isinstance(config.get(section) or [], list):
            raise KubeconfigError("%s: %s is not a list" % (path, section))
    config.setdefault("apiVersion", "v1")
    config.setdefault("kind", "Config")
    return config


def save(path: Path, config: dict) -> None:
    write_private_file(path, yaml.safe_dump(config, default_flow_style=False, sort_keys=False).encode())


@contextlib.contextmanager
def locked(path: Path):
    """Serialize our own read-merge-write cycles on one kubeconfig (two tsh kube logins at once)."""
    lock_path = path.with_name(path.name + ".tsh-lock")
    lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def upsert_cluster(config: dict, name: str, *, server: str, ca_pem: bytes, tls_server_name: str) -> None:
    _upsert(config, "clusters", name, "cluster", {
        "server": server,
        "certificate-authority-data": base64.b64encode(ca_pem).decode(),
        "tls-server-name": tls_server_name,
    })


def upsert_context(config: dict, name: str, *, cluster: str, user: str) -> None:
    _upsert(config, "contexts", name, "context", {"cluster": cluster, "user": user})


def upsert_user(config: dict, name: str, user: dict) -> None:
    _upsert(config, "users", name, "user", user)


def exec_user(command: str, args: Sequence[str]) -> dict:
    """A user whose credentials come from running ``command args`` (client-go's exec plugin)."""
    return {
        "exec": {
            "apiVersion": EXEC_API_VERSION,
            "command": command,
            "args": list(args),
            "env": None,
            "provideClusterInfo": False,
            "interactiveMode": "IfAvailable",
        }
    }


def certificate_user(certificate_pem: bytes, key_pem: bytes) -> dict:
    return {
        "client-certificate-data": base64.b64encode(certificate_pem).decode(),
        "client-key-data": base64.b64encode(key_pem).decode(),
    }


def _upsert(config: dict, section: str, name: str, key: str, value: dict) -> None:
    """Replace the entry called ``name`` in place (keeping file order), or append it."""
    entries = config.get(section) or []
    config[section] = entries
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            entry[key] = value
            return
    entries.append({"name": name, key: value})


def teleport_context_name(teleport_cluster: str, kube_cluster: str) -> str:
    return "%s-%s" % (teleport_cluster, kube_cluster)


def merge_teleport_cluster(
    config: dict,
    *,
    teleport_cluster: str,
    proxy: str,
    host_ca_pem: bytes,
    kube_cluster: str,
    exec_command: str,
    exec_args: Sequence[str],
) -> str:
    """What ``tsh kube login`` writes (docs/architecture.md); returns the context it selected."""
    context = teleport_context_name(teleport_cluster, kube_cluster)
    upsert_cluster(
        config, teleport_cluster, server="https://%s" % proxy, ca_pem=host_ca_pem, tls_server_name=KUBE_PROXY_SERVER_NAME
    )
    upsert_context(config, context, cluster=teleport_cluster, user=context)
    upsert_user(config, context, exec_user(exec_command, exec_args))
    config["current-context"] = context
    return context


def remove_teleport_cluster(config: dict, teleport_cluster: str) -> None:
    """Drop the cluster entry tsh wrote and every context (and its user) pointing at it."""
    contexts = [c for c in config.get("contexts") or [] if isinstance(c, dict)]
    gone = {
        c.get("name")
        for c in contexts
        if isinstance(c.get("context"), dict) and c["context"].get("cluster") == teleport_cluster
    }
    gone_users = {c["context"].get("user") for c in contexts if c.get("name") in gone}
    config["contexts"] = [c for c in config.get("contexts") or [] if not (isinstance(c, dict) and c.get("name") in gone)]
    config["users"] = [u for u in config.get("users") or [] if not (isinstance(u, dict) and u.get("name") in gone_users)]
    config["clusters"] = [
        c for c in config.get("clusters") or [] if not (isinstance(c, dict) and c.get("name") == teleport_cluster)
    ]
    if config.get("current-context") in gone:
        config["current-context"] = ""
