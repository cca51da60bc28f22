"""The seed's step 3 with this project's chart, through Helm's real engine
and the real kube-apiserver: render and lint, ``helm install`` (a
server-side dry run first), the agent run exactly as the StatefulSet's pod
would run it (its ServiceAccount's token from the TokenRequest API, the
chart's ClusterRole bound, the ConfigMap, Secret and environment the pod
gets), kubectl through proxy and agent, nothing beyond the ClusterRole for
the agent itself, then ``helm upgrade`` and ``helm uninstall``.

No kubelet runs here, so the StatefulSet never makes a pod: the test is the
kubelet, placing what the pod spec mounts where the agent reads it."""
from __future__ import annotations

import base64
import json
import os

import yaml
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from teleport_py.config import parse_config
from teleport_py.pki import certificate_pem, private_key_pem
from tests.e2e import VIEWERS_RBAC, Deployment, coroutine_test, tool
from tests.support import helm as helmsupport
from tests.support.kubeenv import shared_control_plane
from tests.support.pki import authority, public_web_pair
from tests.support.procs import free_port

NAMESPACE = "teleport-agent"
RELEASE = "teleport-agent"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def seed_values(token: str, proxy: str, diag_port: int, **extra) -> dict:
    """The seed's ``--set`` values (roles, proxyAddr, authToken,
    kubeClusterName) and no caPin, as the seed has it."""
    return {"roles": "kube", "proxyAddr": proxy, "authToken": token, "kubeClusterName": "my-cluster",
            "labels": {"env": "prod"}, "diagPort": diag_port, **extra}


def public_web_certificate(deployment: Deployment) -> str:
    """A publicly trusted web certificate for the proxy (``https_keypairs``):
    from a test root, which is returned as a PEM file standing for the
    image's system trust store (SSL_CERT_FILE)."""
    root = authority("host", "test-public-root")
    cert, key = public_web_pair()
    cert_file = deployment.write("web-cert.pem", certificate_pem(cert).decode())
    key_file = deployment.write("web-key.pem", private_key_pem(key).decode())
    os.chmod(key_file, 0o600)
    deployment.proxy_settings = f"  https_keypairs: [{{key_file: {key_file}, cert_file: {cert_file}}}]\n"
    return deployment.write("system-roots.pem", certificate_pem(root.certificate).decode())


class ChartRenderTests(TestCase):
    """Helm's template engine and linter on the chart, no cluster needed."""

    def values(self, **extra):
        return seed_values("join-token", "teleport.example.com:443", 3000, **extra)

    def objects(self, **extra) -> dict[str, dict]:
        rendered = helmsupport.render(self.values(**extra))
        docs = [d for d in yaml.safe_load_all(helmsupport.manifests_text(rendered)) if d]
        return {d["kind"]: d for d in docs}

    def test_lint_is_clean(self):
        helm = helmsupport.helm_engine()
        report = helm.lint(os.path.abspath(helmsupport.CHART), values=self.values())
        self.assertEqual(report["errors"], [])
        self.assertEqual([m for m in report["messages"] if m["severity"] > 1], [])  # nothing past INFO

    def test_objects_and_config(self):
        objects = self.objects()
        self.assertEqual(sorted(objects), ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Secret",
                                           "ServiceAccount", "StatefulSet"])  # no PDB for one replica
        text = objects["ConfigMap"]["data"]["teleport.yaml"]
        parsed = parse_config(text, "the chart's teleport.yaml")  # the agent accepts it
        self.assertEqual((parsed.kube.kube_cluster_name, parsed.diag_addr.port), ("my-cluster", 3000))
        config = yaml.safe_load(text)
        self.assertEqual(config["kubernetes_service"], {"enabled": True, "kube_cluster_name": "my-cluster",
                                                        "record_exec_output": True, "buffer_memory_limit": "512Mi",
                                                        "labels": {"env": "prod"}})
        self.assertEqual(config["teleport"]["join_params"]["token_name"], "/etc/teleport-secrets/auth-token")
        self.assertNotIn("ca_pin", config["teleport"])  # no caPin: the proxy's certificate must be trusted
        self.assertEqual(objects["Secret"]["stringData"], {"auth-token": "join-token"})
        pod = objects["StatefulSet"]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        self.assertTrue(container["securityContext"]["readOnlyRootFilesystem"])
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/readyz")
        rules = objects["ClusterRole"]["rules"]
        self.assertEqual(rules[0], {"apiGroups": [""], "resources": ["users", "groups", "serviceaccounts"],
                                    "verbs": ["impersonate"]})
        self.assertNotIn("secrets", json.dumps(rules))

    def test_ca_pin_when_given(self):
        """caPin, a string or a list, becomes teleport.ca_pin as the agent parses it."""
        pins = ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
        for value, expected in ((pins[0], pins[:1]), (pins, pins)):
            text = self.objects(caPin=value)["ConfigMap"]["data"]["teleport.yaml"]
            self.assertEqual(parse_config(text, "the chart's teleport.yaml").ca_pins, tuple(expected))

    def test_several_replicas_get_a_disruption_budget(self):
        objects = self.objects(replicaCount=3)
        self.assertEqual(objects["StatefulSet"]["spec"]["replicas"], 3)
        self.assertEqual(objects["PodDisruptionBudget"]["spec"]["minAvailable"], 1)

    def test_existing_secret(self):
        values = self.values(joinTokenSecret={"create": False, "name": "my-token"})
        del values["authToken"]
        rendered = helmsupport.render(values)
        docs = [d for d in yaml.safe_load_all(helmsupport.manifests_text(rendered)) if d]
        self.assertNotIn("Secret", [d["kind"] for d in docs])
        sts = next(d for d in docs if d["kind"] == "StatefulSet")
        volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
        self.assertEqual(volumes["join-token"]["secret"]["secretName"], "my-token")

    def test_missing_values_are_one_line_each(self):
        helm = helmsupport.helm_engine()
        for missing, expected in (("proxyAddr", "proxyAddr: required"),
                                  ("kubeClusterName", "kubeClusterName: required"),
                                  ("authToken", "authToken: required")):
            values = self.values()
            del values[missing]
            with self.assertRaises(helm.HelmError) as e:
                helmsupport.render(values)
            self.assertIn(expected, str(e.exception))

    def test_values_schema(self):
        """values.schema.json: wrong types, bad pins and unknown values (typos)
        are refused by Helm before anything renders, naming the value."""
        helm = helmsupport.helm_engine()
        for bad, expected in (({"roles": "node"}, "/roles"), ({"replicaCount": "two"}, "/replicaCount"),
                              ({"caPin": "sha256:nothex"}, "/caPin"), ({"proxyadr": "x:1"}, "'proxyadr'")):
            with self.assertRaises(helm.HelmError) as e:
                helmsupport.render(self.values(**bad))
            self.assertIn(expected, str(e.exception))


class HelmInstallTests(TestCase):
    """helm install / upgrade / uninstall against the real API server, and
    the agent run as the chart's pod."""

    async def kubectl_json(self, *args):
        result = await self.plane.kubectl(*args, "-o", "json")
        self.assertEqual(result.code, 0, result.err)
        return json.loads(result.out)

    def helm_config(self):
        helm = helmsupport.helm_engine()
        return helm.Config(kubeconfig_path=self.plane.admin_kubeconfig, namespace=NAMESPACE)

    async def helm(self, action: str, *args, **kwargs):
        def call():
            with self.helm_config() as config:
                return getattr(config, action)(*args, **kwargs)

        return await helmsupport.in_thread(call)

    async def run_agent_as_the_pod(self, deployment: Deployment, diag_port: int, system_roots: str):
        """What the kubelet would do for the StatefulSet's pod 0; ``system_roots``
        stands for the image's trust store (SSL_CERT_FILE)."""
        sts = await self.kubectl_json("-n", NAMESPACE, "get", "statefulset", RELEASE)
        pod = sts["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        root = deployment.path("pod")
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}

        def place(mount_path: str) -> str:
            path = os.path.join(root, mount_path.lstrip("/"))
            os.makedirs(path, mode=0o700, exist_ok=True)
            return path

        # The projected service-account volume: a token from TokenRequest
        # for the pod's ServiceAccount, and the cluster's CA bundle.
        account = pod["serviceAccountName"]
        token = (await self.plane.kubectl("-n", NAMESPACE, "create", "token", account, "--duration=1h"))
        self.assertEqual(token.code, 0, token.err)
        sa_dir = place(SERVICE_ACCOUNT_DIR)
        with open(os.path.join(sa_dir, "token"), "w") as f:
            f.write(token.out.strip())
        with open(os.path.join(sa_dir, "ca.crt"), "wb") as f:
            f.write(self.plane.serving_ca.cert_pem)
        # The ConfigMap and Secret volumes, key by key.
        config_map = await self.kubectl_json("-n", NAMESPACE, "get", "configmap",
                                             volumes["config"]["configMap"]["name"])
        secret = await self.kubectl_json("-n", NAMESPACE, "get", "secret",
                                         volumes["join-token"]["secret"]["secretName"])
        for name, mount in mounts.items():
            volume = volumes.get(mount["name"], {})
            target = place(name)
            if "configMap" in volume:
                for key, text in config_map["data"].items():
                    with open(os.path.join(target, key), "w") as f:
                        f.write(text.replace("/var/lib/teleport", os.path.join(root, "var/lib/teleport"))
                                .replace("/etc/teleport-secrets", os.path.join(root, "etc/teleport-secrets")))
            elif "secret" in volume:
                for key, data in secret["data"].items():
                    with open(os.path.join(target, key), "wb") as f:
                        f.write(base64.b64decode(data))
        args = [a.replace("/etc/teleport/", os.path.join(root, "etc/teleport") + "/") for a in container["args"]]
        # The environment the kubelet gives every pod for the API server.
        env = {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.plane.port),
            "TELEPORT_PY_SERVICE_ACCOUNT_DIR": sa_dir,  # where the kubelet would mount it
            "HOME": root,
            "PATH": os.environ.get("PATH", os.defpath),
            "SSL_CERT_FILE": system_roots,
        }
        deployment.agent = deployment.spawn("agent-pod", [tool("twistd"), *args], env=env)
        return token.out.strip()

    async def probe(self, port: int, path: str):
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode())
        return response.code, await readBody(response)

    async def wait_ready(self, deployment: Deployment, port: int, timeout: float = 60.0):
        deadline = reactor.seconds() + timeout
        last = None
        while reactor.seconds() < deadline:
            try:
                last = await self.probe(port, "/readyz")
                if last[0] == 200:
                    return
            except Exception as e:
                last = e
            await deferLater(reactor, 0.5, lambda: None)
        self.fail(f"/readyz never answered 200 (last: {last}); agent log:\n{deployment.agent.log_tail()}")

    @coroutine_test
    async def test_seed_step_3(self):
        self.plane = await shared_control_plane()
        deployment = Deployment(self, self.mktemp())
        deployment.plane = self.plane
        await self.plane.apply(VIEWERS_RBAC)
        system_roots = public_web_certificate(deployment)
        token, _ = await deployment.start_auth_and_proxy()
        diag_port = free_port()
        values = seed_values(token, deployment.proxy, diag_port)
        chart = os.path.abspath(helmsupport.CHART)

        # helm install --create-namespace --namespace teleport-agent ... (server dry run first)
        dry = await self.helm("install", chart, RELEASE, values, dry_run="server", create_namespace=True)
        self.assertIn("StatefulSet", dry.get("manifest", ""))
        installed = await self.helm("install", chart, RELEASE, values, create_namespace=True)
        self.addCleanup(self._uninstall_quietly)
        self.assertEqual(installed["status"], "deployed")
        sts = await self.kubectl_json("-n", NAMESPACE, "get", "statefulset", RELEASE)
        self.assertEqual(sts["spec"]["replicas"], 1)

        # The chart's ClusterRole, as the API server sees it for the agent.
        who = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
        for verb, expected in (("impersonate users", "yes"), ("impersonate groups", "yes"),
                               ("list pods", "yes"), ("get secrets", "no"), ("create pods", "no")):
            result = await self.plane.kubectl("auth", "can-i", *verb.split(), f"--as={who}")
            self.assertEqual(result.out.strip(), expected, f"can {who} {verb}?")

        sa_token = await self.run_agent_as_the_pod(deployment, diag_port, system_roots)
        code, body = await self.probe_when_listening(deployment, diag_port, "/healthz")
        self.assertEqual((code, body), (200, b"ok\n"))
        await self.wait_ready(deployment, diag_port)
        await deployment.login_with_kube_access()
        await deployment.wait_for_clusters({"my-cluster"})
        await deployment.tsh("kube", "login", "my-cluster")
        await deployment.kubectl("-n", NAMESPACE, "get", "pods")  # the seed's check; no kubelet, so no pods
        namespaces = await deployment.kubectl("get", "namespaces", "-o", "name")
        self.assertIn("namespace/teleport-agent", namespaces.out)

        # The agent's own token reaches exactly what the ClusterRole allows.
        direct = ["--server", self.plane.url, "--token", sa_token,
                  "--certificate-authority", os.path.join(deployment.path("pod"), SERVICE_ACCOUNT_DIR.lstrip("/"), "ca.crt")]
        denied = await self.plane.kubectl("--kubeconfig=/dev/null", *direct, "-n", NAMESPACE, "get", "secrets")
        self.assertNotEqual(denied.code, 0)
        self.assertIn("Forbidden", denied.err)
        allowed = await self.plane.kubectl("--kubeconfig=/dev/null", *direct, "-n", NAMESPACE, "get", "pods")
        self.assertEqual(allowed.code, 0, allowed.err)

        # helm upgrade with new values: the rendered config changes, the
        # pod template's checksum with it (a rollout in a real cluster), and
        # a second replica brings a PodDisruptionBudget.
        before = sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        upgraded = await self.helm("upgrade", chart, RELEASE,
                                   {**values, "labels": {"env": "staging"}, "replicaCount": 2})
        self.assertEqual(upgraded["revision"], 2)
        pdb = await self.kubectl_json("-n", NAMESPACE, "get", "poddisruptionbudget", RELEASE)
        self.assertEqual(pdb["spec"]["minAvailable"], 1)  # policy/v1beta1 on this 1.20 API server
        config_map = await self.kubectl_json("-n", NAMESPACE, "get", "configmap", RELEASE)
        self.assertEqual(yaml.safe_load(config_map["data"]["teleport.yaml"])["kubernetes_service"]["labels"],
                         {"env": "staging"})
        sts = await self.kubectl_json("-n", NAMESPACE, "get", "statefulset", RELEASE)
        self.assertEqual(sts["spec"]["replicas"], 2)
        self.assertNotEqual(sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"], before)

        # helm uninstall leaves nothing of the release behind.
        await self.helm("uninstall", RELEASE)
        selector = f"app.kubernetes.io/instance={RELEASE}"
        left = await self.plane.kubectl("get", "-A", "-l", selector, "-o", "name",
                                        "serviceaccounts,secrets,configmaps,statefulsets,poddisruptionbudgets,"
                                        "clusterroles,clusterrolebindings")
        self.assertEqual((left.code, left.out.strip()), (0, ""))
        releases = await self.plane.kubectl("-n", NAMESPACE, "get", "secrets", "-l", "owner=helm", "-o", "name")
        self.assertEqual(releases.out.strip(), "")

    async def probe_when_listening(self, deployment, port, path):
        await deployment.agent.wait_for_port(port, timeout=60)
        return await self.probe(port, path)

    async def _uninstall_quietly(self):
        try:
            await self.helm("uninstall", RELEASE)
        except Exception:
            pass
