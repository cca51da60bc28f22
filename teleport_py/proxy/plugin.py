"""``twistd teleport-proxy``: the Proxy service alone (joins Auth with a token)."""
from teleport_py.plugin_options import ServiceOptions, single_role_service


class Options(ServiceOptions):
    pass


def makeService(options, reactor=None):
    def build(reactor, config):
        from teleport_py.proxy.service import ProxyService

        return ProxyService(reactor, config)

    return single_role_service(options, reactor, "proxy_service", build)
