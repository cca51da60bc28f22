"""``twistd teleport-kube``: the Kubernetes service agent alone."""
from teleport_py.plugin_options import ServiceOptions, exit_nonzero_if_start_fails, require


class Options(ServiceOptions):
    optParameters = [
        ["token", None, None, "Join token for the first start (default: teleport.join_params.token_name)."],
    ]


def makeService(options, reactor=None):
    under_twistd = reactor is None
    if under_twistd:
        from twisted.internet import reactor
    from teleport_py.kube.service import KubeService

    config = options.loaded
    require(config.kube, "kubernetes_service", config)
    made = KubeService(reactor, config, token=options["token"])
    if under_twistd:
        exit_nonzero_if_start_fails(made)
    return made
