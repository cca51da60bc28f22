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


class SingleRolePluginTests(SynchronousTestCase):
    """``twistd teleport-auth|teleport-proxy|teleport-kube``: one role each,
    refused when the config disables it."""

    def make(self, module, config_text: str):
        from importlib import import_module

        plugin = import_module(module)
        path = self.mktemp() + ".yaml"
        with open(path, "w") as f:
            f.write(config_text)
        options = plugin.Options()
        options.parseOptions(["--config", path])
        return plugin.makeService(options, reactor=MemoryReactorClock())

    def test_each_plugin_makes_its_role_on_the_given_reactor(self):
        agent = "teleport: {proxy_server: 127.0.0.1:3080}\nkubernetes_service: {enabled: true, kubeconfig_file: /k}\n"
        for module, text, expected in [
            ("teleport_py.auth.plugin", "auth_service: {cluster_name: c}\n", "AuthService"),
            ("teleport_py.proxy.plugin", "teleport: {auth_server: 127.0.0.1:3025}\n", "ProxyService"),
            ("teleport_py.kube.plugin", agent, "KubeService"),
        ]:
            made = self.make(module, text)
            self.assertEqual(type(made).__name__, expected)
            self.assertIsInstance(made.reactor, MemoryReactorClock)

    def test_a_disabled_role_is_refused(self):
        from twisted.python.usage import UsageError

        for module, section in [
            ("teleport_py.auth.plugin", "auth_service"),
            ("teleport_py.proxy.plugin", "proxy_service"),
            ("teleport_py.kube.plugin", "kubernetes_service"),
        ]:
            with self.assertRaises(UsageError) as cm:
                self.make(module, f"{section}: {{enabled: false}}\n")
            self.assertIn(f"{section} is disabled", str(cm.exception))
