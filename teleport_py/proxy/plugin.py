"""``twistd teleport-proxy``: the Proxy service alone (joins Auth with a token)."""
from teleport_py.plugin_options import ServiceOptions, exit_nonzero_if_start_fails, require


class Options(ServiceOptions):
    pass


def makeService(options, reactor=None):
    under_twistd = reactor is None
    if under_twistd:
        from twisted.internet import reactor
    from teleport_py.proxy.service import ProxyService

    config = options.loaded
    require(config.proxy, "proxy_service", config)
    made = ProxyService(reactor, config)
    if under_twistd:
        exit_nonzero_if_start_fails(made)
    return made
