"""``twistd teleport-kube``: the Kubernetes service agent alone."""
from teleport_py.plugin_options import ServiceOptions, require


class Options(ServiceOptions):
    optParameters = [
        ["token", None, None, "Join token for the first start (default: teleport.join_params.token_name)."],
    ]


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    from teleport_py.kube.service import KubeService

    config = options.loaded
    require(config.kube, "kubernetes_service", config)
    return KubeService(reactor, config, token=options["token"])
