"""``twistd teleport-proxy``: the Proxy service alone (joins Auth with a token)."""
from teleport_py.plugin_options import ServiceOptions, require


class Options(ServiceOptions):
    pass


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    from teleport_py.proxy.service import ProxyService

    config = options.loaded
    require(config.proxy, "proxy_service", config)
    return ProxyService(reactor, config)
