"""``twistd teleport-kube``: the Kubernetes service agent alone."""
from teleport_py.plugin_options import ServiceOptions, single_role_service


class Options(ServiceOptions):
    optParameters = [
        ["token", None, None, "Join token for the first start (default: teleport.join_params.token_name)."],
    ]


def makeService(options, reactor=None):
    def build(reactor, config):
        from teleport_py.kube.service import KubeService

        return KubeService(reactor, config, token=options["token"])

    return single_role_service(options, reactor, "kubernetes_service", build)
