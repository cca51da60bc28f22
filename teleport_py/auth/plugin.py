"""``twistd teleport-auth``: the Auth service alone."""
from teleport_py.plugin_options import ServiceOptions, exit_nonzero_if_start_fails, require


class Options(ServiceOptions):
    pass


def makeService(options, reactor=None):
    under_twistd = reactor is None
    if under_twistd:
        from twisted.internet import reactor
    from teleport_py.auth.service import AuthService

    config = options.loaded
    require(config.auth, "auth_service", config)
    made = AuthService(reactor, config)
    if under_twistd:
        exit_nonzero_if_start_fails(made)
    return made
