"""``twistd teleport``: every role enabled in the configuration, in one process.

With no config at all this is Teleport's quick start: auth + proxy on
embedded defaults (SQLite under the data dir, self-signed CAs).

The roles start in order, each once the one before is up (auth, then the
proxy that gets its identity from it, then the agent that joins through
the proxy), and stop in reverse within one ``teleport.shutdown_timeout``.
"""
from teleport_py.lifecycle import RoleService, run_under_twistd
from teleport_py.plugin_options import ServiceOptions


class Options(ServiceOptions):
    pass


class AllInOne(RoleService):
    role = name = "teleport"

    async def compose(self) -> None:
        for role in list(self):
            await self.start_child(role)


def makeService(options, reactor=None):
    under_twistd = reactor is None
    if under_twistd:
        from twisted.internet import reactor
    config = options.loaded
    top = AllInOne(reactor, config.shutdown_timeout)
    auth = None
    if config.auth is not None:
        from teleport_py.auth.service import AuthService

        auth = AuthService(reactor, config)
        auth.setServiceParent(top)
    if config.proxy is not None:
        from teleport_py.proxy.service import ProxyService

        ProxyService(reactor, config, local_auth=auth).setServiceParent(top)
    if config.kube is not None:
        from teleport_py.kube.service import KubeService

        # Joins through the proxy like a standalone agent (token + CA pin).
        KubeService(reactor, config).setServiceParent(top)
    if under_twistd:
        run_under_twistd(top)
    return top
