"""``twistd teleport-auth``: the Auth service alone."""
from teleport_py.plugin_options import ServiceOptions, require


class Options(ServiceOptions):
    pass


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    from teleport_py.auth.service import AuthService

    config = options.loaded
    require(config.auth, "auth_service", config)
    return AuthService(reactor, config)
