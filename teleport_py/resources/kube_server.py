"""The ``kube_server`` resource (kind ``kube_server``, version ``v3``) as a value object.

A Kubernetes agent heartbeats one of these per cluster it serves; the proxy
reads them to learn which agents can reach which cluster, and ``tsh kube ls``
shows the cluster name and labels. The YAML keeps Teleport's nested
``spec.cluster`` shape (a ``kube_cluster`` inside the server).
"""
from __future__ import annotations

from datetime import datetime
from typing import Mapping

import attrs


@attrs.frozen
class KubeServer:
    name: str
    host_id: str
    hostname: str
    cluster_name: str
    cluster_labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    version: str = ""
    expires: datetime | None = None
