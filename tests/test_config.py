"""teleport.yaml parsing: strict keys, defaults, addresses."""
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.config import Address, ConfigError, StorageConfig, load_config, parse_address, parse_config


class ConfigTests(SynchronousTestCase):
    def test_no_file_runs_auth_and_proxy(self):
        config = parse_config(None)
        self.assertIsNotNone(config.auth)
        self.assertIsNotNone(config.proxy)
        self.assertIsNone(config.kube)
        self.assertEqual(config.auth.listen_addr, Address("0.0.0.0", 3025))
        self.assertEqual(config.proxy.web_listen_addr, Address("0.0.0.0", 3080))

    def test_full_file(self):
        config = parse_config(
            """
version: v3
teleport:
  nodename: node1
  data_dir: /tmp/x
  proxy_server: proxy.example.com:3080
  join_params: {token_name: abc, method: token}
auth_service:
  enabled: false
proxy_service:
  enabled: no
kubernetes_service:
  enabled: true
  kubeconfig_file: /etc/kube.yaml
  labels: {env: prod}
""",
            "f.yaml",
        )
        self.assertIsNone(config.auth)
        self.assertIsNone(config.proxy)
        self.assertEqual(config.kube.kubeconfig_file, "/etc/kube.yaml")
        self.assertEqual(dict(config.kube.labels), {"env": "prod"})
        self.assertEqual(config.proxy_server, Address("proxy.example.com", 3080))
        self.assertEqual(config.join_token, "abc")
        self.assertEqual(config.nodename, "node1")

    def test_record_exec_output(self):
        base = "kubernetes_service:\n  kubeconfig_file: /k\n"
        self.assertTrue(parse_config(base).kube.record_exec_output)
        self.assertFalse(parse_config(base + "  record_exec_output: false\n").kube.record_exec_output)
        with self.assertRaises(ConfigError) as cm:
            parse_config(base + "  record_exec_output: sometimes\n")
        self.assertEqual(cm.exception.path, "kubernetes_service.record_exec_output")

    def test_unknown_key_is_named(self):
        with self.assertRaises(ConfigError) as cm:
            parse_config("version: v3\nauth_service:\n  listen_adr: 127.0.0.1:1\n")
        self.assertEqual(cm.exception.path, "auth_service.listen_adr")
        self.assertIn("did you mean listen_addr", str(cm.exception))

    def test_unknown_top_level_key(self):
        with self.assertRaises(ConfigError) as cm:
            parse_config("version: v3\nssh_service: {enabled: false}\n")
        self.assertEqual(cm.exception.path, "ssh_service")

    def test_bad_enabled_value(self):
        with self.assertRaises(ConfigError) as cm:
            parse_config("auth_service:\n  enabled: maybe\n")
        self.assertEqual(cm.exception.path, "auth_service.enabled")

    def test_broken_yaml_has_location(self):
        with self.assertRaises(ConfigError) as cm:
            parse_config("auth_service: [\n")
        self.assertIn("line", str(cm.exception))

    def test_wrong_version(self):
        with self.assertRaises(ConfigError) as cm:
            parse_config("version: v2\n")
        self.assertEqual(cm.exception.path, "version")

    def test_kube_service_needs_credentials_source(self):
        with self.assertRaises(ConfigError) as cm:
            parse_config("kubernetes_service:\n  enabled: true\n")
        self.assertEqual(cm.exception.path, "kubernetes_service")

    def test_auth_and_proxy_on_one_port_is_refused(self):
        for auth, proxy in [
            ("127.0.0.1:4000", "127.0.0.1:4000"),
            ("0.0.0.0:4000", "127.0.0.1:4000"),
            ("127.0.0.1:4000", "'[::]:4000'"),
        ]:
            with self.assertRaises(ConfigError) as cm:
                parse_config(f"auth_service:\n  listen_addr: {auth}\nproxy_service:\n  web_listen_addr: {proxy}\n")
            self.assertEqual(cm.exception.path, "proxy_service.web_listen_addr")
            self.assertIn("different ports", str(cm.exception))
        # Different interfaces may share a port number.
        config = parse_config(
            "auth_service:\n  listen_addr: 127.0.0.1:4000\nproxy_service:\n  web_listen_addr: 127.0.0.2:4000\n"
        )
        self.assertEqual(config.proxy.web_listen_addr, Address("127.0.0.2", 4000))

    def test_addresses(self):
        self.assertEqual(parse_address("example.com", "x", 3080), Address("example.com", 3080))
        self.assertEqual(parse_address("[::1]:5", "x", 1), Address("::1", 5))
        self.assertEqual(parse_address("https://h:443", "x", 1), Address("h", 443))
        with self.assertRaises(ConfigError):
            parse_address("h:99999", "x", 1)
        self.assertEqual(Address("::", 3).server_endpoint(), r"tcp:3:interface=\:\::backlog=4096")
        self.assertEqual(Address("", 3).server_endpoint(), "tcp:3:backlog=4096")
        self.assertEqual(Address("0.0.0.0", 3).connect_host(), "127.0.0.1")

    def test_tunnel_public_addr(self):
        self.assertIsNone(parse_config(None).proxy.tunnel_public_addr)
        for value, expected in [("tunnel.example.com:3024", Address("tunnel.example.com", 3024)),
                                ("tunnel.example.com", Address("tunnel.example.com", 3080)),  # the one proxy port
                                ("[tunnel.example.com:443]", Address("tunnel.example.com", 443)),
                                ("'[::1]:4'", Address("::1", 4))]:
            config = parse_config(f"proxy_service:\n  tunnel_public_addr: {value}\n")
            self.assertEqual(config.proxy.tunnel_public_addr, expected, value)
        for value, says in [("[a:1, b:2]", "must be one address"), ("[]", "must be one address"),
                            ("0.0.0.0:3080", "names no host"), ("':3080'", "names no host"),
                            ("h:70000", "invalid port"), ("{host: h}", "must be an address"), ("''", "must be an address")]:
            with self.assertRaises(ConfigError, msg=value) as cm:
                parse_config(f"proxy_service:\n  tunnel_public_addr: {value}\n")
            self.assertEqual(cm.exception.path, "proxy_service.tunnel_public_addr", value)
            self.assertIn(says, str(cm.exception), value)
        with self.assertRaises(ConfigError) as cm:
            parse_config("proxy_service:\n  tunnel_public_adr: h:1\n")
        self.assertIn("tunnel_public_addr", str(cm.exception))  # the near miss is named

    def test_missing_file(self):
        with self.assertRaises(ConfigError) as cm:
            load_config("/nonexistent/teleport.yaml")
        self.assertIn("cannot read", str(cm.exception))


class ConnectionLimitsTests(SynchronousTestCase):
    def test_defaults(self):
        limits = parse_config(None).connection_limits
        self.assertEqual(
            (limits.max_connections, limits.handshake_timeout, limits.read_header_timeout, limits.idle_timeout,
             limits.max_header_bytes),
            (15000, 15.0, 10.0, 60.0, 16384),
        )

    def test_set(self):
        limits = parse_config(
            "teleport:\n  connection_limits:\n    max_connections: 100\n    handshake_timeout: 2s\n"
            "    read_header_timeout: 1.5s\n    idle_timeout: 5m\n    max_header_bytes: 8192\n"
        ).connection_limits
        self.assertEqual(
            (limits.max_connections, limits.handshake_timeout, limits.read_header_timeout, limits.idle_timeout,
             limits.max_header_bytes),
            (100, 2.0, 1.5, 300.0, 8192),
        )

    def assertRefused(self, section: str, path: str, words: str):
        with self.assertRaises(ConfigError) as cm:
            parse_config(f"teleport:\n  connection_limits:\n    {section}\n")
        self.assertEqual(cm.exception.path, path)
        self.assertIn(words, str(cm.exception))

    def test_invalid_values_name_the_key_and_the_fix(self):
        base = "teleport.connection_limits."
        self.assertRefused("max_connections: 0", base + "max_connections", "between 1 and")
        self.assertRefused("max_connections: many", base + "max_connections", "whole number")
        self.assertRefused("max_connections: true", base + "max_connections", "whole number")
        self.assertRefused("handshake_timeout: 15", base + "handshake_timeout", "such as 15s")
        self.assertRefused("handshake_timeout: 0s", base + "handshake_timeout", "between")
        self.assertRefused("idle_timeout: forever", base + "idle_timeout", "such as 15s")
        self.assertRefused("max_header_bytes: 10", base + "max_header_bytes", "between 1024 and")

    def test_teleport_keys_we_do_not_enforce_are_refused(self):
        self.assertRefused("max_users: 250", "teleport.connection_limits.max_users", "unknown key")


class BufferMemoryLimitTests(SynchronousTestCase):
    base = "kubernetes_service:\n  kubeconfig_file: /k\n"

    def test_default_and_sizes(self):
        self.assertEqual(parse_config(self.base).kube.buffer_memory_limit, 1 << 30)
        for text, size in (("512Mi", 512 << 20), ("2Gi", 2 << 30), ("4096Ki", 4 << 20), ("16777216", 16 << 20)):
            self.assertEqual(parse_config(self.base + f"  buffer_memory_limit: {text}\n").kube.buffer_memory_limit, size)

    def test_invalid_sizes_name_the_key_and_the_fix(self):
        for text, words in (("lots", "such as 512Mi"), ("1GB", "such as 512Mi"), ("512Ki", "at least 1Mi"),
                            ("true", "such as 512Mi"), ("-1Gi", "such as 512Mi")):
            with self.assertRaises(ConfigError) as cm:
                parse_config(self.base + f"  buffer_memory_limit: {text}\n")
            self.assertEqual(cm.exception.path, "kubernetes_service.buffer_memory_limit")
            self.assertIn(words, str(cm.exception))


class SessionDefaultsTests(SynchronousTestCase):
    def test_defaults_and_values(self):
        auth = parse_config(None).auth
        self.assertEqual((auth.client_idle_timeout, auth.disconnect_expired_cert), (0.0, True))
        auth = parse_config("auth_service:\n  client_idle_timeout: 15m\n  disconnect_expired_cert: no\n").auth
        self.assertEqual((auth.client_idle_timeout, auth.disconnect_expired_cert), (900.0, False))
        self.assertEqual(parse_config("auth_service:\n  client_idle_timeout: never\n").auth.client_idle_timeout, 0.0)

    def test_invalid_values_name_the_key(self):
        for text, path, words in (
            ("client_idle_timeout: 15", "auth_service.client_idle_timeout", "such as 15m, or never"),
            ("client_idle_timeout: -1m", "auth_service.client_idle_timeout", "negative"),
            ("disconnect_expired_cert: maybe", "auth_service.disconnect_expired_cert", "true or false"),
        ):
            with self.assertRaises(ConfigError) as cm:
                parse_config(f"auth_service:\n  {text}\n")
            self.assertEqual(cm.exception.path, path)
            self.assertIn(words, str(cm.exception))


ETCD = """
teleport:
  auth_servers: [auth1.example.com:3025, "10.0.0.2"]
  storage:
    type: etcd
    peers: [https://10.0.0.1:2379, https://10.0.0.3:2379/]
    prefix: /teleport/example
    tls_cert_file: /var/lib/teleport/etcd-client.pem
    tls_key_file: /var/lib/teleport/etcd-client-key.pem
    tls_ca_file: /var/lib/teleport/etcd-ca.pem
    audit_sessions_uri: file:///mnt/nfs/recordings
"""


class StorageTests(SynchronousTestCase):
    def assertRefused(self, text, key, words):
        with self.assertRaises(ConfigError) as caught:
            parse_config(text)
        self.assertIn(key, str(caught.exception))
        self.assertIn(words, str(caught.exception))

    def test_sqlite_is_the_default(self):
        config = parse_config(None)
        self.assertEqual(config.storage, StorageConfig())
        self.assertEqual(config.storage.type, "sqlite")

    def test_etcd_as_teleport_writes_it(self):
        config = parse_config(ETCD)
        self.assertEqual(config.storage, StorageConfig(
            type="etcd", peers=("https://10.0.0.1:2379", "https://10.0.0.3:2379"), prefix="/teleport/example",
            tls_cert_file="/var/lib/teleport/etcd-client.pem", tls_key_file="/var/lib/teleport/etcd-client-key.pem",
            tls_ca_file="/var/lib/teleport/etcd-ca.pem", audit_sessions_dir="/mnt/nfs/recordings",
        ))
        self.assertEqual(config.auth_servers, (Address("auth1.example.com", 3025), Address("10.0.0.2", 3025)))

    def test_errors_name_the_key(self):
        for old, new, key, words in [
            ("type: etcd", "type: dynamodb", "teleport.storage.type", "sqlite (the default) or etcd"),
            ("https://10.0.0.1:2379,", "http://10.0.0.1:2379,", "teleport.storage.peers[0]", "TLS only"),
            ("https://10.0.0.3:2379/]", "https://10.0.0.3/]", "teleport.storage.peers[1]", "https://host:port"),
            ("    peers: [https://10.0.0.1:2379, https://10.0.0.3:2379/]\n", "    peers: []\n",
             "teleport.storage.peers", "must list"),
            ("prefix: /teleport/example", "prefix: teleport", "teleport.storage.prefix", "must start with /"),
            ("    tls_ca_file: /var/lib/teleport/etcd-ca.pem\n", "", "teleport.storage.tls_ca_file", "is required"),
            ("file:///mnt/nfs/recordings", "s3://bucket/recordings", "teleport.storage.audit_sessions_uri",
             "file:///absolute/path"),
            ("    prefix:", "    perfix:", "teleport.storage.perfix", "unknown key"),
            ("auth_servers: [auth1.example.com:3025, \"10.0.0.2\"]", "auth_servers: []", "teleport.auth_servers",
             "list of addresses"),
            ("auth_servers: [auth1.example.com:3025, \"10.0.0.2\"]", "auth_servers: [\"a:1\", \"b:x\"]",
             "teleport.auth_servers[1]", "invalid port"),
            ("  auth_servers:", "  auth_server: a:1\n  auth_servers:", "teleport.auth_servers", "not both"),
        ]:
            self.assertIn(old, ETCD)
            self.assertRefused(ETCD.replace(old, new), key, words)

    def test_etcd_settings_without_etcd_are_refused(self):
        self.assertRefused("teleport:\n  storage:\n    peers: [https://a:1]\n", "teleport.storage.peers",
                           "set type: etcd")

    def test_sqlite_with_shared_recordings(self):
        config = parse_config("teleport:\n  storage:\n    type: sqlite\n    audit_sessions_uri: file:///srv/rec\n")
        self.assertEqual(config.storage, StorageConfig(audit_sessions_dir="/srv/rec"))
