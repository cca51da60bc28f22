"""``twistd teleport-auth``: the Auth service alone."""
from teleport_py.plugin_options import ServiceOptions, single_role_service


class Options(ServiceOptions):
    pass


def makeService(options, reactor=None):
    def build(reactor, config):
        from teleport_py.auth.service import AuthService

        return AuthService(reactor, config)

    return single_role_service(options, reactor, "auth_service", build)
