"""The teleport.yaml configuration file (``version: v3``), the subset we support.

Parsing is strict: an unknown or misspelled key is an error naming the key,
because a silently ignored setting in an access plane is a security bug
(a typo in ``enabled`` must not quietly start, or fail to start, a service).
"""
from __future__ import annotations

import difflib
import ipaddress
import os
import socket
from typing import Any, Mapping
from urllib.parse import urlsplit

import attrs
import yaml

from teleport_py.resources.duration import parse_duration

DEFAULT_AUTH_PORT = 3025
DEFAULT_DIAG_PORT = 3000
DEFAULT_PROXY_PORT = 3080
DEFAULT_CONFIG_PATH = "/etc/teleport.yaml"


#: ``teleport.shutdown_timeout``: how long a stopping service lets in-flight
#: requests finish (Teleport's fast shutdown on SIGTERM gives a few seconds;
#: a kubectl request takes well under one).
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
MAX_SHUTDOWN_TIMEOUT = 3600.0
#: ``auth_service.host_cert_ttl``: a year, as Teleport's host certificates.
#: Short values are for tests of renewal; the floor leaves room for a renewal
#: round trip and its retries before the old certificate expires.
DEFAULT_HOST_CERT_TTL = 365 * 24 * 3600.0
MIN_HOST_CERT_TTL = 10.0
MAX_HOST_CERT_TTL = 10 * DEFAULT_HOST_CERT_TTL


class ConfigError(ValueError):
    """A configuration problem, located by its dotted key path."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def default_data_dir() -> str:
    """Teleport's /var/lib/teleport for root; a per-user directory otherwise,
    so that a plain ``twistd -n teleport`` works without privileges."""
    if os.geteuid() == 0:
        return "/var/lib/teleport"
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "teleport-py")


#: Connections the kernel may hold for a listener before it accepts them
#: (capped by net.core.somaxconn, as Go's listeners ask for). Twisted's
#: default of 50 overflowed when 1,000 agents redialled a restarted proxy:
#: 10,449 SYNs dropped, each retried by the client only after 1, 3, 7, 15 s
#: (bench/agent_reconnect.py, docs/benchmarks.md).
LISTEN_BACKLOG = 4096


@attrs.frozen
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def server_endpoint(self) -> str:
        """A twisted endpoint description to listen on this address, with
        an accept queue of LISTEN_BACKLOG."""
        interface = self.host.replace(":", r"\:")
        where = f"tcp:{self.port}:interface={interface}" if self.host else f"tcp:{self.port}"
        return f"{where}:backlog={LISTEN_BACKLOG}"

    def connect_host(self) -> str:
        """Where a client on this machine should dial for a wildcard listen address."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)


def parse_address(value: Any, path: str, default_port: int) -> Address:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, "must be an address like host:port")
    text = value.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        host, port_text = text, ""
    else:
        host, port_text = text, ""
    if not port_text:
        return Address(host, default_port)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(path, f"invalid port {port_text!r}")
    return Address(host, int(port_text))


def _tunnel_public_addr(value: Any) -> Address | None:
    """One address (Teleport also takes a list; here a list of one): agents
    dial one address per proxy. Without a port, the proxy's port 3080: the
    tunnel shares the proxy's one public port (no separate port 3024)."""
    path = "proxy_service.tunnel_public_addr"
    if value is None:
        return None
    if isinstance(value, list):
        if len(value) != 1:
            raise ConfigError(path, "must be one address (agents dial one address per proxy)")
        value = value[0]
    address = parse_address(value, path, DEFAULT_PROXY_PORT)
    try:
        unspecified = ipaddress.ip_address(address.host).is_unspecified
    except ValueError:
        unspecified = not address.host
    if unspecified:
        raise ConfigError(path, f"{value!r} names no host agents can dial; give this proxy's name or IP")
    return address


@attrs.frozen
class ConnectionLimits:
    """``teleport.connection_limits``: what every listener (the auth API, the
    proxy's port) allows. ``max_connections`` is Teleport's (concurrent
    connections from one source address, default as Teleport's); the rest go
    beyond Teleport's file, where such limits are fixed (defaults: Teleport's
    handshake and header deadlines, Twisted's web server idle timeout and
    head size)."""

    max_connections: int = 15000
    handshake_timeout: float = 15.0
    read_header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_header_bytes: int = 16384


#: The bounds a limit may take: (smallest, largest).
_LIMIT_BOUNDS = {
    "max_connections": (1, 1_000_000),
    "handshake_timeout": (0.001, 3600.0),
    "read_header_timeout": (0.001, 3600.0),
    "idle_timeout": (0.001, 86400.0),
    "max_header_bytes": (1024, 1 << 20),
}


@attrs.frozen
class AuthConfig:
    listen_addr: Address = Address("0.0.0.0", DEFAULT_AUTH_PORT)
    cluster_name: str = ""
    authentication_type: str = "local"
    second_factor: str = "off"
    #: Cluster defaults for kube connections (roles may only tighten them).
    client_idle_timeout: float = 0.0
    disconnect_expired_cert: bool = True
    #: ``auth_service.host_cert_ttl``: how long the host certificates Auth
    #: issues (at join and renewal) are valid; services renew theirs at about
    #: two thirds of it (teleport_py/renewal.py).
    host_cert_ttl: float = DEFAULT_HOST_CERT_TTL


@attrs.frozen
class ProxyConfig:
    web_listen_addr: Address = Address("0.0.0.0", DEFAULT_PROXY_PORT)
    public_addr: tuple[Address, ...] = ()
    #: ``proxy_service.tunnel_public_addr``: where agents dial this proxy for a reverse tunnel.
    tunnel_public_addr: Address | None = None
    https_keypairs: tuple[tuple[str, str], ...] = ()  # (key_file, cert_file)


@attrs.frozen
class KubeConfig:
    kubeconfig_file: str = ""
    kube_cluster_name: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    record_exec_output: bool = True
    buffer_memory_limit: int = 1 << 30


@attrs.frozen
class StorageConfig:
    """``teleport.storage``: where Auth keeps its state and recordings."""

    type: str = "sqlite"
    #: etcd only: https://host:port of each member, the key prefix (one per
    #: Teleport cluster) and the client certificate etcd requires.
    peers: tuple[str, ...] = ()
    prefix: str = "/teleport"
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    #: A directory every Auth server reaches (file:// URI), or "" for
    #: <data_dir>/session_recordings.
    audit_sessions_dir: str = ""


_STORAGE_KEYS = ("type", "peers", "prefix", "tls_cert_file", "tls_key_file", "tls_ca_file", "audit_sessions_uri")
_ETCD_ONLY = ("peers", "prefix", "tls_cert_file", "tls_key_file", "tls_ca_file")


def _storage(section: Mapping[str, Any]) -> StorageConfig:
    path = "teleport.storage"
    _check_keys(section, path, _STORAGE_KEYS)
    kind = _string(section.get("type", "sqlite"), path + ".type")
    sessions = ""
    if "audit_sessions_uri" in section:
        uri = _string(section["audit_sessions_uri"], path + ".audit_sessions_uri")
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
            raise ConfigError(path + ".audit_sessions_uri",
                              f"{uri!r} is not a file:///absolute/path (a directory every auth server mounts, e.g. NFS)")
        sessions = parts.path
    if kind == "sqlite":
        for key in _ETCD_ONLY:
            if key in section:
                raise ConfigError(f"{path}.{key}", "is an etcd setting; set type: etcd or remove it")
        return StorageConfig(audit_sessions_dir=sessions)
    if kind != "etcd":
        raise ConfigError(path + ".type", f"unsupported storage type {kind!r}; use sqlite (the default) or etcd")
    peers = section.get("peers")
    if isinstance(peers, str):
        peers = [peers]
    if not isinstance(peers, list) or not peers:
        raise ConfigError(path + ".peers", "must list the etcd members, e.g. [https://10.0.0.1:2379]")
    for i, peer in enumerate(peers):
        parts = urlsplit(peer) if isinstance(peer, str) else None
        try:
            valid = parts is not None and parts.scheme == "https" and bool(parts.hostname) and parts.port is not None
        except ValueError:
            valid = False
        if not valid or parts.path not in ("", "/") or parts.query or parts.username:
            raise ConfigError(f"{path}.peers[{i}]", f"{peer!r} is not https://host:port (etcd is reached over TLS only)")
    prefix = _string(section.get("prefix", "/teleport"), path + ".prefix")
    if not prefix.startswith("/") or len(prefix) < 2:
        raise ConfigError(path + ".prefix", f"{prefix!r} must start with / and name the cluster, e.g. /teleport/example")
    files = {}
    for key in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
        if key not in section:
            raise ConfigError(f"{path}.{key}", "is required with type: etcd (etcd must check our client certificate)")
        files[key] = _string(section[key], f"{path}.{key}")
        if not files[key]:
            raise ConfigError(f"{path}.{key}", "must name a PEM file")
    return StorageConfig(type="etcd", peers=tuple(peer.rstrip("/") for peer in peers), prefix=prefix,
                         audit_sessions_dir=sessions, **files)


@attrs.frozen
class Config:
    nodename: str
    data_dir: str
    auth_servers: tuple[Address, ...] = ()
    proxy_server: Address | None = None
    join_token: str = ""
    join_method: str = "token"
    ca_pins: tuple[str, ...] = ()
    #: Seconds a stopping service lets in-flight requests finish (SIGTERM).
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    #: teleport.diag_addr: plain-HTTP /healthz and /readyz (kubelet probes); off when None.
    diag_addr: Address | None = None
    auth: AuthConfig | None = None
    proxy: ProxyConfig | None = None
    kube: KubeConfig | None = None
    connection_limits: ConnectionLimits = ConnectionLimits()
    storage: StorageConfig = StorageConfig()
    source: str = "<defaults>"

    @property
    def cluster_name(self) -> str:
        return (self.auth.cluster_name if self.auth else "") or self.nodename


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"must be a mapping, got {type(value).__name__}")
    return value


def _check_keys(section: Mapping[str, Any], path: str, known: tuple[str, ...]) -> None:
    for key in section:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            hint = difflib.get_close_matches(str(key), known, n=1)
            suffix = f" (did you mean {hint[0]}?)" if hint else f" (known keys: {', '.join(known)})"
            raise ConfigError(where, "unknown key" + suffix)


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"must be a string, got {type(value).__name__}")
    return value


def _flag(section: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = section.get(key, default)
    if isinstance(value, str) and value.lower() in ("yes", "no", "true", "false"):
        return value.lower() in ("yes", "true")
    if not isinstance(value, bool):
        raise ConfigError(f"{path}.{key}", "must be true or false")
    return value


def _idle_timeout(value: Any, path: str) -> float:
    """A Go duration, or ``never`` (as Teleport writes no idle timeout)."""
    if value == "never":
        return 0.0
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise ConfigError(path, f"{e}; write a duration such as 15m, or never") from None
    if seconds < 0:
        raise ConfigError(path, "must not be negative")
    return seconds


def _host_cert_ttl(value: Any) -> float:
    path = "auth_service.host_cert_ttl"
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise ConfigError(path, f"{e}; write a duration such as 8760h") from None
    if not MIN_HOST_CERT_TTL <= seconds <= MAX_HOST_CERT_TTL:
        raise ConfigError(path, f"must be between {MIN_HOST_CERT_TTL:.0f}s and {MAX_HOST_CERT_TTL / 3600:.0f}h")
    return seconds


_SIZE_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def _size(value: Any, path: str, smallest: int = 1 << 20) -> int:
    """A size in bytes, written as Kubernetes writes memory (``512Mi``, ``1Gi``) or as a number of bytes."""
    if isinstance(value, bool):
        value = None
    elif isinstance(value, int):
        value = str(value)
    text = value.strip() if isinstance(value, str) else ""
    number, unit = text.rstrip("KMGi"), text[len(text.rstrip("KMGi")):]
    if not number.isdigit() or unit not in _SIZE_UNITS:
        raise ConfigError(path, "must be a size such as 512Mi or 2Gi (or a number of bytes)")
    size = int(number) * _SIZE_UNITS[unit]
    if size < smallest:
        raise ConfigError(path, f"must be at least {smallest >> 20}Mi")
    return size


def _enabled(section: Mapping[str, Any], path: str, default: bool) -> bool:
    return _flag(section, "enabled", path, default)


def _connection_limits(section: Mapping[str, Any], path: str) -> ConnectionLimits:
    _check_keys(section, path, tuple(_LIMIT_BOUNDS))
    values: dict[str, Any] = {}
    for key, value in section.items():
        where = f"{path}.{key}"
        low, high = _LIMIT_BOUNDS[key]
        if key.endswith("_timeout"):
            try:
                number = parse_duration(value)
            except ValueError as e:
                raise ConfigError(where, f"{e}; write a duration such as 15s or 1m") from None
        elif isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, "must be a whole number")
        else:
            number = value
        if not low <= number <= high:
            unit = "" if isinstance(number, int) else " seconds"
            raise ConfigError(where, f"must be between {low} and {high}{unit}")
        values[key] = number
    return ConnectionLimits(**values)


def parse_config(text: str | None, source: str = "<defaults>") -> Config:
    """Parse a teleport.yaml. ``None`` means no file: auth+proxy on defaults."""
    if text is None:
        doc: Mapping[str, Any] = {}
    else:
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(where, f"invalid YAML: {getattr(e, 'problem', e)}") from None
        doc = _mapping(loaded, "")
    _check_keys(doc, "", ("version", "teleport", "auth_service", "proxy_service", "kubernetes_service"))
    version = doc.get("version", "v3")
    if version != "v3":
        raise ConfigError("version", f"unsupported config version {version!r}; only v3 is supported")

    tp = _mapping(doc.get("teleport"), "teleport")
    _check_keys(
        tp, "teleport",
        ("nodename", "data_dir", "auth_server", "auth_servers", "proxy_server", "join_params", "ca_pin",
         "connection_limits", "shutdown_timeout", "diag_addr", "storage"),
    )
    nodename = _string(tp.get("nodename", socket.gethostname()), "teleport.nodename")
    data_dir = _string(tp.get("data_dir", default_data_dir()), "teleport.data_dir")
    auth_servers: tuple[Address, ...] = ()
    if "auth_server" in tp and "auth_servers" in tp:
        raise ConfigError("teleport.auth_servers", "set auth_server or auth_servers, not both")
    if "auth_server" in tp:
        auth_servers = (parse_address(tp["auth_server"], "teleport.auth_server", DEFAULT_AUTH_PORT),)
    if "auth_servers" in tp:
        listed = tp["auth_servers"]
        if not isinstance(listed, list) or not listed:
            raise ConfigError("teleport.auth_servers", "must be a list of addresses like [auth1:3025, auth2:3025]")
        auth_servers = tuple(
            parse_address(v, f"teleport.auth_servers[{i}]", DEFAULT_AUTH_PORT) for i, v in enumerate(listed)
        )
    storage = _storage(_mapping(tp.get("storage"), "teleport.storage"))
    proxy_server = None
    if "proxy_server" in tp:
        proxy_server = parse_address(tp["proxy_server"], "teleport.proxy_server", DEFAULT_PROXY_PORT)
    pins = tp.get("ca_pin", [])
    if isinstance(pins, str):
        pins = [pins]
    if not isinstance(pins, list):
        raise ConfigError("teleport.ca_pin", "must be a pin or a list of pins like sha256:<hex>")
    for i, pin in enumerate(pins):
        if not isinstance(pin, str) or not pin.startswith("sha256:") or len(pin) != 7 + 64:
            raise ConfigError(f"teleport.ca_pin[{i}]", "must look like sha256:<64 hex digits> (see tctl status)")
    shutdown_timeout = _shutdown_timeout(tp.get("shutdown_timeout", "10s"))
    diag_addr = None
    if tp.get("diag_addr"):
        diag_addr = parse_address(tp["diag_addr"], "teleport.diag_addr", DEFAULT_DIAG_PORT)
    jp = _mapping(tp.get("join_params"), "teleport.join_params")
    _check_keys(jp, "teleport.join_params", ("token_name", "method"))
    join_token = _string(jp.get("token_name", ""), "teleport.join_params.token_name")
    join_method = _string(jp.get("method", "token"), "teleport.join_params.method")
    if join_method != "token":
        raise ConfigError("teleport.join_params.method", f"unsupported join method {join_method!r}; only 'token'")
    limits = _connection_limits(_mapping(tp.get("connection_limits"), "teleport.connection_limits"),
                                "teleport.connection_limits")

    # With no file at all Teleport's defaults run auth and proxy; in a file,
    # each service is on unless it says enabled: false, as in teleport.yaml.
    no_file = text is None
    auth = proxy = kube = None
    a = _mapping(doc.get("auth_service"), "auth_service")
    _check_keys(a, "auth_service", ("enabled", "listen_addr", "cluster_name", "authentication",
                                    "client_idle_timeout", "disconnect_expired_cert", "host_cert_ttl"))
    if _enabled(a, "auth_service", True):
        authn = _mapping(a.get("authentication"), "auth_service.authentication")
        _check_keys(authn, "auth_service.authentication", ("type", "second_factor"))
        authn_type = _string(authn.get("type", "local"), "auth_service.authentication.type")
        if authn_type != "local":
            raise ConfigError("auth_service.authentication.type", f"unsupported type {authn_type!r}; only 'local'")
        second_factor = authn.get("second_factor", "off")
        if second_factor is False:
            second_factor = "off"
        if second_factor not in ("off", "otp"):
            raise ConfigError("auth_service.authentication.second_factor",
                              f"unsupported {second_factor!r}; use 'off' or 'otp' (TOTP, RFC 6238)")
        auth = AuthConfig(
            listen_addr=parse_address(a.get("listen_addr", "0.0.0.0:3025"), "auth_service.listen_addr", DEFAULT_AUTH_PORT),
            cluster_name=_string(a.get("cluster_name", ""), "auth_service.cluster_name"),
            client_idle_timeout=_idle_timeout(a.get("client_idle_timeout", "never"), "auth_service.client_idle_timeout"),
            disconnect_expired_cert=_flag(a, "disconnect_expired_cert", "auth_service", True),
            host_cert_ttl=_host_cert_ttl(a.get("host_cert_ttl", "8760h")),
            second_factor=second_factor,
        )

    p = _mapping(doc.get("proxy_service"), "proxy_service")
    _check_keys(p, "proxy_service", ("enabled", "web_listen_addr", "public_addr", "tunnel_public_addr", "https_keypairs"))
    if _enabled(p, "proxy_service", True):
        public = p.get("public_addr", [])
        if isinstance(public, str):
            public = [public]
        if not isinstance(public, list):
            raise ConfigError("proxy_service.public_addr", "must be an address or a list of addresses")
        keypairs = []
        for i, kp in enumerate(p.get("https_keypairs") or []):
            where = f"proxy_service.https_keypairs[{i}]"
            kp = _mapping(kp, where)
            _check_keys(kp, where, ("key_file", "cert_file"))
            if "key_file" not in kp or "cert_file" not in kp:
                raise ConfigError(where, "needs both key_file and cert_file")
            keypairs.append((_string(kp["key_file"], where + ".key_file"), _string(kp["cert_file"], where + ".cert_file")))
        proxy = ProxyConfig(
            web_listen_addr=parse_address(
                p.get("web_listen_addr", "0.0.0.0:3080"), "proxy_service.web_listen_addr", DEFAULT_PROXY_PORT
            ),
            public_addr=tuple(
                parse_address(v, f"proxy_service.public_addr[{i}]", DEFAULT_PROXY_PORT) for i, v in enumerate(public)
            ),
            tunnel_public_addr=_tunnel_public_addr(p.get("tunnel_public_addr")),
            https_keypairs=tuple(keypairs),
        )

    k = _mapping(doc.get("kubernetes_service"), "kubernetes_service")
    _check_keys(
        k, "kubernetes_service",
        ("enabled", "kubeconfig_file", "kube_cluster_name", "labels", "record_exec_output", "buffer_memory_limit"),
    )
    if _enabled(k, "kubernetes_service", not no_file and "kubernetes_service" in doc):
        labels = _mapping(k.get("labels"), "kubernetes_service.labels")
        for key, value in labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ConfigError(f"kubernetes_service.labels.{key}", "labels map strings to strings")
        kube = KubeConfig(
            kubeconfig_file=_string(k.get("kubeconfig_file", ""), "kubernetes_service.kubeconfig_file"),
            kube_cluster_name=_string(k.get("kube_cluster_name", ""), "kubernetes_service.kube_cluster_name"),
            labels=dict(labels),
            record_exec_output=_flag(k, "record_exec_output", "kubernetes_service", True),
            buffer_memory_limit=_size(k.get("buffer_memory_limit", "1Gi"), "kubernetes_service.buffer_memory_limit"),
        )
        if not kube.kubeconfig_file and not kube.kube_cluster_name:
            raise ConfigError(
                "kubernetes_service",
                "set kubeconfig_file, or kube_cluster_name to use the in-cluster service account",
            )

    if no_file:
        kube = None
    if diag_addr is not None and kube is None:
        raise ConfigError("teleport.diag_addr", "only the Kubernetes service serves /healthz and /readyz; "
                                                "enable kubernetes_service or remove diag_addr")
    if auth is not None and proxy is not None and _same_socket(auth.listen_addr, proxy.web_listen_addr):
        raise ConfigError(
            "proxy_service.web_listen_addr",
            f"{proxy.web_listen_addr} is also auth_service.listen_addr ({auth.listen_addr}); "
            "the two services need different ports",
        )
    return Config(
        nodename=nodename,
        data_dir=data_dir,
        auth_servers=auth_servers,
        proxy_server=proxy_server,
        join_token=join_token,
        join_method=join_method,
        ca_pins=tuple(p.lower() for p in pins),
        shutdown_timeout=shutdown_timeout,
        diag_addr=diag_addr,
        auth=auth,
        proxy=proxy,
        kube=kube,
        connection_limits=limits,
        storage=storage,
        source=source,
    )


def _shutdown_timeout(value: Any) -> float:
    from teleport_py.resources.duration import parse_duration

    path = "teleport.shutdown_timeout"
    text = _string(value, path)
    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise ConfigError(path, f"{e}") from None
    if not 0 < seconds <= MAX_SHUTDOWN_TIMEOUT:
        raise ConfigError(path, "must be more than 0s and at most 1h (e.g. 10s)")
    return seconds


_WILDCARDS = ("", "0.0.0.0", "::")


def _same_socket(a: Address, b: Address) -> bool:
    """Would listening on both addresses fight over one port?"""
    return a.port == b.port and (a.host == b.host or a.host in _WILDCARDS or b.host in _WILDCARDS)


def load_config(path: str | None) -> Config:
    """Load ``path``; ``None`` means embedded defaults (no file read)."""
    if path is None:
        return parse_config(None)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path}: {e.strerror}") from None
    return parse_config(text, source=path)
