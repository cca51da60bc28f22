"""``twistd teleport``: every role enabled in the configuration, in one process.

With no config at all this is Teleport's quick start: auth + proxy on
embedded defaults (SQLite under the data dir, self-signed CAs).
"""
from twisted.application import service

from teleport_py.plugin_options import ServiceOptions, exit_nonzero_if_start_fails


class Options(ServiceOptions):
    pass


def makeService(options, reactor=None):
    under_twistd = reactor is None
    if under_twistd:
        from twisted.internet import reactor
    config = options.loaded
    top = service.MultiService()
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
        exit_nonzero_if_start_fails(*top)
    return top
