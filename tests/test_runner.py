"""``twistd teleport`` runs every role the config enables, and only those."""
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.runner import Options, makeService


def roles(config_text: str | None, tmp: str) -> list[str]:
    options = Options()
    if config_text is None:
        options.parseOptions([])
    else:
        path = tmp + ".yaml"
        with open(path, "w") as f:
            f.write(config_text.replace("DATA", tmp))
        options.parseOptions(["--config", path])
    return sorted(type(s).__name__ for s in makeService(options, reactor=MemoryReactorClock()))


class RunnerTests(SynchronousTestCase):
    def test_defaults_run_auth_and_proxy(self):
        self.assertEqual(roles(None, self.mktemp()), ["AuthService", "ProxyService"])

    def test_every_enabled_role(self):
        text = (
            "teleport: {data_dir: DATA, proxy_server: 127.0.0.1:3080}\n"
            "kubernetes_service: {enabled: true, kubeconfig_file: /k}\n"
        )
        self.assertEqual(roles(text, self.mktemp()), ["AuthService", "KubeService", "ProxyService"])

    def test_only_the_agent(self):
        text = (
            "teleport: {data_dir: DATA, proxy_server: 127.0.0.1:3080}\n"
            "auth_service: {enabled: false}\nproxy_service: {enabled: false}\n"
            "kubernetes_service: {kubeconfig_file: /k}\n"
        )
        self.assertEqual(roles(text, self.mktemp()), ["KubeService"])
